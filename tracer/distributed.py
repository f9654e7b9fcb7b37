"""Tracing under torch.distributed (DDP, FSDP2, FSDP1, DeepSpeed ZeRO): facts per rank, norms of the full
gradient when parameters are sharded, and one merged view on rank 0. Only torch.distributed's own
collectives (and DeepSpeed's own API) go on the wire.

FSDP2 (``fully_shard``) keeps parameters and gradients as DTensor shards, FSDP1 (``use_orig_params=True``)
views of a FlatParameter's shard: a shard's norm is not the gradient's, so the squared local norms are summed
over the ranks (one all-reduce for every LoRA layer at once). DDP's gradients are already all-reduced: every
rank holds the full one. DeepSpeed's are read whole through its API.
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


def is_zero3(param) -> bool:
    """A DeepSpeed ZeRO-3 parameter: empty outside its module's forward, its gradient partitioned. Only
    DeepSpeed sets ``ds_id``, so without deepspeed imported by the job no parameter can be one: checked first,
    and deepspeed is never imported here (importing it prints "Setting accelerator to CPU" and takes seconds)."""
    return "deepspeed" in sys.modules and hasattr(param, "ds_id")


def is_deepspeed(param) -> bool:
    """A parameter whose gradient DeepSpeed keeps: ZeRO-3's, and ZeRO-1/2's (and its bf16 optimizer's), which
    are whole but whose ``.grad`` is None after ``engine.backward``: the reduced gradient sits in the
    optimizer's partitioned buffers, each rank holding part of it (``_hp_mapping`` links the parameter to its
    part, on every rank; None where a rank holds none)."""
    return "deepspeed" in sys.modules and (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"))


def _deepspeed_full(param) -> tuple:
    """(full gradient or None, full value) of a parameter DeepSpeed manages, through its own API: each call a
    collective (peft#1402: reading ``.grad`` there says "no gradient"). Reached only for such a parameter:
    deepspeed is in ``sys.modules`` already."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
    return safe_get_full_grad(param), safe_get_full_fp32_param(param)


def is_fsdp1_view(param) -> bool:
    """FSDP1 with ``use_orig_params=True`` (what accelerate sets for PEFT): the original parameter is a view of
    this rank's part of a FlatParameter shard, empty when none of it is here, and its ``.grad`` a view of the
    reduced shard's gradient (None where the rank holds none of it). FSDP1 marks the originals it flattened
    (``_fsdp_flattened``), on every rank alike."""
    if not getattr(param, "_fsdp_flattened", False):
        return False
    from torch.distributed.fsdp._flat_param import FlatParameter  # NB: private; the mark is set on both
    return not isinstance(param, FlatParameter)


def fsdp1_units(model) -> dict:
    """FSDP1: the module each FullyShardedDataParallel unit wraps -> its FlatParameter. FSDP1 gathers the unit's
    weights in its own forward, before calling the wrapped module: the FlatParameter's storage then holds them.
    Refuses ``use_orig_params=False`` with LoRA: the LoRA weights are then no parameters at all, and their
    gradients exist only inside FlatParameter shards."""
    if "torch.distributed.fsdp.fully_sharded_data_parallel" not in sys.modules:
        return {}  # FSDP1 never imported: it cannot be in use
    from torch.distributed.fsdp import FullyShardedDataParallel
    units = {}
    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel) and module._handle is not None:  # NB: private
            if not module._use_orig_params:
                from .errors import TracerError
                from .lora_params import lora_layers
                if lora_layers(model):
                    raise TracerError("FSDP1 with use_orig_params=False hides LoRA gradients inside FlatParameter "
                                      "shards: wrap with use_orig_params=True, or use FSDP2 (fully_shard)")
            units[module._fsdp_wrapped_module] = module._handle.flat_param
    return units


def _read(param) -> tuple:
    """(gradient, value, split) of one parameter as this rank can read it: DeepSpeed's full tensors through its
    API; a shard's (FSDP2's DTensor, FSDP1's view) with ``split`` set: their squared sums are added over the
    ranks; else ``.grad`` and the parameter themselves. (None, None, False) for no parameter."""
    if param is None:
        return None, None, False
    if is_deepspeed(param):
        grad, value = _deepspeed_full(param)
        return (None if grad is None else grad.detach()), value, False
    grad = param.grad
    split = is_sharded(param) or is_fsdp1_view(param)
    return (None if grad is None else local(grad.detach())), local(param.detach()), split


def _summed(rows: list, split: bool) -> list:
    """Rows of sums over the ranks when any tensor read is a shard (one all-reduce for all of them): a rank
    adds what it read of each shard, rank 0 alone what every rank holds whole. Else this rank's rows."""
    if not split or not rows or rank_info() is None:
        return rows
    import torch.distributed as dist
    sums = torch.tensor(rows, dtype=torch.float64)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return sums.tolist()


def tensor_facts(triples: list) -> list:
    """For each ``(lora_A, lora_B, magnitude or None)``: the norms of their full gradients (None where no
    gradient), whether lora_B is all zeros, and whether the gradients are finite — over every shard. A
    collective when any of them is sharded (FSDP2's DTensors, FSDP1's views, DeepSpeed's partitions): every rank
    must call it with the same layers in the same order."""
    reads = [[_read(param) for param in triple] for triple in triples]
    split = any(r[2] for row in reads for r in row)
    info = rank_info() if split else None
    whole_here = info is None or info["rank"] == 0  # a tensor every rank holds whole: counted once, on rank 0
    # per triple: squared norms of the three gradients, whether each has one (a shard's may be on one rank
    # only: FSDP1 gives None where the rank holds none of it), non-zeros in lora_B, non-finite gradient entries
    rows = []
    for row in reads:
        values = [0.0] * 8
        for j, (grad, _, is_split) in enumerate(row):
            if grad is not None and (is_split or whole_here):
                values[j] = float(grad.double().square().sum())
                values[3 + j] = 1.0
                values[7] += float((~torch.isfinite(grad)).sum()) if j < 2 else 0.0
        _, b_value, b_split = row[1]
        if b_split or whole_here:
            values[6] = float(torch.count_nonzero(b_value))
        rows.append(values)
    out = []
    for values in _summed(rows, split):
        norms = tuple(math.sqrt(values[j]) if values[3 + j] > 0 else None for j in range(3))
        out.append((norms, values[6] == 0, values[7] == 0))
    return out


def grad_norms(groups: list) -> list:
    """The norm of the full gradient over each group of parameters (None where none of them has one): PEFT's
    ``modules_to_save`` copies. A collective under the same conditions as ``tensor_facts``."""
    reads = [[_read(param) for param in group] for group in groups]
    split = any(r[2] for group in reads for r in group)
    info = rank_info() if split else None
    whole_here = info is None or info["rank"] == 0
    rows = []
    for group in reads:
        values = [0.0, 0.0]
        for grad, _, is_split in group:
            if grad is not None and (is_split or whole_here):
                values[0] += float(grad.double().square().sum())
                values[1] = 1.0
        rows.append(values)
    return [math.sqrt(v[0]) if v[1] > 0 else None for v in _summed(rows, split)]


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
