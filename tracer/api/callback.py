"""``TracerCallback``: trace chosen steps of a real ``transformers.Trainer`` run (TRL's trainers subclass it).

For each listed global step the Tracer is on from ``on_step_begin`` (before the step's first micro-batch)
to ``on_step_end`` (after the optimizer step and ``zero_grad``), watching the optimizer: gradient norms are
the accumulated ones, read before clipping and kept through ``zero_grad`` (the Trainer clears ``.grad``
before ``on_step_end``, transformers#31033). Steps not listed carry no hook at all.

A step that cannot succeed (its forward raised, or its loss has no ``grad_fn`` so backward will raise) is
diagnosed the moment its forward ends: the hooks come off, the result is kept and logged, and only then
does the error reach the Trainer. Each traced step logs a block at WARNING: the verdict, then every group of
LoRA layers that do not learn with its cause and fix.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from ..records.vocab import LoraStatus
from .tracer import Tracer

logger = logging.getLogger("tracer.callback")  # the name users filter on, kept across moves


class TracerCallback(TrainerCallback):
    """``Trainer(..., callbacks=[TracerCallback(steps=(1, 2))])``; then ``callback.results[step]`` is the
    run record of that step (as ``Tracer.result()``). With ``output_dir`` each is also written there as
    ``trace-step{N}.json``. Under torchrun or ``accelerate launch`` every rank traces its part, and rank 0
    alone writes, with every rank's facts merged under ``"merged"`` (``Tracer.merged()``). ``grad_norms``: keep
    each module's output-gradient norm too (``Tracer``'s opt-in; the LoRA norms are always there)."""

    def __init__(self, steps=(1,), output_dir: str | None = None, grad_norms: bool = False):
        self.steps = {int(s) for s in steps}
        self.grad_norms = grad_norms
        self.output_dir = Path(output_dir) if output_dir else None
        self.results: dict = {}
        self._tracer: Tracer | None = None
        self._step: int | None = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.close()  # a step that raised in its backward never reached on_step_end
        step = state.global_step + 1  # the step about to run
        if step not in self.steps or model is None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self._tracer, self._step = Tracer(model, optimizer=inner, memory=False, on_fault=self._fault,
                                          grad_norms=self.grad_norms), step
        self._tracer.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._tracer is not None:
            self._finish()

    def _fault(self, tracer, reason: str) -> None:
        """The Tracer saw this step's forward doom it: explain now, before the error reaches the Trainer."""
        if tracer is self._tracer:
            self._finish(fault=reason)

    def _finish(self, fault: str | None = None) -> None:
        tracer, step = self._tracer, self._step
        self.close()
        run = tracer.result()
        if fault is not None:
            run = {**run, "fault": fault}
        elif "rank" in run:  # under torchrun / accelerate launch: every rank's facts, merged on rank 0
            # NB: a collective, so never on a faulting step: another rank may not fault and would wait forever
            merged = tracer.merged(run)
            if run["rank"] != 0:
                self.results[step] = run
                return
            run = {**run, "merged": merged}
        self.results[step] = run
        section = step_section(step, run)
        logger.warning("%s", section.text())
        if self.output_dir is not None:
            from ..files import write_atomic
            from ..render.sections import markdown
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stem = self.output_dir / f"trace-step{step}"
            write_atomic(f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(run, indent=1, default=str)))
            text = markdown([section], f"tracer: training step {step}") + "\n"
            write_atomic(f"{stem}.md", lambda tmp: Path(tmp).write_text(text))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()  # a run that stops mid-step leaves no hook behind

    def close(self) -> None:
        """Take the hooks of a step still being traced off (idempotent). Done for you at the next step, at the
        end of training and when a step's forward dooms it; call it after an error raised inside backward."""
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
        self._tracer, self._step = None, None


def step_section(step: int, run: dict):
    """One screen for a traced training step: the verdict, every group of LoRA layers that do not learn with
    its cause and fix, the notes, then the layers' norms and update ratios (the non-ok ones, or the first few)."""
    from tabulate import tabulate

    from ..module_paths import short
    from ..render.sections import Section
    from ..diagnose.verdict import problem_groups, verdict_lines
    lora = run.get("lora") or []
    notes = run.get("notes") or []
    fault = [f"  ! this step cannot succeed: {run['fault']}"] if run.get("fault") else []
    if not lora:
        return Section(f"STEP {step}", "no LoRA layers in the model", "\n".join(fault + [f"  ! {n}" for n in notes]))
    lines = verdict_lines({f"step {step}": lora}, notes) + fault
    for g in problem_groups(lora):
        lines.append(f"  {g['pattern']}: {g['status']} ({g['count']}) - {g['cause']}"
                     + (f"; fix: {g['hint']}" if g["hint"] else ""))
    lines += [f"  ! {n}" for n in notes]
    counts = ", ".join(f"{component}: " + ", ".join(f"{n} {status}" for status, n in per.items())
                       for component, per in run["lora_summary"].items())
    shown = [r for r in lora if r["status"] != LoraStatus.OK] or lora[:5]

    def fmt(value):
        return "-" if value is None else f"{value:.3g}"
    rows = [[short(r["path"]), r["status"], fmt(r["grad_norm_A"]), fmt(r["grad_norm_B"]), fmt(r.get("update_ratio_A")),
             fmt(r.get("update_ratio_B"))] for r in shown]
    table = tabulate(rows, headers=["layer", "status", "|grad A|", "|grad B|", "update A", "update B"],
                     tablefmt="simple", disable_numparse=True)
    more = f"\n  ({len(lora) - len(shown)} more layers ok)" if len(lora) > len(shown) else ""
    return Section(f"STEP {step}", lines[0], "\n".join(lines[1:] + [f"  statuses: {counts}", table]) + more
                   + ranks_lines(run.get("merged")))


def ranks_lines(merged: dict | None) -> str:
    """The merged view in a few lines: each stage's slowest rank and skew; LoRA statuses across ranks."""
    if not merged or merged["world_size"] < 2:
        return ""
    lines = [f"\n  {merged['world_size']} ranks ({merged['backend']}):"]
    for name, stage in merged["stages"].items():
        if stage["skew"] is not None:
            lines.append(f"    {name}: slowest on rank {stage['slowest_rank']}, {stage['skew']:.2f}x the median")
    from ..render.runs import agreement_lines
    return "\n".join(lines + agreement_lines(merged, "    "))
