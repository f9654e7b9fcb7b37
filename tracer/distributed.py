"""Tracing under torch.distributed (DDP, FSDP2): facts per rank, norms of the full gradient when parameters
are sharded, and one merged view on rank 0. Only torch.distributed's own collectives go on the wire.

FSDP2 (``fully_shard``) keeps parameters and gradients as DTensor shards: a shard's norm is not the
gradient's, so the squared local norms are summed over the ranks (one all-reduce for every LoRA layer at
once). DDP's gradients are already all-reduced: every rank holds the full one.
"""
from __future__ import annotations

import math
import statistics
import sys

import torch


def rank_info() -> dict | None:
    """``{"rank", "world_size", "backend"}`` under an initialised process group, else None."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": str(dist.get_backend())}


def is_sharded(tensor) -> bool:
    """A DTensor (FSDP2's parameters and gradients): each rank holds a shard."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(tensor, DTensor)


def local(tensor):
    """What this rank holds: a DTensor's shard, or the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def broadcast_trainable(model) -> None:
    """Every trainable parameter as rank 0 has it (a collective): a freshly initialised adapter is random
    on each rank otherwise."""
    import torch.distributed as dist
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                dist.broadcast(param.data, src=0)


def shard(model, report) -> None:
    """FSDP2 as one applies it to an audio LM (``fully_shard``, in place): each encoder layer, the encoder
    (a strategy calls it alone), each LM layer, then the root. Not the LM as a unit: the whole model reads
    its embedding outside the LM's forward, so those weights must be gathered with the root's. The root is
    then set up at once: FSDP2 allows calling the encoder alone only after the root initialised itself."""
    from torch.distributed.fsdp import fully_shard

    from .discovery import _find_layer_list
    modules = dict(model.named_modules())
    for info, as_unit in ((report.audio_encoder, True), (report.language_model, False)):
        component = modules.get(info.path) if info is not None else None
        if component is None:
            continue
        _, layers = _find_layer_list(component)
        for layer in layers or ():
            fully_shard(layer)
        if as_unit and component is not model:
            fully_shard(component)
    fully_shard(model)
    model._get_fsdp_state()._lazy_init()  # NB: private; the public path is a forward through the root first


def is_zero3(param) -> bool:
    """A DeepSpeed ZeRO-3 parameter: empty outside its module's forward, its gradient partitioned. Only
    DeepSpeed sets ``ds_id``, so without deepspeed imported by the job no parameter can be one: checked first,
    and deepspeed is never imported here (importing it prints "Setting accelerator to CPU" and takes seconds)."""
    return "deepspeed" in sys.modules and hasattr(param, "ds_id")


def _zero3_full(param) -> tuple:
    """(full gradient or None, full value) of a ZeRO-3 parameter, through DeepSpeed's own API: each call a
    collective (peft#1402: reading ``.grad`` there says "no gradient"). Reached only for a parameter DeepSpeed
    manages: deepspeed is in ``sys.modules`` already."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
    return safe_get_full_grad(param), safe_get_full_fp32_param(param)


def tensor_facts(triples: list) -> list:
    """For each ``(lora_A, lora_B, magnitude or None)``: the norms of their full gradients (None where no
    gradient), whether lora_B is all zeros, and whether the gradients are finite — over every shard. A
    collective when any of them is sharded (FSDP2's DTensors, DeepSpeed ZeRO-3's partitions): every rank
    must call it with the same layers in the same order."""
    rows, sharded = [], False
    for triple in triples:
        row, b_value = [], None
        for index, param in enumerate(triple):
            if param is not None and is_zero3(param):
                grad, value = _zero3_full(param)  # full on every rank: nothing left to sum
                row.append(None if grad is None else grad.detach().float())
                b_value = value if index == 1 else b_value
                continue
            grad = None if param is None else param.grad
            sharded = sharded or (grad is not None and is_sharded(grad))
            row.append(None if grad is None else local(grad.detach()).float())
        if b_value is None:
            b_value = local(triple[1].detach())
            sharded = sharded or is_sharded(triple[1])
        rows.append((row, b_value))
    # per triple: squared norms of the three gradients, non-zeros in lora_B, non-finite gradient entries
    sums = torch.zeros(len(rows), 5, dtype=torch.float64)
    for i, (row, b_local) in enumerate(rows):
        for j, grad in enumerate(row):
            if grad is not None:
                sums[i, j] = float(grad.double().square().sum())
        sums[i, 3] = float(torch.count_nonzero(b_local))
        sums[i, 4] = float(sum(int((~torch.isfinite(g)).sum()) for g in row[:2] if g is not None))
    if sharded and rank_info() is not None:
        import torch.distributed as dist
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    out = []
    for (row, _), values in zip(rows, sums.tolist()):
        norms = tuple(None if row[j] is None else math.sqrt(values[j]) for j in range(3))
        out.append((norms, values[3] == 0, values[4] == 0))
    return out


def gather_to_zero(obj) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (a collective); None on the others; ``[obj]`` alone."""
    info = rank_info()
    if info is None:
        return [obj]
    import torch.distributed as dist
    gathered = [None] * info["world_size"] if info["rank"] == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


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
    """What rank 0 needs from a rank: per module its times and memory, per stage its times, LoRA statuses."""
    modules = {m["path"]: (m["self_forward_ms"], m["backward_ms"], m["peak_bytes"]) for m in run["modules"]
               if m["executed"]}
    stages: dict = {}
    for m in run["modules"]:
        if not m["executed"]:
            continue
        stage = stages.setdefault(component_of.get(m["path"], "other"), {"forward_ms": 0.0, "backward_ms": 0.0})
        stage["forward_ms"] += m["self_forward_ms"]
        parent = m["path"].rpartition(".")[0]
        # a component's backward is its roots' (their windows cover their children's)
        if m["backward_ms"] is not None and component_of.get(parent) != component_of.get(m["path"]):
            stage["backward_ms"] += m["backward_ms"]
    lora = {(r["path"], r["adapter"]): r["status"] for r in run.get("lora", ())}
    return {"rank": (info or {}).get("rank", 0), "modules": modules, "stages": stages, "lora": lora,
            "total_forward_ms": run["total_forward_ms"], "total_backward_ms": run["total_backward_ms"]}


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
    modules = []
    for path in paths:
        per_rank = [s["modules"].get(path, (None, None, None)) for s in summaries]
        forward, backward = [r[0] for r in per_rank], [r[1] for r in per_rank]
        skew, slowest, excess = _skew([(f or 0.0) + (b or 0.0) if f is not None else None
                                       for f, b in zip(forward, backward)])
        modules.append({"path": path, "forward_ms": forward, "backward_ms": backward,
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
