"""Collection: the Tracer context manager that hooks every submodule, forward and backward.

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

from .records import CallRecord, ModuleRecord, describe

# Slots of one call record while tracing (a list: cheaper than an object on the hot path).
(_IDX, _PARENT, _START, _END, _GRAD, _RECOMPUTE, _INPUTS, _OUTPUTS, _OUT_BYTES, _OUT_RG, _SAVED,
 _MEM_BEFORE, _MEM_AFTER, _PEAK, _BW_START, _BW_END, _NORMS) = range(17)
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


def _cuda_allocated(device_index: int) -> tuple[int, int]:
    """(current, peak) bytes allocated, from one allocator query. NB: memory_allocated() and
    max_memory_allocated() each flatten and sort every allocator statistic: ~100 µs a call on the hot path."""
    stat = torch.cuda.memory_stats_as_nested_dict(device_index)["allocated_bytes"]["all"]
    return stat["current"], stat["peak"]


def _meta(item):
    return (item.shape, item.dtype, item.device) if isinstance(item, torch.Tensor) else item


class Tracer:
    """Hook every submodule of ``model`` while the ``with`` block runs; read the facts with ``result()``.

    Args:
        model: any ``nn.Module`` (PEFT-wrapped, accelerate-dispatched, gradient-checkpointed).
        grad_norms: keep the norm of each module's output gradient (one small reduction per output).
        saved_tensors: attribute bytes autograd saves for backward to the innermost running module.
        memory: on CUDA, read the allocator's current and peak bytes around each call (two queries a call).
        component_of: module path -> component, from the static report (computed when needed if None).

    Example:
        >>> with Tracer(model) as tr:
        ...     loss = model(**batch).loss
        ...     loss.backward()
        >>> run = tr.result()   # JSON-ready: {"modules": [...], "never_called": [...], ...}
    """

    def __init__(self, model: nn.Module, *, grad_norms: bool = True, saved_tensors: bool = True,
                 memory: bool = True, component_of: dict | None = None):
        self.model = model
        self.memory = memory
        self.component_of = component_of
        self.grad_norms = grad_norms
        self.saved_tensors = saved_tensors
        self._active = False
        self._handles: list = []
        self._calls: list = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "Tracer":
        if self._active:
            raise RuntimeError("this Tracer is already active; use a second Tracer for a nested trace")
        modules = list(self.model.named_modules())
        self._paths = [p for p, _ in modules]
        self._classes = [type(m).__name__ for _, m in modules]
        self._containers = [isinstance(m, _CONTAINERS) for _, m in modules]
        self._calls, self._stack, self._param_times, self._tensor_handles = [], [], [], []
        self._produced: dict = {}  # id(output tensor) -> (weakref, version, [producer cid, consumer cids])
        self._seen_storage: set = set()
        self.failed_in: str | None = None
        first = next(self.model.parameters(), None)
        self._cuda = first is not None and first.device.type == "cuda"
        self._cuda_memory = self._cuda and self.memory
        self._device_index = first.device.index if self._cuda else None
        self._now = self._cuda_event if self._cuda else time.perf_counter_ns
        self._param_storage = {p.untyped_storage().data_ptr() for p in self.model.parameters()
                               if p.device.type != "meta"}
        try:
            for idx, (_, module) in enumerate(modules):
                self._handles.append(module.register_forward_pre_hook(partial(self._pre, idx), with_kwargs=True))
                self._handles.append(module.register_forward_hook(partial(self._post, idx), with_kwargs=True,
                                                                  always_call=True))
                for param in module._parameters.values():  # NB: parameters(recurse=False) is slow
                    if param is not None and param.requires_grad:
                        self._handles.append(param.register_post_accumulate_grad_hook(partial(self._param_grad, idx)))
            self._saved_ctx = None
            if self.saved_tensors:
                self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
                self._saved_ctx.__enter__()
        except BaseException:
            self._remove()
            raise
        self._origin = self._now()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._remove()
        return None

    def _remove(self) -> None:
        if getattr(self, "_saved_ctx", None) is not None:
            self._saved_ctx.__exit__(None, None, None)
            self._saved_ctx = None
        for handle in self._handles + getattr(self, "_tensor_handles", []):
            handle.remove()
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
        if self._cuda_memory:
            current, peak = _cuda_allocated(self._device_index)
            if self._stack:  # NB: nested modules share one peak counter; fold it into the parent first
                parent = self._calls[self._stack[-1]]
                parent[_PEAK] = max(parent[_PEAK] or 0, peak)
            torch.cuda.reset_peak_memory_stats(self._device_index)
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
        if self._cuda_memory:
            call[_MEM_AFTER], peak = _cuda_allocated(self._device_index)
            call[_PEAK] = max(call[_PEAK] or 0, peak)
            if self._stack:
                parent = self._calls[self._stack[-1]]
                parent[_PEAK] = max(parent[_PEAK] or 0, call[_PEAK])
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
        if self._stack and self._active:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._param_storage and key not in self._seen_storage:
                self._seen_storage.add(key)
                self._calls[self._stack[-1]][_SAVED] += storage.nbytes()
        return tensor

    # -- results ---------------------------------------------------------------------------------------
    def _resolver(self):
        if not self._cuda:
            origin = self._origin
            return lambda t: None if t is None else t - origin
        torch.cuda.synchronize()  # NB: the only synchronisation: events resolve after the pass
        origin = self._origin
        return lambda e: None if e is None else int(origin.elapsed_time(e) * 1e6)

    def calls(self) -> list[CallRecord]:
        """Every forward call in order, with resolved times (ns since the tracer was entered)."""
        ns = self._resolver()
        resolved = [(ns(c[_START]), ns(c[_END])) for c in self._calls]
        child_ns = [0] * len(self._calls)
        for cid, call in enumerate(self._calls):
            start, end = resolved[cid]
            if call[_PARENT] >= 0 and start is not None and end is not None:
                child_ns[call[_PARENT]] += end - start
        out = []
        counters = [0] * len(self._paths)
        for cid, c in enumerate(self._calls):
            start, end = resolved[cid]
            if end is None:  # interrupted before the module returned
                continue
            index = counters[c[_IDX]]
            counters[c[_IDX]] += 0 if c[_RECOMPUTE] else 1
            out.append(CallRecord(
                path=self._paths[c[_IDX]], call_index=index, start_ns=start, end_ns=end,
                self_ns=max(0, end - start - child_ns[cid]), grad_enabled=c[_GRAD], recompute=c[_RECOMPUTE],
                inputs=[describe(m) for m in c[_INPUTS]], outputs=[describe(m) for m in c[_OUTPUTS] or []],
                output_bytes=c[_OUT_BYTES], saved_bytes=c[_SAVED],
                memory_delta_bytes=None if c[_MEM_AFTER] is None else c[_MEM_AFTER] - c[_MEM_BEFORE],
                peak_bytes=None if c[_PEAK] is None else c[_PEAK] - c[_MEM_BEFORE],
                backward_start_ns=ns(c[_BW_START]), backward_end_ns=ns(c[_BW_END])))
        return out

    def modules(self, calls: list[CallRecord] | None = None) -> list[ModuleRecord]:
        """One record per registered module, executed or not, in ``named_modules()`` order."""
        calls = self.calls() if calls is None else calls
        ns = self._resolver()
        n = len(self._paths)
        index = {p: i for i, p in enumerate(self._paths)}
        per = [[] for _ in range(n)]
        for call in calls:
            per[index[call.path]].append(call)
        bw_start, bw_end = self._backward_windows(calls, ns)
        norms = [[] for _ in range(n)]
        outputs_rg = [False] * n
        for c in self._calls:
            norms[c[_IDX]].extend(c[_NORMS])
            outputs_rg[c[_IDX]] |= c[_OUT_RG]
        records = []
        for i in range(n):
            cs = per[i]
            first = next((c for c in cs if not c.recompute), cs[0] if cs else None)
            own = [c for c in cs if not c.recompute]
            backward = (bw_end[i] - bw_start[i]) / 1e6 if bw_start[i] is not None and bw_end[i] is not None \
                and bw_end[i] >= bw_start[i] else None
            norm = None
            if norms[i]:  # one transfer per module, not one per call (each .cpu() would sync a GPU)
                device = norms[i][0].device
                norm = float(torch.stack([x.to(device) for x in norms[i]]).square().sum().sqrt())
            records.append(ModuleRecord(
                path=self._paths[i], cls=self._classes[i], calls=len(own), recomputed_calls=len(cs) - len(own),
                executed=bool(cs), container=self._containers[i],
                forward_ms=sum(c.end_ns - c.start_ns for c in own) / 1e6,
                self_forward_ms=sum(c.self_ns for c in own) / 1e6,
                backward_ms=backward, grad_enabled=first.grad_enabled if first else None,
                inputs=first.inputs if first else [], outputs=first.outputs if first else [],
                outputs_require_grad=outputs_rg[i],
                output_bytes=sum(c.output_bytes for c in own), saved_bytes=sum(c.saved_bytes for c in cs),
                memory_delta_bytes=first.memory_delta_bytes if first else None,
                peak_bytes=max((c.peak_bytes for c in cs if c.peak_bytes is not None), default=None),
                grad_output_norm=norm))
        return records

    def _backward_windows(self, calls: list[CallRecord], ns) -> tuple[list, list]:
        """Per module: first gradient at its outputs, and the last gradient it produced.

        A call ends when its inputs' gradients (or, with inputs that need none, its parameters') are
        computed, or when the last of its child calls ends: propagated along the call tree, not the
        module tree, since a child can run outside its parent (``embed_tokens`` in Qwen2-Audio).
        """
        live = [c for c in self._calls if c[_END] is not None]
        end = [rec.backward_end_ns for rec in calls]
        last_call = {}
        for k, raw in enumerate(live):
            last_call[raw[_IDX]] = k
        for idx, t in self._param_times:
            k = last_call.get(idx)
            if k is not None:
                t = ns(t)
                end[k] = t if end[k] is None else max(end[k], t)
        position = {id(raw): k for k, raw in enumerate(live)}
        for k in range(len(live) - 1, -1, -1):  # children were created after their parents
            parent = live[k][_PARENT]
            if parent >= 0 and end[k] is not None and id(self._calls[parent]) in position:
                p = position[id(self._calls[parent])]
                if calls[p].backward_start_ns is not None:
                    end[p] = end[k] if end[p] is None else max(end[p], end[k])
        n = len(self._paths)
        bw_start, bw_end = [None] * n, [None] * n
        for k, raw in enumerate(live):
            i, start = raw[_IDX], calls[k].backward_start_ns
            if start is not None:
                bw_start[i] = start if bw_start[i] is None else min(bw_start[i], start)
            if end[k] is not None and start is not None:
                bw_end[i] = end[k] if bw_end[i] is None else max(bw_end[i], end[k])
        return bw_start, bw_end

    def result(self) -> dict:
        """The run record (JSON-ready): modules, never_called, totals, and where a failure happened."""
        calls = self.calls()
        records = self.modules(calls)
        top_level = [c for c, raw in zip(calls, (c for c in self._calls if c[_END] is not None))
                     if raw[_PARENT] < 0 and not c.recompute]
        ns = self._resolver()
        starts = [c.backward_start_ns for c in calls if c.backward_start_ns is not None]
        ends = [c.backward_end_ns for c in calls if c.backward_end_ns is not None]
        ends += [ns(t) for _, t in self._param_times]
        backward = (max(ends) - min(starts)) / 1e6 if starts and ends else None
        run = {
            "modules": [r.to_dict() for r in records],
            "never_called": [r.path for r in records if not r.executed],
            "total_forward_ms": sum(c.end_ns - c.start_ns for c in top_level) / 1e6,
            "total_backward_ms": backward,
            "clock": "cuda events" if self._cuda else "perf_counter_ns",
            "failed_in": self.failed_in,
        }
        from .diagnosis import diagnose, lora_layers, summarize
        if lora_layers(self.model):  # NB: reads .grad now: call result() after backward, before zero_grad
            component_of = self.component_of
            if component_of is None:
                from .discovery import static_report
                component_of = static_report(self.model).component_of
            lora = diagnose(self.model, run["modules"], calls, component_of)
            run["lora"] = [r.to_dict() for r in lora]
            run["lora_summary"] = summarize(lora)
        return run


def _unpack(tensor):
    return tensor
