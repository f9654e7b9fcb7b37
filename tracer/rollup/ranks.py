"""Every rank's run on rank 0, merged: per stage the ranks' times, their skew, the LoRA statuses that disagree."""
from __future__ import annotations

import statistics

from ..collect.sharding import gather_to_zero, rank_info


def merge(run: dict | None, component_of: dict) -> dict | None:
    """Every rank's run record (``Tracer.result()``) on rank 0, merged: a collective (every rank calls it,
    with None where its run failed, so no rank is left waiting); None on the other ranks, and on rank 0
    ``{"failed_on": [ranks]}`` when some rank has no run to give; ``run`` alone without a process group."""
    info = rank_info()
    gathered = gather_to_zero(None if run is None else _summary(run, component_of, info))
    if gathered is None:
        return None
    if any(g is None for g in gathered):
        return {"failed_on": [rank for rank, g in enumerate(gathered) if g is None]}
    return _merged(gathered, info or {"rank": 0, "world_size": 1, "backend": None})


def _summary(run: dict, component_of: dict, info: dict | None) -> dict:
    """What rank 0 needs from a rank: per module its own times (self forward, its own part of the backward)
    and memory, per stage their sums, LoRA statuses. Own times add up, so a stage's time is its modules': the
    modules that lose the most time are the stage's, counted once. (Backward windows nest and overlap: one
    stretch, such as a wait in a collective, is in every window around it.)"""
    executed = [m for m in run["modules"] if m["executed"]]
    modules = {m["path"]: (m["self_forward_ms"], m.get("self_backward_ms"), m["peak_bytes"]) for m in executed}
    stage_of = {m["path"]: component_of.get(m["path"], "other") for m in executed}
    from .stages import stage_times
    stages = stage_times(executed, component_of)
    lora = {(r["path"], r["adapter"]): r["status"] for r in run.get("lora", ())}
    return {"rank": (info or {}).get("rank", 0), "modules": modules, "stage_of": stage_of, "stages": stages,
            "lora": lora, "total_forward_ms": run["total_forward_ms"], "total_backward_ms": run["total_backward_ms"]}


def _skew(values: list) -> tuple:
    """(slowest over the median, the slowest rank, ms the slowest spends beyond the median) of per-rank
    times; None where no rank has one."""
    known = [(v, rank) for rank, v in enumerate(values) if v is not None]
    if not known:
        return None, None, None
    slowest, rank = max(known)
    median = statistics.median(v for v, _ in known)
    return (slowest / median if median > 0 else None), rank, slowest - median


def _merged(summaries: list, info: dict) -> dict:
    summaries = sorted(summaries, key=lambda s: s["rank"])
    paths = list(dict.fromkeys(p for s in summaries for p in s["modules"]))
    stage_of = {p: stage for s in summaries for p, stage in s.get("stage_of", {}).items()}
    modules = []
    for path in paths:
        per_rank = [s["modules"].get(path, (None, None, None)) for s in summaries]
        forward, backward = [r[0] for r in per_rank], [r[1] for r in per_rank]
        skew, slowest, excess = _skew([(f or 0.0) + (b or 0.0) if f is not None else None
                                       for f, b in zip(forward, backward)])
        modules.append({"path": path, "stage": stage_of.get(path), "forward_ms": forward, "backward_ms": backward,
                        "peak_bytes": [r[2] for r in per_rank], "skew": skew, "slowest_rank": slowest,
                        "excess_ms": excess})
    stages = {}
    for name in dict.fromkeys(n for s in summaries for n in s["stages"]):
        forward = [s["stages"].get(name, {}).get("forward_ms") for s in summaries]
        backward = [s["stages"].get(name, {}).get("backward_ms") for s in summaries]
        totals = [None if f is None else f + (b or 0.0) for f, b in zip(forward, backward)]
        skew, slowest, excess = _skew(totals)
        stages[name] = {"forward_ms": forward, "backward_ms": backward, "skew": skew, "slowest_rank": slowest,
                        "excess_ms": excess}
    disagreements = []
    for key in dict.fromkeys(k for s in summaries for k in s["lora"]):
        statuses = [s["lora"].get(key) for s in summaries]
        if len(set(statuses)) > 1:
            disagreements.append({"path": key[0], "adapter": key[1], "statuses": statuses})
    return {"world_size": info["world_size"], "backend": info["backend"], "ranks": [s["rank"] for s in summaries],
            "total_forward_ms": [s["total_forward_ms"] for s in summaries],
            "total_backward_ms": [s["total_backward_ms"] for s in summaries],
            "modules": modules, "stages": stages, "lora_statuses_agree": not disagreements,
            "lora_disagreements": disagreements}
