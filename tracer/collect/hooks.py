"""Collection: the context manager that hooks every submodule, forward and backward (api/tracer.py on top).

Backward facts come from tensor hooks on module outputs and inputs plus post-accumulate-grad hooks on
parameters, never ``register_full_backward_hook``: it breaks on in-place ops downstream and never fires for
dict/ModelOutput outputs (pytorch#61519, #87540). The hot path only appends; shapes stay tuples and timestamps
raw (ints on CPU, CUDA events on GPU) until ``result()``."""
from __future__ import annotations

import sys
import time
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn as nn

from .collected import (_BW_END, _BW_START, _END, _GRAD, _IDX, _INPUTS, _MEM_AFTER, _MEM_BEFORE, _NORMS,  # noqa: I001
                        _OUT_BYTES, _OUT_RG, _OUTPUTS, _PEAK, _RECOMPUTE, _SAVED, _START, Collected)
from .pass_facts import autograd_off_how, chained_saved_hooks, compiled_model, step_fault

_MAX_ITEMS = 32  # inputs/outputs described per call: enough for HF layers, bounded for huge tuples
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
# what Tensor.register_hook does inside, less its handle: private, so used only where this torch has it
_HOOK_DICT = callable(getattr((torch.ones(1, requires_grad=True) * 1).grad_fn, "_register_hook_dict", None))


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

    def __init__(self, model: nn.Module, *, grad_norms: bool = False, saved_tensors: bool = True,
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
        self._produced: dict = {}  # id(output tensor) -> [weakref, version, meta, call, consumer calls...]
        self._entries: list = []  # every such entry whose hook sits in its tensor's hook dict
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
            # a module's trainable parameters, hooked only once a call of it takes no input that needs grad (see
            # _hooks): otherwise the input gradient closes its window, after its parameters' (they run first)
            self._own_params = {}
            for idx, (_, module) in enumerate(modules):
                own = [p for p in module._parameters.values()  # NB: parameters(recurse=False) is slow
                       if p is not None and p.requires_grad]
                if own:
                    self._own_params[idx] = own
            pre, post, pack = self._hooks()
            for idx, (_, module) in enumerate(modules):
                self._handles.append(module.register_forward_pre_hook(partial(pre, idx), with_kwargs=True))
                self._handles.append(module.register_forward_hook(partial(post, idx), with_kwargs=True,
                                                                  always_call=True))
            if self.optimizer is not None:
                from .optimizer_watch import StepWatcher
                self._watcher = StepWatcher(self.model, self.optimizer)
            self._saved_ctx = None
            if self.saved_tensors:
                self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(*chained_saved_hooks(pack))
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
        for entry in getattr(self, "_entries", ()):  # outputs' hooks, by the key _hooks gave them
            tensor = entry[0]()
            if tensor is not None and tensor._backward_hooks:
                tensor._backward_hooks.pop(id(entry), None)
        if getattr(self, "_watcher", None) is not None:
            self._watcher.remove()
        self._handles, self._tensor_handles, self._stack, self._produced, self._entries = [], [], [], {}, []

    # -- hot path --------------------------------------------------------------------------------------
    def _cuda_event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _hooks(self):
        """(pre, post, pack): the hooks, closures over this pass's lists (no lookups on self). Measured on many
        tiny modules, what a hook cost above PyTorch's own dispatch (the floor) was mostly allocation (each
        object that outlives a call brings Python's garbage collections nearer) and ``Tensor.register_hook``'s
        Python (a handle, an import): so a call is one list, shapes tuples, an input's shape is its producer's
        when it is a traced module's output, and an output's hook goes straight into the tensor's hook dict,
        taken off again by key at exit."""
        calls, stack, now, produced, entries = self._calls, self._stack, self._now, self._produced, self._entries
        tensor_handles, param_times, seen, memory = self._tensor_handles, self._param_times, self._seen_storage, \
            self._memory
        own_params, handles = self._own_params, self._handles
        gathered = bool(self._fsdp1_flat) or self._sharded
        grad_enabled, graph_task, Tensor, ref = torch.is_grad_enabled, torch._C._current_graph_task_id, \
            torch.Tensor, weakref.ref
        norms, vector_norm = self.grad_norms, torch.linalg.vector_norm
        untracked = getattr(memory, "untracked", None) or nullcontext

        class Output(list):
            """One hooked output: [weakref, version, meta, its call, the calls whose input it is...], and its
            own backward hook (NB: one object an output: a closure would be four, a partial slower to call)."""
            __slots__ = ()

            def __call__(entry, grad):
                now_ = now()
                call = entry[3]
                if call[_BW_START] is None:
                    call[_BW_START] = now_
                for consumer in entry[4:]:
                    consumer[_BW_END] = now_
                if seen:
                    seen.clear()  # a backward began: storages from this forward may be reused next
                if grad is not None:  # a gradient reached this output: the fact the diagnosis reads
                    if call[_NORMS] is None:
                        call[_NORMS] = []
                    if norms:
                        with untracked():  # the memory pass's TensorMemory must not count our own norms
                            call[_NORMS].append(vector_norm(grad.detach(), dtype=torch.float32))

        def hook_output(call, t, meta):
            entry = Output((ref(t), t._version, meta, call))
            grad_fn = t.grad_fn
            if _HOOK_DICT and type(t) is Tensor and grad_fn is not None:
                hooks = t._backward_hooks
                if hooks is None:
                    t._backward_hooks = hooks = OrderedDict()
                    grad_fn._register_hook_dict(t)
                hooks[id(entry)] = entry  # NB: an address, never one of PyTorch's small handle ids
                entries.append(entry)
            else:  # a leaf, or a subclass (DTensor) that may keep its hooks elsewhere
                tensor_handles.append(t.register_hook(entry))
            produced[id(t)] = entry

        def hook_input(call):
            def input_grad(grad):
                call[_BW_END] = now()
            return input_grad

        def hook_params(idx, params):
            def param_grad(param):
                param_times.append((idx, now()))
            for param in params:
                handles.append(param.register_post_accumulate_grad_hook(param_grad))

        def pre(idx, module, args, kwargs):
            grad = grad_enabled()
            call = [idx, stack[-1] if stack else -1, None, None, grad, graph_task() != -1, (), None, 0, False, 0,
                    None, None, None, None, None, None]
            cid = len(calls)
            calls.append(call)
            needs_grad = False
            if not kwargs and len(args) == 1 and type(args[0]) is Tensor:  # the common case, fast
                t = args[0]
                # NB: a traced module's untouched output: its shape is known, and its hook closes this call's
                # backward too (saves a hook registration per call)
                known = produced.get(id(t))
                if known is not None and known[0]() is t and known[1] == t._version:
                    call[_INPUTS] = (known[2],)
                    if grad:
                        needs_grad = True
                        known.append(call)
                else:
                    call[_INPUTS] = ((t.shape, t.dtype, t.device),)
                    if grad and t.requires_grad:
                        needs_grad = True
                        tensor_handles.append(t.register_hook(hook_input(call)))
            else:
                items = _flatten(kwargs, _flatten(args, []))
                call[_INPUTS] = tuple(map(_meta, items))
                if grad:
                    hook = None
                    for t in items:
                        if isinstance(t, Tensor) and t.requires_grad:
                            needs_grad = True
                            known = produced.get(id(t))
                            if known is not None and known[0]() is t and known[1] == t._version:
                                known.append(call)
                                continue
                            hook = hook or hook_input(call)
                            tensor_handles.append(t.register_hook(hook))
            if not grad:
                if not call[_RECOMPUTE] and (not stack or calls[stack[-1]][_GRAD]):
                    self._grad_off[cid] = autograd_off_how()
            elif not needs_grad and idx in own_params:
                hook_params(idx, own_params.pop(idx))
            if gathered:
                self._gathered(idx, module)
            if not stack and "labels" in kwargs:  # NB: the root's call only: one check a pass
                self._labels(kwargs["labels"])
            if memory is not None:
                self._memory_before(call)
            stack.append(cid)
            call[_START] = now()

        def post(idx, module, args, kwargs, output):
            end = now()
            if not stack:
                return
            if output is None and self.failed_in is None and sys.exc_info()[0] is not None:
                self.failed_in = self._paths[idx]  # the innermost module the exception passed through
            cid = stack[-1]
            call = calls[cid]
            if call[_IDX] != idx:
                return  # another pre-hook raised before ours: this call never started
            stack.pop()
            call[_END] = end
            grad = call[_GRAD]
            if type(output) is Tensor:
                meta = (output.shape, output.dtype, output.device)
                call[_OUTPUTS] = (meta,)
                call[_OUT_BYTES] = output.nbytes
                if grad and output.requires_grad:
                    call[_OUT_RG] = True
                    hook_output(call, output, meta)
            else:
                items = _flatten(output, [])
                call[_OUTPUTS] = metas = tuple(map(_meta, items))
                nbytes = 0
                for t, meta in zip(items, metas):
                    if isinstance(t, Tensor):
                        nbytes += t.nbytes
                        if grad and t.requires_grad:
                            call[_OUT_RG] = True
                            hook_output(call, t, meta)
                call[_OUT_BYTES] = nbytes
            if memory is not None:
                self._memory_after(call)
            # NB: a top-level call, once a pass; not a checkpoint's replay in backward, which stops itself by raising
            if not stack and self.on_fault is not None and not call[_RECOMPUTE]:
                fault = step_fault(output, grad)
                if fault is not None:
                    self.on_fault(self, fault)

        param_storage, lora_weights, weights_saved = self._param_storage, self._lora_weights, self._weights_saved

        def pack(tensor):
            # Attribute each storage autograd keeps to the innermost module, once; weights are not activations.
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in param_storage:
                if key in lora_weights:
                    weights_saved.add(lora_weights[key])
            elif stack and key not in seen:
                seen.add(key)
                calls[stack[-1]][_SAVED] += storage.nbytes()
            return tensor

        return pre, post, pack

    # -- rare branches of the hot path, out of line ---------------------------------------------------------
    def _gathered(self, idx, module) -> None:
        if self._fsdp1_flat:  # FSDP1 gathered its unit into the FlatParameter before calling the module it wraps
            flat = self._fsdp1_flat.get(idx)
            if flat is not None:
                self._param_storage.add(flat.untyped_storage()._cdata)
        else:  # FSDP2 / ZeRO-3 have just gathered the weights: they are not activations
            for param in module._parameters.values():
                if param is not None and type(param) is not torch.distributed.tensor.DTensor:
                    self._param_storage.add(param.untyped_storage()._cdata)

    def _labels(self, labels) -> None:
        if isinstance(labels, torch.Tensor) and labels.dim() >= 1 and labels.numel():
            # NB: a tensor, resolved in collected(): no device sync on the hot path
            self._supervised.append((labels.reshape(labels.shape[0], -1) != -100).sum(-1))

    def _memory_before(self, call) -> None:
        current, peak = self._memory.read()
        if self._stack:  # NB: nested modules share one peak counter; fold it into the parent first
            parent = self._calls[self._stack[-1]]
            parent[_PEAK] = max(parent[_PEAK] or 0, peak)
        self._memory.reset_peak()
        call[_MEM_BEFORE] = current

    def _memory_after(self, call) -> None:
        call[_MEM_AFTER], peak = self._memory.read()
        call[_PEAK] = max(call[_PEAK] or 0, peak)
        if self._stack:
            parent = self._calls[self._stack[-1]]
            parent[_PEAK] = max(parent[_PEAK] or 0, call[_PEAK])

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

