"""Setting a model up for a job of many ranks before it runs: rank 0's adapter on every rank, FSDP2 sharding
as one applies it to an audio LM. (collect/sharding.py reads the facts of such a job; this one changes the model.)"""
from __future__ import annotations

import torch


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

    from ..static.discovery import _find_layer_list
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
