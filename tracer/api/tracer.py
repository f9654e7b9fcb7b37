"""``Tracer``, what users import: the collector (collect/hooks.py) with what it collected read back — call and module
records, the run record with the LoRA diagnosis and notes, every rank merged, Chrome traces."""
from __future__ import annotations

from ..collect.hooks import Collector
from ..records.calls import CallRecord, ModuleRecord


class Tracer(Collector):
    """Hook every submodule of ``model`` while the ``with`` block runs; read the facts with ``result()``.

    Args:
        model: any ``nn.Module`` (PEFT-wrapped, accelerate-dispatched, gradient-checkpointed).
        grad_norms: keep the norm of each module's output gradient (``grad_output_norm``): opt-in, one reduction
            kernel per output in the backward. Off, a module still says whether a gradient reached it (the LoRA
            diagnosis reads that), and the LoRA parameters' gradient norms are always read.
        saved_tensors: attribute bytes autograd saves for backward to the innermost running module (and see a
            LoRA layer's base weight read past it: the ``bypassed`` status). A saved-tensor hook pair the caller
            has active still runs: ours hands each tensor on to it.
        memory: read current and peak bytes around each call: from ``memory_source`` when given (e.g. a
            tensor_memory.TensorMemory, on any device), else on CUDA from the allocator. Two reads a call:
            more than a small module's own time on a GPU, so timed passes leave it off.
        component_of: module path -> component, from the static report (computed when needed if None).
        optimizer: run ``opt.step()`` inside the block too: each LoRA layer's record then says whether it is
            in a param group, its lr, whether the step moved it and by how much (collect/optimizer_watch.py).
        on_fault: called as ``on_fault(tracer, reason)`` when a top-level call dooms the step: it raised, or
            it returned a ``loss`` with no ``grad_fn`` while autograd was on (its backward will raise "element
            0 of tensors does not require grad"). What was collected can be diagnosed then (``result()``),
            before the error reaches the caller; the callback uses it to explain a crashing step.

    Example:
        >>> with Tracer(model) as tr:
        ...     loss = model(**batch).loss
        ...     loss.backward()
        >>> run = tr.result()   # JSON-ready: {"modules": [...], "never_called": [...], ...}
    """

    def calls(self) -> list[CallRecord]:
        """Every forward call in order, with resolved times (ns since the tracer was entered)."""
        from ..rollup.calls import call_records
        return call_records(self.collected())

    def modules(self, calls: list[CallRecord] | None = None) -> list[ModuleRecord]:
        """One record per registered module, executed or not, in ``named_modules()`` order."""
        from ..rollup.calls import call_records, module_records
        collected = self.collected()
        return module_records(collected, call_records(collected) if calls is None else calls)

    def result(self) -> dict:
        """The run record (JSON-ready): modules, never_called, totals, where a failure happened, and with
        LoRA layers their diagnosis. Call it after backward, before zero_grad (it reads ``.grad``). Under
        torch.distributed it is this rank's, with ``rank``, ``world_size`` and ``backend``; with sharded
        (FSDP2) parameters it is a collective: every rank calls it."""
        from ..collect.sharding import rank_info
        from ..diagnose.judge import judged
        from ..rollup.calls import run_facts
        collected = self.collected()
        record = judged(run_facts(collected), collected, self.model, self._components()).to_dict()
        info = rank_info()
        if info is not None:
            record.update(info)
        return record

    def merged(self, run: dict | None = None) -> dict | None:
        """Every rank's facts on rank 0: per module and per stage the times of each rank, the skew (the
        slowest rank over the median) and the slowest rank, and whether the LoRA statuses agree (a rank that
        disagrees is named). A collective: every rank calls it; None on ranks other than 0. ``run``: this
        rank's ``result()`` when already taken (it reads ``.grad``)."""
        from ..rollup.ranks import merge
        return merge(run if run is not None else self.result(), self._components())

    def write_chrome_traces(self, directory) -> list:
        """Chrome traces of the traced region, for a job: each rank writes ``DIR/rank{R}.json`` (with
        ``distributedInfo``, times on the wall clock: Holistic Trace Analysis loads the directory as one job)
        and rank 0 also ``DIR/perfetto/job.json``, every rank a process in one file (Perfetto opens one
        file). A collective under a process group. Returns the paths this rank wrote."""
        from ..export.chrome_trace import write_job_traces
        return write_job_traces(directory, {"trace": self.calls()}, {"trace": self._origin_unix_ns})

    def _components(self) -> dict:
        if self.component_of is None:
            from ..static.discovery import static_report
            self.component_of = static_report(self.model).component_of
        return self.component_of
