"""The main job behind `bin/trace CLIP`: load, report, run both strategies, diagnose, confirm, write."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from .errors import EXIT_OK, EXIT_STRATEGY_FAILED, TracerError


class Output:
    """Prints report sections (unless --quiet) and keeps them for --markdown."""

    def __init__(self, quiet: bool, colour: bool = False):
        self.quiet = quiet
        self.colour = colour  # only on a TTY, and never with NO_COLOR
        self.sections: list[str] = []

    def emit(self, text: str) -> None:
        self.sections.append(text)
        if not self.quiet:
            print(text, flush=True)

    def wrote(self, path: str) -> None:
        print(f"wrote {path}")

    @property
    def text(self) -> str:
        return "\n".join(self.sections)


def run_job(args) -> int:
    with warnings.catch_warnings():  # NB: scoped: the process-wide filters are the caller's
        # peft 0.21 calls a transformers API that 5.x deprecated: noise for our users, not theirs to fix
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _run_job(args)


def _run_job(args) -> int:
    from .discovery import static_report
    from .loading import load_model, resolve_device, resolve_dtype
    from .reporting import SCHEMA_VERSION, clip_record, render_clip, render_static

    out = Output(args.quiet, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    loaded = load_model(args.model, args.config, device=device, dtype=dtype, static_only=args.static_only,
                        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                        device_map=args.device_map)
    if args.device_map:
        from .loading import input_device
        device = input_device(loaded.model, device)
    if loaded.source == "builtin":
        out.emit("note: built-in tiny Qwen2-Audio with RANDOM weights (structure and costs are real, outputs "
                 "are noise); pass --model DIR_OR_HUB_ID for a real checkpoint")
    report = static_report(loaded.model)
    out.emit(render_static(report, depth=args.depth))
    clip = inputs = None
    if args.clip:
        clip, inputs = _load_inputs(args, loaded, report, out)
        out.emit(render_clip(clip.info, inputs))
    payload = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": loaded.name, "class": report.model_class, "module": report.model_module,
                  "dtype": str(dtype).replace("torch.", ""), "device": "meta" if loaded.on_meta else str(device),
                  "params_total": report.params_total, "params_trainable": report.params_trainable},
        "static": report.to_dict(),
    }
    if clip is not None:
        payload["clip"] = clip_record(clip.info, inputs)
    code = EXIT_OK
    if not args.static_only:
        code = _run_strategies(args, loaded, report, inputs, device, payload, out)
    _write_outputs(args, payload, out, loaded.name)
    return code


def _run_strategies(args, loaded, report, inputs, device, payload, out: Output) -> int:
    from .confirmation import confirm
    from .diagnosis import dead_groups_of
    from .report_runtime import (
        render_comparison,
        render_confirmation,
        render_lora_diagnosis,
        render_lora_setup,
        render_run,
    )
    from .strategies import RunOptions, compare, run_strategies
    if loaded.on_meta:
        raise TracerError("a model on the meta device has no weights to run: add --static-only")
    model, run_report, setup = loaded.model, report, None
    if not args.no_lora:
        from .discovery import static_report
        from .lora import attach_lora
        model, setup = attach_lora(model, report, targets=args.lora_targets, r=args.lora_r,
                                   config_file=args.lora_config, adapter_dir=args.adapter)
        run_report = static_report(model)  # paths now carry PEFT's base_model.model. prefix
        out.emit(render_lora_setup(setup))
    options = RunOptions(repeats=args.repeats, warmup=args.warmup, loss=args.loss, progress=not args.quiet,
                         keep_calls=bool(args.chrome_trace))
    runs = run_strategies(model, run_report, inputs, options, device, which=args.strategy)
    for name, run in runs.items():
        out.emit(render_run(name, run, top=args.top, verbose=args.verbose))
    comparison = compare(runs, run_report)
    if args.strategy == "both":
        out.emit(render_comparison(runs, comparison, inputs.accounting.audio_tokens))
    payload["runs"] = runs
    payload["comparison"] = comparison
    verdicts = confirm(run_report, runs, payload.get("clip"), {row.path for row in run_report.tree})
    payload["confirmation"] = [v.to_dict() for v in verdicts]
    if setup is not None:
        from .lora import requested_gaps, suggest_targets
        explicit = args.lora_targets != "auto" or args.lora_config or args.adapter
        diagnosis = {"requested_gaps": requested_gaps(report, setup["target_modules"]) if explicit else [],
                     "suggested_target_modules": suggest_targets(report),
                     "dead_groups": {name: dead_groups_of(run) for name, run in runs.items() if "lora" in run}}
        out.emit(render_lora_diagnosis(runs, diagnosis))
        payload["lora_setup"] = setup
        payload["lora_diagnosis"] = diagnosis
    out.emit(render_confirmation(verdicts, colour=out.colour))
    return EXIT_STRATEGY_FAILED if any(r["status"] == "failed" for r in runs.values()) else EXIT_OK


def _write_outputs(args, payload: dict, out: Output, model_name: str) -> None:
    from .exporters import chrome_trace, markdown, plot, write_atomic
    if args.chrome_trace and "runs" in payload:
        trace = chrome_trace(payload["runs"])
        write_atomic(args.chrome_trace, lambda tmp: _dump(tmp, trace))
        out.wrote(args.chrome_trace)
    for run in payload.get("runs", {}).values():
        run.pop("calls", None)  # per-call events live in the Chrome trace, not the JSON
    if args.plot and "runs" in payload:
        plot(payload["runs"], args.plot)
        out.wrote(args.plot)
    if args.markdown:
        text = markdown(out.text, f"tracer report: {model_name}")
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


def _load_inputs(args, loaded, report, out: Output):
    from .audio import load_clip
    from .inputs import (
        DEFAULT_PROMPT,
        DEFAULT_TARGET,
        feature_extractor_of,
        prepare_inputs,
        prepare_text_inputs,
    )
    from .loading import processor_for
    prompt, target = args.prompt or DEFAULT_PROMPT, args.target or DEFAULT_TARGET
    if report.audio_encoder is None:
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        if tokenizer is None or not callable(tokenizer):
            raise TracerError(f"{loaded.name}: not an audio model (no audio encoder in step 3) and no tokenizer "
                              "to run its text path: nothing to run on the clip; add --static-only for its structure")
        out.emit("note: no audio encoder: the clip is read for the record, full_forward runs on the text alone")
        clip = load_clip(args.clip, 16000, offset=args.offset, duration=args.duration)
        return clip, prepare_text_inputs(tokenizer, prompt, target)
    processor, note = processor_for(loaded)
    if note:
        out.emit(f"note: {note}")
    fe = feature_extractor_of(processor)
    clip = load_clip(args.clip, fe.sampling_rate, max_seconds=float(getattr(fe, "chunk_length", 30)),
                     offset=args.offset, duration=args.duration)
    modules = dict(loaded.model.named_modules())
    encoder = modules[report.audio_encoder.path] if report.audio_encoder else None
    inputs = prepare_inputs(processor, loaded.model, encoder, clip, prompt=prompt, target=target)
    return clip, inputs
