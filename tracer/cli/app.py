"""The main job behind `bin/trace CLIP`: trace_clip() with a text observer, then the files asked for."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import EXIT_OK, EXIT_STRATEGY_FAILED
from ..run.observer import Observer


class Output:
    """Prints report sections and notes (unless --quiet) and keeps them for --markdown."""

    def __init__(self, quiet: bool, colour: bool = False):
        self.quiet = quiet
        self.colour = colour  # only on a TTY, and never with NO_COLOR
        self.parts: list = []  # sections.Section, or a note's text

    def emit(self, part) -> None:
        from ..render.sections import Section, coloured
        for one in part if isinstance(part, list) else [part]:
            self.parts.append(one)
            if not self.quiet:
                text = (coloured(one) if self.colour else one.text()) if isinstance(one, Section) else one
                print(text, flush=True)

    def wrote(self, path: str) -> None:
        print(f"wrote {path}")


def options_from_args(args):
    """TraceOptions from the parsed flags: each option is the flag of its name, but for four the CLI words
    differently (--no-lora, --chrome-trace, --quiet, --fsdp)."""
    from dataclasses import fields

    from ..run.options import TraceOptions
    named = {f.name: getattr(args, f.name) for f in fields(TraceOptions) if hasattr(args, f.name)}
    return TraceOptions(**named, lora=not args.no_lora, keep_calls=bool(args.chrome_trace), progress=not args.quiet,
                        parallel="fsdp" if args.fsdp else None)


class TextReport(Observer):
    """The observer of ``trace_clip``: renders each part of the report as soon as it is ready."""

    def __init__(self, out: Output, args):
        self.out, self.args = out, args

    def on_progress(self, text: str) -> None:  # long work before the report starts (a named model's first build)
        print(text, file=sys.stderr, flush=True)

    def on_note(self, report, text: str) -> None:
        self.out.emit(f"note: {text}")

    def on_static(self, report) -> None:
        from ..render.static import render_static
        self.out.emit(render_static(report.static, depth=self.args.depth))

    def on_clip(self, report) -> None:
        if report.clip_error is not None:
            from ..render.sections import Section
            self.out.emit(Section("CLIP", "could not be prepared (the static report above stands)",
                                  f"  ! {report.clip_error}"))
        else:
            from ..render.static import render_clip
            self.out.emit(render_clip(report.clip.info, report.inputs))

    def on_lora(self, report) -> None:
        from ..render.runs import render_lora_setup
        self.out.emit(render_lora_setup(report.lora_setup))

    def on_run(self, report, strategy: str) -> None:
        from ..render.runs import render_run
        self.out.emit(render_run(strategy, report.runs[strategy], top=self.args.top, verbose=self.args.verbose))

    def on_done(self, report) -> None:
        from ..render.runs import render_comparison, render_confirmation, render_lora_diagnosis
        out, args = self.out, self.args
        if report.comparison is not None:
            if args.strategy == "both":
                tokens = report.inputs.accounting.audio_tokens if report.inputs.audio_in_lm else None
                out.emit(render_comparison(report.runs, report.comparison, tokens))
            if report.lora_diagnosis is not None:
                out.emit(render_lora_diagnosis(report.runs, report.lora_diagnosis, report.lora_setup))
            out.emit(render_confirmation(report.verdicts, runs=report.runs))
            if report.distributed and report.distributed.get("strategies"):
                from ..render.runs import render_ranks
                out.emit(render_ranks(report.distributed))
            if report.lora_diagnosis is not None:
                # NB: last on the terminal, the lines a user sees when the run ends; first in the Markdown
                from ..render.runs import render_verdict
                out.emit(render_verdict(report.runs))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_job(args) -> int:
    if launched_by_torchrun():
        return _run_distributed(args)
    return _run(args)


def _run(args, rank: int = 0) -> int:
    from ..run.pipeline import trace_clip
    quiet = args.quiet or rank != 0  # one report, from rank 0
    out = Output(quiet, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    options = options_from_args(args)
    if rank != 0:
        from dataclasses import replace
        options = replace(options, progress=False)
    report = trace_clip(args.clip, args.model, config=args.config, options=options,
                        observer=TextReport(out, args))
    _write_outputs(args, report, out, rank)
    return EXIT_STRATEGY_FAILED if report.failed else EXIT_OK


def _run_distributed(args) -> int:
    """Under torchrun: one process group for the job (torch.distributed's own, NCCL on GPUs, gloo on CPU);
    each rank traces the clip with what the strategies run wrapped in DDP, and rank 0 reports the ranks
    merged. Each rank works on its own GPU (LOCAL_RANK)."""
    import torch
    import torch.distributed as dist
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        return _run(args, dist.get_rank())
    finally:
        dist.destroy_process_group()


def _write_outputs(args, report, out: Output, rank: int = 0) -> None:
    from ..export.chrome_trace import chrome_trace, write_job_traces
    from ..export.plot import plot
    from ..files import write_atomic
    from ..render.sections import markdown
    if args.chrome_trace and report.runs and report.distributed is not None:
        # a directory of per-rank traces (a collective: every rank writes its own)
        runs = {name: run for name, run in report.runs.items() if run.ok and run.calls is not None}
        written = write_job_traces(args.chrome_trace, {n: r.calls for n, r in runs.items()},
                                   {n: r.origin_unix_ns for n, r in runs.items()})
        if rank == 0:  # NB: from the paths written, not the argument: "DIR/" would print DIR//rank*.json
            out.wrote(f"{Path(written[0]).with_name('rank*.json')} and {written[-1]}")
    if rank != 0:
        return  # the other files: one each, from rank 0
    payload = report.to_dict()
    if args.chrome_trace and report.runs and report.distributed is None:
        trace = chrome_trace(report.runs)
        write_atomic(args.chrome_trace, lambda tmp: _dump(tmp, trace))
        out.wrote(args.chrome_trace)
    if args.plot and report.runs:
        plot(report.runs, args.plot)
        out.wrote(args.plot)
    if args.markdown:
        verdict = [p for p in out.parts if getattr(p, "tag", None) == "VERDICT"]
        text = markdown(verdict + [p for p in out.parts if p not in verdict], f"tracer report: {report.model_name}")
        write_atomic(args.markdown, lambda tmp: Path(tmp).write_text(text + "\n"))
        out.wrote(args.markdown)
    if args.json:
        write_atomic(args.json, lambda tmp: _dump(tmp, payload))
        out.wrote(args.json)


def _dump(path: str, payload: dict) -> None:
    import json
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
        f.write("\n")
