"""Collection: the context manager that hooks every submodule, forward and backward (api.Tracer on top).

Backward facts come from tensor hooks on module outputs and inputs plus post-accumulate-grad hooks on
parameters, never ``register_full_backward_hook``: that one breaks on in-place ops downstream and never
fires for dict/ModelOutput outputs (pytorch#61519, #87540). The hot path only appends; shapes stay
tuples and timestamps stay raw (ints on CPU, CUDA events on GPU) until ``result()``.
"""
from __future__ import annotations

import sys
import time
import weakref
from functools import partial

import torch
import torch.nn as nn

from .collected import (
    _BW_END, _BW_START, _END, _GRAD, _IDX, _MEM_AFTER, _MEM_BEFORE, _NORMS, _OUT_BYTES, _OUT_RG, _OUTPUTS, _PEAK,
    _RECOMPUTE, _SAVED, _START, Collected,
)
from .pass_facts import autograd_off_how, compiled_model, step_fault

_MAX_ITEMS = 32  # inputs/outputs described per call: enough for HF layers, bounded for huge tuples
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def _flatten(obj, out: list, depth: int = 0) -> list:
    """Tensors (and type names of anything else) found in args, kwargs, tuples, lists, dicts, ModelOutput."""
    if len(out) >= _MAX_ITEMS:
        return out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (tuple, list)) and depth < 4:
        for item in obj:
            _flatten(item, out, depth + 1)
    elif isinstance(obj, dict) and depth < 4:
        for item in obj.values():
            _flatten(item, out, depth + 1)
    elif obj is not None and not isinstance(obj, (bool, int, float, str)):
        out.append(type(obj).__name__)
    return out


def _meta(item):
    return (item.shape, item.dtype, item.device) if isinstance(item, torch.Tensor) else item


class Collector:
    """Hooks every submodule of ``model`` while the ``with`` block runs and keeps the raw facts:
    ``collected()``. It reads nothing back: ``api.Tracer`` (what users import) adds the roll-ups, the diagnosis
    and the exports. Arguments as ``api.Tracer``'s."""

    def __init__(self, model: nn.Module, *, grad_norms: bool = True, saved_tensors: bool = True,
                 memory: bool = True, memory_source=None, component_of: dict | None = None, optimizer=None,
                 on_fault=None):
        self.model = model
        self.on_fault = on_fault
        self.optimizer = optimizer
        self.memory = memory
        self.memory_source = memory_source
        self.component_of = component_of
        self.grad_norms = grad_norms
        self.saved_tensors = saved_tensors
        self._active = False
        self._handles: list = []
        self._calls: list = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "Collector":
        if self._active:
            raise RuntimeError("this Tracer is already active; use a second Tracer for a nested trace")
        # torch.compile(model): trace the module it wraps, so paths are the eager model's
        wrapper, self.model = self.model, getattr(self.model, "_orig_mod", self.model)
        modules = list(self.model.named_modules())
        self._paths = [p for p, _ in modules]
        self._classes = [type(m).__name__ for _, m in modules]
        self._containers = [isinstance(m, _CONTAINERS) for _, m in modules]
        self._calls, self._stack, self._param_times, self._tensor_handles = [], [], [], []
        self._produced: dict = {}  # id(output tensor) -> (weakref, version, [producer cid, consumer cids])
        self._seen_storage: set = set()
        self.failed_in: str | None = None
        self._supervised: list = []  # per root call given labels: tokens supervised per sample (tensors)
        self._grad_off: dict = {}  # call id -> how autograd was off where its caller had it on
        self._watcher = None
        first = next(self.model.parameters(), None)
        self._cuda = first is not None and first.device.type == "cuda"
        self._memory = None
        if self.memory:
            from .peak_memory import CudaAllocatorMemory
            self._memory = self.memory_source or (CudaAllocatorMemory(first.device.index) if self._cuda else None)
        self._now = self._cuda_event if self._cuda else time.perf_counter_ns
        from .sharding import fsdp1_units, is_fsdp1_view, is_sharded, is_zero3, local
        params = [p for p in self.model.parameters() if p.device.type != "meta"]
        # FSDP2: parameters are DTensor shards (the unsharded storage is freed between passes), ZeRO-3's are
        # empty between passes, FSDP1's views of a shard: the storage that exists now, and _pre adds the
        # gathered ones as they come
        self._sharded = any(is_sharded(p) or is_zero3(p) or is_fsdp1_view(p) for p in params)
        units = fsdp1_units(self.model)  # refuses FSDP1 without use_orig_params on a LoRA model
        self._fsdp1_flat = {idx: units[m] for idx, (_, m) in enumerate(modules) if m in units}
        # NB: storages by identity (_cdata), not address: FSDP2 frees a gathered weight's memory by resizing its
        # storage to 0, and an activation allocated there next must not pass for that weight
        # NB: not empty storages: FSDP1 and ZeRO-3 give a parameter a fresh size-0 tensor each time they release
        # it, so its storage is freed later and an activation's may take its identity
        self._param_storage = {s._cdata for s in (local(p).untyped_storage() for p in params) if s.nbytes()}
        # a LoRA layer's base weight saved for backward while the layer never ran: read directly (a fused loss)
        from ..lora.layers import lora_layers
        self._lora_weights = {local(layer.get_base_layer().weight).untyped_storage()._cdata: path
                              for path, layer in lora_layers(self.model)
                              if getattr(layer.get_base_layer(), "weight", None) is not None
                              and layer.get_base_layer().weight.device.type != "meta"}
        self._weights_saved: set = set()
        self.compiled = wrapper is not self.model or compiled_model(modules)
        self._stance = None
        try:
            if self.compiled:  # NB: compiled code skips hooks added after compiling (pytorch#117758): run eager
                self._stance = torch.compiler.set_stance("force_eager")
            for idx, (_, module) in enumerate(modules):
                self._handles.append(module.register_forward_pre_hook(partial(self._pre, idx), with_kwargs=True))
                self._handles.append(module.register_forward_hook(partial(self._post, idx), with_kwargs=True,
                                                                  always_call=True))
                for param in module._parameters.values():  # NB: parameters(recurse=False) is slow
                    if param is not None and param.requires_grad:
                        self._handles.append(param.register_post_accumulate_grad_hook(partial(self._param_grad, idx)))
            if self.optimizer is not None:
                from .optimizer_watch import StepWatcher
                self._watcher = StepWatcher(self.model, self.optimizer)
            self._saved_ctx = None
            if self.saved_tensors:
                self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
                self._saved_ctx.__enter__()
        except BaseException:
            self._remove()
            raise
        self._origin = self._now()
        self._origin_unix_ns = time.time_ns()  # where the ranks' clocks meet in their Chrome traces
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._remove()
        return None

    def _remove(self) -> None:
        if getattr(self, "_stance", None) is not None:
            self._stance.__exit__(None, None, None)  # the stance the caller had
            self._stance = None
        if getattr(self, "_saved_ctx", None) is not None:
            self._saved_ctx.__exit__(None, None, None)
            self._saved_ctx = None
        for handle in self._handles + getattr(self, "_tensor_handles", []):
            handle.remove()
        if getattr(self, "_watcher", None) is not None:
            self._watcher.remove()
        self._handles, self._tensor_handles, self._stack, self._produced = [], [], [], {}

    # -- hot path --------------------------------------------------------------------------------------
    def _cuda_event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pre(self, idx, module, args, kwargs):
        if not self._active:
            return None
        grad = torch.is_grad_enabled()
        if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:  # the common case, fast
            items = [args[0]]
        else:
            items = _flatten(kwargs, _flatten(args, []))
        call = [idx, self._stack[-1] if self._stack else -1, None, None, grad, _in_backward(),
                [_meta(t) for t in items], None, 0, False, 0, None, None, None, None, None, []]
        cid = len(self._calls)
        self._calls.append(call)
        if self._fsdp1_flat:  # FSDP1 gathered its unit into the FlatParameter before calling the module it wraps
            flat = self._fsdp1_flat.get(idx)
            if flat is not None:
                self._param_storage.add(flat.untyped_storage()._cdata)
        elif self._sharded:  # FSDP2 / ZeRO-3 have just gathered the weights: they are not activations
            for param in module._parameters.values():
                if param is not None and type(param) is not torch.distributed.tensor.DTensor:
                    self._param_storage.add(param.untyped_storage()._cdata)
        if not grad and not call[_RECOMPUTE] and (not self._stack or self._calls[self._stack[-1]][_GRAD]):
            self._grad_off[cid] = autograd_off_how()
        if not self._stack and "labels" in kwargs:  # NB: the root's call only: one check a pass
            labels = kwargs["labels"]
            if isinstance(labels, torch.Tensor) and labels.dim() >= 1 and labels.numel():
                # NB: a tensor, resolved in collected(): no device sync on the hot path
                self._supervised.append((labels.reshape(labels.shape[0], -1) != -100).sum(-1))
        if grad:
            hook = None
            for t in items:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    # NB: an input that is a traced module's untouched output already has a hook: when it
                    # fires, this call's input gradient is ready too. Saves one hook registration per call.
                    produced = self._produced.get(id(t))
                    if produced is not None and produced[0]() is t and produced[1] == t._version:
                        produced[2].append(cid)
                        continue
                    hook = hook or partial(self._input_grad, cid)
                    self._tensor_handles.append(t.register_hook(hook))
        if self._memory is not None:
            current, peak = self._memory.read()
            if self._stack:  # NB: nested modules share one peak counter; fold it into the parent first
                parent = self._calls[self._stack[-1]]
                parent[_PEAK] = max(parent[_PEAK] or 0, peak)
            self._memory.reset_peak()
            call[_MEM_BEFORE] = current
        self._stack.append(cid)
        call[_START] = self._now()
        return None

    def _post(self, idx, module, args, kwargs, output):
        if not self._active or not self._stack:
            return None
        end = self._now()
        if output is None and sys.exc_info()[0] is not None and self.failed_in is None:
            self.failed_in = self._paths[idx]  # the innermost module the exception passed through
        if self._calls[self._stack[-1]][_IDX] != idx:
            return None  # another pre-hook raised before ours: this call never started
        cid = self._stack.pop()
        call = self._calls[cid]
        call[_END] = end
        items = [output] if type(output) is torch.Tensor else _flatten(output, [])
        call[_OUTPUTS] = [_meta(t) for t in items]
        grad = call[_GRAD]
        nbytes, requires_grad = 0, False
        for t in items:
            if isinstance(t, torch.Tensor):
                nbytes += t.numel() * t.element_size()
                if grad and t.requires_grad:
                    requires_grad = True
                    consumers = [cid]  # [producer, consumer calls whose input this tensor is...]
                    self._tensor_handles.append(t.register_hook(partial(self._output_grad, consumers)))
                    self._produced[id(t)] = (weakref.ref(t), t._version, consumers)
        call[_OUT_BYTES], call[_OUT_RG] = nbytes, requires_grad
        if self._memory is not None:
            call[_MEM_AFTER], peak = self._memory.read()
            call[_PEAK] = max(call[_PEAK] or 0, peak)
            if self._stack:
                parent = self._calls[self._stack[-1]]
                parent[_PEAK] = max(parent[_PEAK] or 0, call[_PEAK])
        # NB: a top-level call, once a pass; not a checkpoint's replay in backward, which stops itself by raising
        if not self._stack and self.on_fault is not None and not call[_RECOMPUTE]:
            fault = step_fault(output, grad)
            if fault is not None:
                self.on_fault(self, fault)
        return None

    def _output_grad(self, consumers, grad):
        if not self._active:
            return None
        now = self._now()
        call = self._calls[consumers[0]]
        if call[_BW_START] is None:
            call[_BW_START] = now
        for consumer in consumers[1:]:
            self._calls[consumer][_BW_END] = now
        if self._seen_storage:
            self._seen_storage.clear()  # a backward began: storages from this forward may be reused next
        if self.grad_norms and grad is not None:
            call[_NORMS].append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))
        return None

    def _input_grad(self, cid, grad):
        if self._active:
            self._calls[cid][_BW_END] = self._now()
        return None

    def _param_grad(self, idx, param):
        if self._active:
            self._param_times.append((idx, self._now()))

    def _pack(self, tensor):
        # Attribute each storage autograd keeps to the innermost module, once; weights are not activations.
        if self._active:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._param_storage:
                if key in self._lora_weights:
                    self._weights_saved.add(self._lora_weights[key])
            elif self._stack and key not in self._seen_storage:
                self._seen_storage.add(key)
                self._calls[self._stack[-1]][_SAVED] += storage.nbytes()
        return tensor

    # -- what was collected ------------------------------------------------------------------------------
    def collected(self) -> "Collected":
        """The raw facts with every clock reading turned into ns since the tracer was entered (on CUDA this
        is the one synchronisation). Roll-ups (rollup/calls.py) take it from here."""
        if self._cuda:
            torch.cuda.synchronize()
            origin = self._origin
            ns = lambda e: None if e is None else int(origin.elapsed_time(e) * 1e6)  # noqa: E731
        else:
            origin = self._origin
            ns = lambda t: None if t is None else t - origin  # noqa: E731
        calls = []
        for raw in self._calls:
            call = list(raw)
            for slot in (_START, _END, _BW_START, _BW_END):
                call[slot] = ns(raw[slot])
            calls.append(call)
        return Collected(paths=self._paths, classes=self._classes, containers=self._containers, calls=calls,
                         param_times=[(idx, ns(t)) for idx, t in self._param_times],
                         clock="cuda events" if self._cuda else "perf_counter_ns", failed_in=self.failed_in,
                         steps=self._watcher.facts() if self._watcher is not None else None,
                         supervised_tokens=[int(n) for t in self._supervised for n in t.tolist()]
                         if self._supervised else None,
                         grad_off=dict(self._grad_off), weights_saved=frozenset(self._weights_saved),
                         compiled=self.compiled, origin_unix_ns=self._origin_unix_ns)


def _unpack(tensor):
    return tensor
