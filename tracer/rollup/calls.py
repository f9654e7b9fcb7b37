"""Roll-ups of what a Tracer collected: call records, one record per module, backward windows, the run's
facts. Pure functions of ``collect.collected.Collected`` (times already in ns), with no model: the LoRA
diagnosis judges these facts on top (``diagnose.judge``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..collect.collected import (
    _BW_END,
    _BW_START,
    _END,
    _GRAD,
    _IDX,
    _INPUTS,
    _MEM_AFTER,
    _MEM_BEFORE,
    _NORMS,
    _OUT_BYTES,
    _OUT_RG,
    _OUTPUTS,
    _PARENT,
    _PEAK,
    _RECOMPUTE,
    _SAVED,
    _START,
    Collected,
)
from ..records.calls import CallRecord, ModuleRecord, tensor_meta


def _live(collected: Collected) -> list:
    """Raw calls that returned (an interrupted call has no end), in call order."""
    return [c for c in collected.calls if c[_END] is not None]


def call_records(collected: Collected) -> list[CallRecord]:
    """Every forward call that returned, in order. Self time is the call's time less its child calls'."""
    raw_calls = collected.calls
    child_ns = [0] * len(raw_calls)
    for call in raw_calls:
        if call[_PARENT] >= 0 and call[_START] is not None and call[_END] is not None:
            child_ns[call[_PARENT]] += call[_END] - call[_START]
    out = []
    counters = [0] * len(collected.paths)
    for cid, c in enumerate(raw_calls):
        start, end = c[_START], c[_END]
        if end is None:  # interrupted before the module returned
            continue
        index = counters[c[_IDX]]
        counters[c[_IDX]] += 0 if c[_RECOMPUTE] else 1
        out.append(CallRecord(
            path=collected.paths[c[_IDX]], call_index=index, start_ns=start, end_ns=end,
            self_ns=max(0, end - start - child_ns[cid]), grad_enabled=c[_GRAD], recompute=c[_RECOMPUTE],
            inputs=tuple(map(tensor_meta, c[_INPUTS])), outputs=tuple(map(tensor_meta, c[_OUTPUTS] or [])),
            output_bytes=c[_OUT_BYTES], saved_bytes=c[_SAVED],
            memory_delta_bytes=None if c[_MEM_AFTER] is None else c[_MEM_AFTER] - c[_MEM_BEFORE],
            peak_bytes=None if c[_PEAK] is None else c[_PEAK] - c[_MEM_BEFORE],
            backward_start_ns=c[_BW_START], backward_end_ns=c[_BW_END]))
    return out


def backward_windows(collected: Collected, calls: list[CallRecord]) -> tuple[list, list]:
    """Per module index: first gradient at its outputs, and the last gradient it produced.

    A call ends when its inputs' gradients (or, with inputs that need none, its parameters') are computed,
    or when the last of its child calls ends: propagated along the call tree, not the module tree, since a
    child can run outside its parent (``embed_tokens`` in Qwen2-Audio).
    """
    live = _live(collected)
    end = [rec.backward_end_ns for rec in calls]
    last_call = {}
    for k, raw in enumerate(live):
        last_call[raw[_IDX]] = k
    for idx, t in collected.param_times:
        k = last_call.get(idx)
        if k is not None:
            end[k] = t if end[k] is None else max(end[k], t)
    position = {id(raw): k for k, raw in enumerate(live)}
    for k in range(len(live) - 1, -1, -1):  # children were created after their parents
        parent = live[k][_PARENT]
        if parent >= 0 and end[k] is not None and id(collected.calls[parent]) in position:
            p = position[id(collected.calls[parent])]
            if calls[p].backward_start_ns is not None:
                end[p] = end[k] if end[p] is None else max(end[p], end[k])
    n = len(collected.paths)
    bw_start, bw_end = [None] * n, [None] * n
    for k, raw in enumerate(live):
        i, start = raw[_IDX], calls[k].backward_start_ns
        if start is not None:
            bw_start[i] = start if bw_start[i] is None else min(bw_start[i], start)
        if end[k] is not None and start is not None:
            bw_end[i] = end[k] if bw_end[i] is None else max(bw_end[i], end[k])
    return bw_start, bw_end


def own_backward_ns(bw_start: list, bw_end: list) -> list:
    """Per module index, the backward time that is its own (None without a window). The windows overlap: a
    parent's covers its children's, and siblings that read one input (q/k/v_proj) all close when that input's
    gradient is done, so one stretch (a wait in a collective, the OS running another process) is in every
    window around it. Here each instant goes to the window that opened last among those open (autograd runs
    one node at a time: the innermost running module), so the modules' own times add up to the backward
    once, as their self forward times add up to the forward."""
    import heapq
    windows = sorted((s, e, i) for i, (s, e) in enumerate(zip(bw_start, bw_end))
                     if s is not None and e is not None and e >= s)
    own: list = [None] * len(bw_start)
    for _, _, i in windows:
        own[i] = 0
    points = sorted({t for s, e, _ in windows for t in (s, e)})
    heap: list = []  # (-start, -index, end): the latest opened on top; a later index is a deeper module
    k = 0
    for here, after in zip(points, points[1:]):
        while k < len(windows) and windows[k][0] <= here:
            s, e, i = windows[k]
            heapq.heappush(heap, (-s, -i, e))
            k += 1
        while heap and heap[0][2] <= here:  # closed windows leave when they reach the top
            heapq.heappop(heap)
        if heap:
            own[-heap[0][1]] += after - here
    return own


def module_records(collected: Collected, calls: list[CallRecord]) -> list[ModuleRecord]:
    """One record per registered module, executed or not, in ``named_modules()`` order."""
    n = len(collected.paths)
    index = {p: i for i, p in enumerate(collected.paths)}
    per = [[] for _ in range(n)]
    for call in calls:
        per[index[call.path]].append(call)
    bw_start, bw_end = backward_windows(collected, calls)
    own_backward = own_backward_ns(bw_start, bw_end)
    norms = [[] for _ in range(n)]
    outputs_rg = [False] * n
    for c in collected.calls:
        if c[_NORMS]:
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
            path=collected.paths[i], cls=collected.classes[i], calls=len(own), recomputed_calls=len(cs) - len(own),
            executed=bool(cs), container=collected.containers[i],
            forward_ms=sum(c.end_ns - c.start_ns for c in own) / 1e6,
            self_forward_ms=sum(c.self_ns for c in own) / 1e6,
            backward_ms=backward, grad_enabled=first.grad_enabled if first else None,
            inputs=first.inputs if first else (), outputs=first.outputs if first else (),
            outputs_require_grad=outputs_rg[i],
            output_bytes=sum(c.output_bytes for c in own), saved_bytes=sum(c.saved_bytes for c in cs),
            memory_delta_bytes=first.memory_delta_bytes if first else None,
            peak_bytes=max((c.peak_bytes for c in cs if c.peak_bytes is not None), default=None),
            grad_output_norm=norm,
            self_backward_ms=None if own_backward[i] is None else own_backward[i] / 1e6))
    return records


@dataclass(frozen=True)
class RunFacts:
    """What one traced pass shows, rolled up: the part of a run record the Tracer can know."""
    calls: tuple  # CallRecord
    modules: tuple  # ModuleRecord
    never_called: tuple
    total_forward_ms: float
    total_backward_ms: float | None
    clock: str
    failed_in: str | None
    lora: tuple | None = None  # LoraLayerRecord
    lora_summary: dict | None = None
    saved_modules: tuple | None = None  # records.diagnosis.SavedModule: PEFT modules_to_save copies
    origin_unix_ns: int = 0  # wall clock at the traced pass's start (lines ranks up in Chrome traces)
    notes: tuple = ()  # one-line facts the user must read (diagnose/run_notes.py)
    labels: dict | None = None  # when labels reached the model: {"supervised_tokens", "masked_samples"}

    def to_dict(self) -> dict:
        run = {"modules": [m.to_dict() for m in self.modules], "never_called": list(self.never_called),
               "total_forward_ms": self.total_forward_ms, "total_backward_ms": self.total_backward_ms,
               "clock": self.clock, "failed_in": self.failed_in}
        if self.lora is not None:
            run["lora"] = [r.to_dict() for r in self.lora]
            run["lora_summary"] = self.lora_summary
        if self.saved_modules:
            run["saved_modules"] = [m.to_dict() for m in self.saved_modules]
        if self.labels is not None:
            run["labels"] = self.labels
        run["notes"] = list(self.notes)
        return run


def never_called(records) -> tuple:
    """Paths of the modules registered but never called, as a reader takes the words: no container
    (ModuleList, ModuleDict, ParameterDict: never called by design; PEFT's lora_A, lora_B, lora_dropout,
    lora_embedding_A/B and lora_magnitude_vector are such dicts) and no wrapper that something inside ran in
    (PEFT's base_model, the root: bypassed when an inner module is called directly). What is left is worth
    a look: a module skipped by the forward or whose weight is read directly (``embed_positions``)."""
    inside_ran = set()
    for r in records:
        if r.executed and r.path:
            parts = r.path.split(".")
            inside_ran.update(".".join(parts[:i]) for i in range(len(parts)))  # '' (the root) and every parent
    return tuple(r.path for r in records if not r.executed and not r.container and r.path not in inside_ran)


def run_facts(collected: Collected) -> RunFacts:
    """Roll up a traced pass: its calls, one record per module, the totals, the labels it saw."""
    calls = call_records(collected)
    records = module_records(collected, calls)
    top_level = [c for c, raw in zip(calls, _live(collected)) if raw[_PARENT] < 0 and not c.recompute]
    starts = [c.backward_start_ns for c in calls if c.backward_start_ns is not None]
    ends = [c.backward_end_ns for c in calls if c.backward_end_ns is not None]
    ends += [t for _, t in collected.param_times]
    return RunFacts(calls=tuple(calls), modules=tuple(records),
                     never_called=never_called(records),
                     total_forward_ms=sum(c.end_ns - c.start_ns for c in top_level) / 1e6,
                     total_backward_ms=(max(ends) - min(starts)) / 1e6 if starts and ends else None,
                     clock=collected.clock, failed_in=collected.failed_in,
                     origin_unix_ns=collected.origin_unix_ns, labels=labels_of(collected))


def labels_of(collected: Collected) -> dict | None:
    """What the loss supervises, when labels reached the model: per sample the tokens whose label is not
    -100, and the samples with none (completion-only masking plus truncation: trl#6668)."""
    if collected.supervised_tokens is None:
        return None
    counts = collected.supervised_tokens
    return {"supervised_tokens": list(counts), "masked_samples": [i for i, n in enumerate(counts) if n == 0]}
