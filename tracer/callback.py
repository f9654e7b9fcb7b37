"""``TracerCallback``: trace chosen steps of a real ``transformers.Trainer`` run (TRL's trainers subclass it).

For each listed global step the Tracer is on from ``on_step_begin`` (before the step's first micro-batch)
to ``on_step_end`` (after the optimizer step and ``zero_grad``), watching the optimizer: gradient norms are
the accumulated ones, read before clipping and kept through ``zero_grad`` (the Trainer clears ``.grad``
before ``on_step_end``, transformers#31033). Steps not listed carry no hook at all.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from .hooks import Tracer

logger = logging.getLogger(__name__)


class TracerCallback(TrainerCallback):
    """``Trainer(..., callbacks=[TracerCallback(steps=(1, 2))])``; then ``callback.results[step]`` is the
    run record of that step (as ``Tracer.result()``). With ``output_dir`` each is also written there as
    ``trace-step{N}.json``."""

    def __init__(self, steps=(1,), output_dir: str | None = None):
        self.steps = {int(s) for s in steps}
        self.output_dir = Path(output_dir) if output_dir else None
        self.results: dict = {}
        self._tracer: Tracer | None = None
        self._step: int | None = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1  # the step about to run
        if step not in self.steps or model is None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self._tracer, self._step = Tracer(model, optimizer=inner, memory=False), step
        self._tracer.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._tracer is None:
            return
        tracer, step = self._tracer, self._step
        self._close()
        run = tracer.result()
        self.results[step] = run
        summary = run.get("lora_summary")
        logger.info("tracer: step %d: %s", step, summary if summary is not None else "no LoRA layers")
        if self.output_dir is not None:
            from .exporters import write_atomic
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / f"trace-step{step}.json"
            write_atomic(str(path), lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1, default=str)))

    def on_train_end(self, args, state, control, **kwargs):
        self._close()  # a run that stops mid-step leaves no hook behind

    def _close(self) -> None:
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
        self._tracer, self._step = None, None
