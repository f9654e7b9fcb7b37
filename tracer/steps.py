"""What an optimizer step did to each LoRA layer: the Tracer's optional ``optimizer=`` watcher.

With the optimizer's step pre/post hooks and a post-accumulate-grad hook on each LoRA parameter it reads, per
LoRA layer x adapter, the gradient norms (accumulated over the micro-batches, before any clipping, and kept
when ``zero_grad`` clears ``.grad``), whether each LoRA parameter
is in a param group and at what learning rate, and how far the step moved the weights (snapshots of the
LoRA weights, which are small). It imports neither the diagnosis nor the static report.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora_params import lora_layers, lora_params


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


def _norm(t) -> float | None:
    return None if t is None else float(torch.linalg.vector_norm(t.detach(), dtype=torch.float32))


class StepWatcher:
    """Registers on ``optimizer``; ``facts()`` after the steps. ``remove()`` takes its hooks off."""

    def __init__(self, model, optimizer):
        self.optimizer = optimizer
        self.layers = [(path, adapter, a, b, layer) for path, layer in lora_layers(model)
                       for adapter, a, b in lora_params(layer)]
        self.steps = 0
        self._before: dict = {}
        self._last: dict = {}
        self._grad_norms: dict = {}  # id(param) -> norm tensor of its accumulated gradient (no sync here)
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]
        for _, _, a, b, _ in self.layers:
            for param in (a, b):
                if param.requires_grad:
                    self._handles.append(param.register_post_accumulate_grad_hook(self._grad))

    def _grad(self, param) -> None:
        self._grad_norms[id(param)] = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32)

    def _grad_norm(self, param) -> float | None:
        norm = self._grad_norms.get(id(param))
        return float(norm) if norm is not None else _norm(param.grad)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _groups(self) -> dict:
        return {id(p): group.get("lr") for group in self.optimizer.param_groups for p in group["params"]}

    def _pre(self, optimizer, args, kwargs) -> None:
        groups = self._groups()
        self._before = {}
        for path, adapter, a, b, layer in self.layers:
            self._before[(path, adapter)] = (a.detach().clone(), b.detach().clone(), self._grad_norm(a),
                                             self._grad_norm(b),
                                             id(a) in groups and id(b) in groups,
                                             groups.get(id(b), groups.get(id(a))), float(layer.scaling[adapter]))

    def _post(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        for path, adapter, a, b, _ in self.layers:
            a_old, b_old, grad_a, grad_b, in_opt, lr, scale = self._before[(path, adapter)]
            a, b = a.detach(), b.detach()
            da, db = _norm(a - a_old), _norm(b - b_old)
            norm_a, norm_b = _norm(a_old), _norm(b_old)
            ratio_a = da / norm_a if norm_a else None
            # a fresh lora_B is zero: measure its step against what it multiplies, ||A|| x scale
            ratio_b = db / norm_b if norm_b else (db / (norm_a * scale) if norm_a and scale else None)
            self._last[(path, adapter)] = StepFacts(in_opt, lr, self.steps, bool(da or db), grad_a, grad_b,
                                                    ratio_a, ratio_b)

    def facts(self) -> dict:
        """(path, adapter) -> StepFacts; with no step seen, every layer's membership and lr as they stand."""
        if self.steps:
            return dict(self._last)
        groups = self._groups()
        out = {}
        for path, adapter, a, b, _ in self.layers:
            out[(path, adapter)] = StepFacts(id(a) in groups and id(b) in groups, groups.get(id(b), groups.get(id(a))),
                                             0, False, self._grad_norm(a), self._grad_norm(b), None, None)
        return out
