"""What an optimizer step did to each LoRA layer: the Tracer's optional ``optimizer=`` watcher.

With the optimizer's step pre/post hooks and a post-accumulate-grad hook on each LoRA parameter it reads, per
LoRA layer x adapter, the gradient norms (accumulated over the micro-batches, before any clipping, and kept
when ``zero_grad`` clears ``.grad``), whether each LoRA parameter
is in a param group and at what learning rate, and how far the step moved the weights (snapshots of the
LoRA weights, which are small). It imports neither the diagnosis nor the static report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .sharding import is_fsdp1_view, is_sharded, local, rank_info
from ..lora.layers import lora_layers, lora_params


@dataclass(frozen=True)
class StepFacts:
    """One LoRA layer x adapter across the optimizer steps seen (the figures are the last step's)."""
    in_optimizer: bool  # lora_A and lora_B both in some param group
    lr: float | None  # lora_B's group's (or lora_A's) learning rate
    steps: int  # optimizer steps seen inside the block
    stepped: bool  # the last step changed the weights
    grad_norm_A: float | None  # accumulated, before clipping
    grad_norm_B: float | None
    update_ratio_A: float | None  # ||dA|| / ||A||
    update_ratio_B: float | None  # ||dB|| / ||B||, or against ||A|| x scale while B was still zero
    # DoRA's magnitude vector, when the layer has a trainable one (None otherwise)
    magnitude_in_optimizer: bool | None = None
    magnitude_lr: float | None = None
    magnitude_stepped: bool | None = None  # the last step changed it


def _sumsq(t) -> float | None:
    """This rank's part of a squared norm (a DTensor's shard: FSDP2), summed over the ranks later."""
    return None if t is None else float(local(t.detach()).double().square().sum())


class StepWatcher:
    """Registers on ``optimizer``; ``facts()`` after the steps. ``remove()`` takes its hooks off.

    Under FSDP2 (and FSDP1's views) the LoRA parameters and their gradients are shards: each hook keeps this
    rank's squared sums, and the step hooks (which every rank runs, in the same order) sum them over the ranks
    at once. (FSDP1's originals never see their gradient accumulate: ``.grad`` is read at the step.)"""

    def __init__(self, model, optimizer):
        self.optimizer = optimizer
        self.layers = [(path, adapter, a, b, layer) for path, layer in lora_layers(model)
                       for adapter, a, b in lora_params(layer)]
        self.magnitudes = [_magnitude(layer, adapter) for _, adapter, _, _, layer in self.layers]
        self.sharded = any(is_sharded(p) or is_fsdp1_view(p) for _, _, a, b, _ in self.layers for p in (a, b))
        self.steps = 0
        self._before: dict = {}
        self._last: dict = {}
        self._grad_sumsq: dict = {}  # id(param) -> this rank's squared norm of its accumulated gradient
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]
        for _, _, a, b, _ in self.layers:
            for param in (a, b):
                if param.requires_grad:
                    self._handles.append(param.register_post_accumulate_grad_hook(self._grad))

    def _grad(self, param) -> None:
        # NB: a tensor, not a float: no device sync in the middle of backward
        self._grad_sumsq[id(param)] = local(param.grad.detach()).double().square().sum()

    def _grad_sumsqs(self) -> list:
        """Per layer (A, B): squared gradient norms, kept by the hook or read from ``.grad`` now."""
        def one(param):
            kept = self._grad_sumsq.get(id(param))
            return float(kept) if kept is not None else _sumsq(param.grad)
        return [(one(a), one(b)) for _, _, a, b, _ in self.layers]

    def _over_ranks(self, rows: list) -> list:
        """Sum rows of squared norms over the ranks (one all-reduce) when the parameters are sharded;
        square roots of the sums; None stays None."""
        if self.sharded and rows and rank_info() is not None:
            import torch.distributed as dist
            # each value beside whether this rank has it: FSDP1 gives no .grad where a rank holds none of it
            width = len(rows[0])
            flat = torch.tensor([[v or 0.0 for v in row] + [float(v is not None) for v in row] for row in rows],
                                dtype=torch.float64)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            rows = [[v if n > 0 else None for v, n in zip(r[:width], r[width:])] for r in flat.tolist()]
        return [[None if v is None else math.sqrt(v) for v in row] for row in rows]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _groups(self) -> dict:
        return {id(p): group.get("lr") for group in self.optimizer.param_groups for p in group["params"]}

    def _pre(self, optimizer, args, kwargs) -> None:
        groups = self._groups()
        grads = self._over_ranks(self._grad_sumsqs())
        self._before = {}
        for (path, adapter, a, b, layer), mag, (grad_a, grad_b) in zip(self.layers, self.magnitudes, grads):
            self._before[(path, adapter)] = (a.detach().clone(), b.detach().clone(), grad_a, grad_b,
                                             id(a) in groups and id(b) in groups,
                                             groups.get(id(b), groups.get(id(a))), float(layer.scaling[adapter]),
                                             None if mag is None else mag.detach().clone(),
                                             None if mag is None else id(mag) in groups, groups.get(id(mag)))

    def _post(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        sums = []
        for (path, adapter, a, b, _), mag in zip(self.layers, self.magnitudes):
            a_old, b_old = self._before[(path, adapter)][:2]
            mag_old = self._before[(path, adapter)][7]
            a, b = a.detach(), b.detach()
            sums.append((_sumsq(a - a_old), _sumsq(b - b_old), _sumsq(a_old), _sumsq(b_old),
                         None if mag is None else _sumsq(mag.detach() - mag_old)))
        for (path, adapter, *_), (da, db, norm_a, norm_b, dm) in zip(self.layers, self._over_ranks(sums)):
            _, _, grad_a, grad_b, in_opt, lr, scale, _, mag_in_opt, mag_lr = self._before[(path, adapter)]
            ratio_a = da / norm_a if norm_a else None
            # a fresh lora_B is zero: measure its step against what it multiplies, ||A|| x scale
            ratio_b = db / norm_b if norm_b else (db / (norm_a * scale) if norm_a and scale else None)
            self._last[(path, adapter)] = StepFacts(in_opt, lr, self.steps, bool(da or db), grad_a, grad_b,
                                                    ratio_a, ratio_b, mag_in_opt, mag_lr,
                                                    None if dm is None else bool(dm))

    def facts(self) -> dict:
        """(path, adapter) -> StepFacts; with no step seen, every layer's membership and lr as they stand (a
        collective under FSDP2 then: the gradient norms are summed over the ranks)."""
        if self.steps:
            return dict(self._last)
        groups = self._groups()
        grads = self._over_ranks(self._grad_sumsqs())
        out = {}
        for (path, adapter, a, b, _), mag, (grad_a, grad_b) in zip(self.layers, self.magnitudes, grads):
            out[(path, adapter)] = StepFacts(id(a) in groups and id(b) in groups, groups.get(id(b), groups.get(id(a))),
                                             0, False, grad_a, grad_b, None, None,
                                             None if mag is None else id(mag) in groups, groups.get(id(mag)))
        return out


def _magnitude(layer, adapter: str):
    """A DoRA layer's trainable magnitude vector for ``adapter`` (peft keeps it in ``lora_magnitude_vector``)."""
    vectors = getattr(layer, "lora_magnitude_vector", None)
    if vectors is None or adapter not in vectors:
        return None
    weight = vectors[adapter].weight
    return weight if weight.requires_grad else None
