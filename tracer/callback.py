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
    ``trace-step{N}.json``. Under torchrun or ``accelerate launch`` every rank traces its part, and rank 0
    alone writes, with every rank's facts merged under ``"merged"`` (``Tracer.merged()``)."""

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
        if "rank" in run:  # under torchrun / accelerate launch: every rank's facts, merged on rank 0
            merged = tracer.merged(run)
            if run["rank"] != 0:
                self.results[step] = run
                return
            run = {**run, "merged": merged}
        self.results[step] = run
        section = step_section(step, run)
        logger.info("%s", section.text())
        if self.output_dir is not None:
            from .exporters import write_atomic
            from .sections import markdown
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stem = self.output_dir / f"trace-step{step}"
            write_atomic(f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1, default=str)))
            text = markdown([section], f"tracer: training step {step}") + "\n"
            write_atomic(f"{stem}.md", lambda tmp: Path(tmp).write_text(text))

    def on_train_end(self, args, state, control, **kwargs):
        self._close()  # a run that stops mid-step leaves no hook behind

    def _close(self) -> None:
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
        self._tracer, self._step = None, None


def step_section(step: int, run: dict):
    """One screen for a traced training step: LoRA statuses by component, then every layer that is not
    ``ok`` (or, when all are, the first few) with its norms and update ratios."""
    from tabulate import tabulate

    from .naming import short
    from .sections import Section
    lora = run.get("lora") or []
    if not lora:
        return Section(f"STEP {step}", "no LoRA layers in the model")
    counts = ", ".join(f"{component}: " + ", ".join(f"{n} {status}" for status, n in per.items())
                       for component, per in run["lora_summary"].items())
    shown = [r for r in lora if r["status"] != "ok"] or lora[:5]

    def fmt(value):
        return "-" if value is None else f"{value:.3g}"
    rows = [[short(r["path"]), r["status"], fmt(r["grad_norm_A"]), fmt(r["grad_norm_B"]), fmt(r["update_ratio_A"]),
             fmt(r["update_ratio_B"])] for r in shown]
    table = tabulate(rows, headers=["layer", "status", "|grad A|", "|grad B|", "update A", "update B"],
                     tablefmt="simple", disable_numparse=True)
    more = f"\n  ({len(lora) - len(shown)} more layers ok)" if len(lora) > len(shown) else ""
    return Section(f"STEP {step}", counts, table + more + ranks_lines(run.get("merged")))


def ranks_lines(merged: dict | None) -> str:
    """The merged view in a few lines: each stage's slowest rank and skew; LoRA statuses across ranks."""
    if not merged or merged["world_size"] < 2:
        return ""
    lines = [f"\n  {merged['world_size']} ranks ({merged['backend']}):"]
    for name, stage in merged["stages"].items():
        if stage["skew"] is not None:
            lines.append(f"    {name}: slowest on rank {stage['slowest_rank']}, {stage['skew']:.2f}x the median")
    from .report_runtime import agreement_lines
    return "\n".join(lines + agreement_lines(merged, "    "))
