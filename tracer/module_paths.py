"""Path helpers shared by the report and the diagnosis: collapse repeated layers into ranges."""
from __future__ import annotations

from .records.vocab import strip_peft_prefix


def is_under(path: str, root: str | None) -> bool:
    """``path`` is ``root`` or inside it."""
    return root is not None and (path == root or path.startswith(root + "."))


# modules that wrap one child in place and name it so: FSDP1's units, activation checkpointing's wrapper
_WRAPPED = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def short(path: str) -> str:
    """A module path without PEFT's wrapper prefix and FSDP1's / checkpointing's wrapper segments, for people
    (the JSON keeps the full path)."""
    if any(name in path for name in _WRAPPED):
        path = ".".join(part for part in path.split(".") if part not in _WRAPPED)
    if path in ("base_model", "base_model.model"):
        return ""  # PEFT's wrappers stand for the model itself
    return strip_peft_prefix(path)


def label(path: str) -> str:
    """``short(path)``, never blank: the module a tracer was given (a DDP or FSDP1 wrapper, or the PeftModel)
    is ``(root)``, the wrappers below it that stand for the model too keep their path in parentheses."""
    return short(path) or f"({path or 'root'})"


def _ranges(indices: list[int]) -> str:
    indices = sorted(set(indices))
    parts, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def collapse_layer_ranges(paths) -> list[tuple[str, int]]:
    """Group paths that differ only in their first numeric component.

    >>> collapse_layer_ranges(["lm.layers.0.mlp", "lm.layers.1.mlp", "head"])
    [('lm.layers.0-1.mlp', 2), ('head', 1)]
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for path in paths:
        parts = path.split(".")
        numeric = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if numeric is None:
            groups.setdefault((path, None), [])
            continue
        key = (".".join(parts[:numeric]), ".".join(parts[numeric + 1:]))
        groups.setdefault(key, []).append(int(parts[numeric]))
    out = []
    for (prefix, suffix), indices in groups.items():
        if suffix is None and not indices:
            out.append((prefix, 1))
            continue
        middle = _ranges(indices)
        out.append((".".join(p for p in (prefix, middle, suffix) if p), len(indices)))
    return out


def proper_ancestors(path: str) -> list[str]:
    """'a.b.c' -> ['', 'a', 'a.b']."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))] if path else []


def new_roots(executed: set[str], baseline: set[str]) -> tuple[list[str], list[str]]:
    """What runs in ``executed`` but not in ``baseline``, as subtree roots and as collapsed layer ranges.

    Wrappers above the baseline's modules are left out: they run in both senses and say nothing.
    """
    ancestors = {a for p in baseline for a in proper_ancestors(p)}
    new = sorted(p for p in executed - baseline if p not in ancestors)
    new_set = set(new)
    roots = [p for p in new if not any(a in new_set for a in proper_ancestors(p))]
    layers = [p for p in new if p in roots or p.rpartition(".")[2].isdigit()]
    return roots, [f"{p} ×{n}" if n > 1 else p for p, n in collapse_layer_ranges(layers)]


def collapse_paths(paths) -> list[tuple[str, int]]:
    """Layer ranges, then sibling leaves in braces: ``lm.layers.0-31.self_attn.{q,k,v,o}_proj`` (128)."""
    by_parent: dict[str, list[tuple[str, int]]] = {}
    for path, count in collapse_layer_ranges(paths):
        parent, _, leaf = path.rpartition(".")
        by_parent.setdefault(parent, []).append((leaf, count))
    out = []
    for parent, leaves in by_parent.items():
        names = _brace([leaf for leaf, _ in leaves])
        out.append((f"{parent}.{names}" if parent else names, sum(c for _, c in leaves)))
    return out


def _brace(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    suffix = "_proj" if all(n.endswith("_proj") for n in names) else ""
    stems = [n[: -len(suffix)] if suffix else n for n in names]
    return "{" + ",".join(stems) + "}" + suffix
