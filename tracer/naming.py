"""Path helpers shared by the report and the diagnosis: collapse repeated layers into ranges."""
from __future__ import annotations


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
