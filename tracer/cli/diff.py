"""`bin/trace diff A.json[:STRATEGY] B.json[:STRATEGY]`: what changed between two traced runs (computed and
rendered here; the CLI prints and writes)."""
from __future__ import annotations

from tabulate import tabulate

from ..errors import TracerError
from ..module_paths import collapse_paths, new_roots, short
from ..render.runs import fmt_bytes, fmt_ms
from ..records.schema import read_record
from ..records.vocab import STRATEGIES


def split_spec(spec: str) -> tuple[str, str | None]:
    """'out.json' -> ('out.json', None); 'out.json:full_forward' -> ('out.json', 'full_forward')."""
    head, _, tail = spec.rpartition(":")
    return (head, tail) if head and tail in STRATEGIES else (spec, None)


def load_side(spec: str) -> tuple[str, dict]:
    """'out.json' or 'out.json:full_forward' -> (strategy or None, the record with typed runs)."""
    path, strategy = split_spec(spec)
    data = read_record(path, "diff:")
    if strategy is not None and strategy not in data["runs"]:
        raise TracerError(f"diff: {path} has no {strategy} run")
    return strategy, data


def pairs(a_spec: str, b_spec: str) -> list[tuple[str, dict, str, dict]]:
    """(label_a, run_a, label_b, run_b) for each comparison the two specs ask for."""
    if (split_spec(a_spec)[1] is None) != (split_spec(b_spec)[1] is None):
        raise TracerError("diff: name a strategy on both sides (A.json:audio_tower B.json:full_forward) or on neither")
    sa, a = load_side(a_spec)
    sb, b = load_side(b_spec)
    names = [(sa, sb)] if sa else [(n, n) for n in STRATEGIES if n in a["runs"] and n in b["runs"]]
    out = []
    for na, nb in names:
        ra, rb = a["runs"][na], b["runs"][nb]
        for label, run in ((f"A:{na}", ra), (f"B:{nb}", rb)):
            if not run.ok:
                raise TracerError(f"diff: {label} did not run ({run.status}: {run.reason})")
        out.append((f"A:{na}", ra, f"B:{nb}", rb))
    if not out:
        raise TracerError("diff: the two records share no strategy that ran")
    return out


def diff_runs(a, b) -> dict:
    """Two RunRecords: modules executed in one only, latency/memory per stage, LoRA status changes per
    layer group."""
    ex_a = {short(p) for p in a.executed_paths()}
    ex_b = {short(p) for p in b.executed_paths()}
    only_a, only_a_layers = new_roots(ex_a, ex_b)
    only_b, only_b_layers = new_roots(ex_b, ex_a)
    totals = {key: (get(a), get(b)) for key, get in (
        ("forward_ms", lambda r: r.latency_ms.median), ("backward_ms", lambda r: r.backward_ms.median),
        ("peak_memory_bytes", lambda r: r.peak_memory_bytes), ("modules_executed", lambda r: r.modules_executed),
        ("params_executed", lambda r: r.params_executed))}
    stages = {}
    for component in dict.fromkeys([*a.stages, *b.stages]):
        sa, sb = a.stages.get(component), b.stages.get(component)
        if (sa and sa.modules_executed) or (sb and sb.modules_executed):
            stages[component] = {k: (getattr(sa, k, None), getattr(sb, k, None))
                                 for k in ("forward_ms", "backward_ms", "saved_bytes", "params")}
    lora_a = {(short(r.path), r.adapter): r.status for r in a.lora or ()}
    lora_b = {(short(r.path), r.adapter): r.status for r in b.lora or ()}
    changes: dict = {}
    for key in dict.fromkeys([*lora_a, *lora_b]):
        before, after = lora_a.get(key, "no LoRA"), lora_b.get(key, "no LoRA")
        if before != after:
            changes.setdefault((before, after), []).append(key[0])
    lora = [{"pattern": p, "count": n, "from": before, "to": after}
            for (before, after), paths in changes.items() for p, n in collapse_paths(paths)]
    return {"only_in_a": only_a, "only_in_a_layers": only_a_layers, "only_in_b": only_b,
            "only_in_b_layers": only_b_layers, "totals": totals, "stages": stages, "lora_changes": lora}


def _change(a, b, fmt) -> list[str]:
    if a is None or b is None or not a:
        return [fmt(a), fmt(b), ""]
    return [fmt(a), fmt(b), f"{(b - a) / a:+.0%}"]


def render_diff(label_a: str, label_b: str, d: dict) -> str:
    out = [f"\n[DIFF] {label_a} -> {label_b}"]
    fmts = {"forward_ms": fmt_ms, "backward_ms": fmt_ms, "peak_memory_bytes": fmt_bytes,
            "modules_executed": str, "params_executed": lambda v: f"{v:,}"}
    rows = [[key] + _change(a, b, fmts[key]) for key, (a, b) in d["totals"].items()]
    out.append(tabulate(rows, headers=["", "A", "B", "change"], tablefmt="simple", disable_numparse=True))
    rows = []
    for component, values in d["stages"].items():
        for key, (a, b) in values.items():
            fmt = fmt_bytes if key == "saved_bytes" else (lambda v: f"{v:,}") if key == "params" else fmt_ms
            rows.append([component, key] + _change(a, b, fmt))
    out.append(tabulate(rows, headers=["stage", "", "A", "B", "change"], tablefmt="simple", disable_numparse=True))
    out.append("  executed only in A: " + (", ".join(d["only_in_a_layers"]) or "nothing"))
    out.append("  executed only in B: " + (", ".join(d["only_in_b_layers"]) or "nothing"))
    for change in d["lora_changes"]:
        out.append(f"  LoRA {change['pattern']} ({change['count']}): {change['from']} -> {change['to']}")
    if not d["lora_changes"]:
        out.append("  LoRA statuses: no change")
    return "\n".join(out)


def diff_specs(a_spec: str, b_spec: str) -> list[tuple[str, str, dict]]:
    """(label A, label B, differences) for each comparison two ``A.json[:STRATEGY]`` specs ask for."""
    return [(label_a, label_b, diff_runs(a, b)) for label_a, a, label_b, b in pairs(a_spec, b_spec)]


def diff_record(results: list[tuple[str, str, dict]]) -> list[dict]:
    """The JSON that ``bin/trace diff --json`` writes."""
    return [{"a": label_a, "b": label_b, **{k: v for k, v in d.items() if k != "totals"},
             "totals": {k: list(v) for k, v in d["totals"].items()}} for label_a, label_b, d in results]
