"""Facts about a pass the Tracer asks for at rare moments, never per call: why autograd is off where a
module's caller had it on, whether a top-level call dooms its step, whether the model is compiled; and the
saved-tensor hooks it sits on."""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

_CALL_IMPL = nn.Module._call_impl.__code__  # one frame per module call (its _wrapped_call_impl is another)
_FUNCTION_APPLY = torch.autograd.Function.apply.__func__.__code__
_MAX_FRAMES = 64  # frames searched for an autograd Function between a module and its caller


def autograd_off_how() -> str:
    """Why autograd is off for a module call whose caller had it on (called from ``_pre`` only at such a
    boundary, so the hot path pays nothing): ``inference_mode``, ``function:NAME`` when an autograd Function's
    forward runs the module (a reentrant checkpoint: torch.utils.checkpoint's CheckpointFunction, Unsloth's
    checkpointer), else ``no_grad``."""
    if torch.is_inference_mode_enabled():
        return "inference_mode"
    frame, passed_own_call = sys._getframe(2), False
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        code = frame.f_code
        if code is _CALL_IMPL:
            if passed_own_call:
                break  # the caller's own module call: nothing between
            passed_own_call = True
        elif code is _FUNCTION_APPLY:
            function = frame.f_locals.get("cls")
            return f"function:{getattr(function, '__qualname__', 'Function')}"
        frame = frame.f_back
    return "no_grad"


def step_fault(output, grad_enabled: bool) -> str | None:
    """Why a top-level call's step cannot succeed, or None: it raised, or its loss cannot be backpropagated."""
    error = sys.exc_info()[1]
    if output is None and error is not None:
        return f"the forward raised {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if grad_enabled and isinstance(loss, torch.Tensor) and loss.grad_fn is None and not loss.requires_grad:
        return ("the loss has no grad_fn although autograd is on: nothing trainable took part in it, so its "
                "backward raises 'element 0 of tensors does not require grad'")
    return None


def compiled_model(modules: list) -> bool:
    """A root compiled with torch.compile(model), a compiled submodule, or module.compile()."""
    if "torch._dynamo" not in sys.modules:  # nothing can have been compiled
        return False
    from torch._dynamo.eval_frame import OptimizedModule
    return any(isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None
               for _, m in modules)


def _unpack(tensor):
    return tensor


def chained_saved_hooks(pack):
    """(pack, unpack) over the saved-tensor hooks already active: only the innermost pair runs, so ``pack``
    sees each tensor and hands it on to the pair it shadows (a caller's save_on_cpu, TensorMemory in the
    memory pass)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    outer = top(False) if top is not None else None
    if outer is None:
        return pack, _unpack
    outer_pack, outer_unpack = outer
    return (lambda tensor: outer_pack(pack(tensor))), outer_unpack
