"""Seed 0 for every random draw the tracer makes (built-in weights, LoRA inits), in forked generators.

A leaf of its own so load/named.py and lora/attach.py need not import load/model.py (which imports load/named.py) for it.
"""
from __future__ import annotations

from contextlib import contextmanager

BUILTIN_SEED = 0


@contextmanager
def seeded(devices=(), seed: int = BUILTIN_SEED):
    """Torch's CPU generator (and those of the CUDA ``devices`` given) seeded for the block, and put back as
    they were after it: random weights and LoRA inits repeat run after run, while a library caller's own
    random stream goes on as if we had never drawn from it. Only the forked generators are seeded, so none
    is left changed."""
    import torch
    cuda = sorted({torch.cuda.current_device() if d.index is None else d.index
                   for d in map(torch.device, devices) if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
