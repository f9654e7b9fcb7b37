"""Facts under torch.distributed (DDP, FSDP2, FSDP1, DeepSpeed ZeRO): this rank, whether a tensor is a shard,
and norms of the full gradient when parameters are sharded. Only torch.distributed's own collectives (and
DeepSpeed's own API) go on the wire.

FSDP2 (``fully_shard``) keeps parameters and gradients as DTensor shards, FSDP1 (``use_orig_params=True``)
views of a FlatParameter's shard: a shard's norm is not the gradient's, so the squared local norms are summed
over the ranks (one all-reduce for every LoRA layer at once). DDP's gradients are already all-reduced: every
rank holds the full one. DeepSpeed's are read whole through its API.
"""
from __future__ import annotations

import math
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
                from ..errors import TracerError
                from ..lora.layers import lora_layers
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
