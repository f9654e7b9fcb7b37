"""Command line: argparse and exit codes only. Heavy imports happen after parsing so --help is instant."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, TracerError

DESCRIPTION = """\
Trace an audio-language model on a real clip: a static structure report (8 steps), then
forward and backward hooks on every submodule while the clip runs through both encoding
strategies (audio_tower, full_forward).

With no --model, a built-in tiny Qwen2-Audio (random weights, real transformers classes)
and the shipped clip samples/sample.wav are used, offline."""

EPILOG = """\
examples:
  bin/trace samples/sample.wav
  bin/trace my.flac --model Qwen/Qwen2-Audio-7B-Instruct --device cuda
  bin/trace --config samples/qwen2-audio-7b.json --static-only --json out.json

exit codes: 0 ok, 2 bad input or usage, 3 a strategy failed (the rest reported), 1 unexpected"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trace", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", nargs="?", help="audio file (default: samples/sample.wav)")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="ID_OR_DIR",
                       help="checkpoint directory, or a hub id already in the local cache (no downloads)")
    model.add_argument("--config", metavar="FILE",
                       help="build a model from a config.json alone (random weights; on meta with --static-only)")
    model.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, "
                                                       "bfloat16, float16")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a checkpoint's own Python code to run (off by default)")
    model.add_argument("--allow-pickle", action="store_true",
                       help="allow pickle weights (.bin); refused by default since unpickling can run code")
    clip = p.add_argument_group("clip and prompt")
    clip.add_argument("--offset", type=float, default=0.0, metavar="S",
                      help="start of the window read from the clip, in seconds (default 0)")
    clip.add_argument("--duration", type=float, metavar="S",
                      help="length of the window (default and maximum: what the model sees, 30 s for Qwen2-Audio)")
    clip.add_argument("--prompt", default=None, help="user instruction after the audio (default: "
                                                     "'Transcribe the audio.')")
    clip.add_argument("--target", default=None, help="the answer the LM loss of full_forward is computed on")
    run = p.add_argument_group("runs")
    run.add_argument("--strategy", default="both", choices=("both", "audio_tower", "full_forward"),
                     help="which encoding strategies to run (default both)")
    run.add_argument("--repeats", type=int, default=3, help="timed untraced passes per strategy (default 3)")
    run.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    run.add_argument("--loss", default="pooled_l2", choices=("pooled_l2", "pooled_mean"),
                     help="audio_tower surrogate loss on the encoder output pooled over the clip's frames: "
                          "squared L2 norm of the mean (default) or the plain mean")
    lora = p.add_argument_group("LoRA (attached with peft before the runs)")
    lora.add_argument("--lora-targets", default="auto", metavar="auto|NAMES|REGEX",
                      help="auto: the Linear names in what the chosen strategy runs (step 8); or a comma list "
                           "(suffix match, like peft); or a regex (full match on the module path)")
    lora.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    lora.add_argument("--lora-config", metavar="FILE", help="a PEFT LoraConfig as JSON (overrides the two above)")
    lora.add_argument("--adapter", metavar="DIR", help="an existing adapter (PeftModel.from_pretrained)")
    lora.add_argument("--no-lora", action="store_true", help="trace the model without LoRA")
    out = p.add_argument_group("output")
    out.add_argument("--top", type=int, default=8, help="slowest modules listed per strategy (default 8)")
    out.add_argument("--verbose", action="store_true", help="list every executed module")
    out.add_argument("--static-only", action="store_true", help="print the static report only; run nothing")
    out.add_argument("--depth", type=int, default=4, help="module tree depth in the text report (default 4)")
    out.add_argument("--json", metavar="FILE", help="write the full record as JSON (schema_version 1)")
    out.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except TracerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place unexpected errors become an exit code
        if args.debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


def _validate(args) -> None:
    """Cheap checks before any heavy import or model load."""
    from .loading import DTYPES, check_output_path
    if args.repeats < 1:
        raise TracerError(f"--repeats {args.repeats}: must be at least 1")
    if args.warmup < 0:
        raise TracerError(f"--warmup {args.warmup}: must be 0 or more")
    if args.top < 0:
        raise TracerError(f"--top {args.top}: must be 0 or more")
    chosen = [flag for flag, on in (("--no-lora", args.no_lora), ("--lora-config", args.lora_config),
                                    ("--adapter", args.adapter)) if on]
    if len(chosen) > 1:
        raise TracerError(f"{' and '.join(chosen)} exclude each other")
    if args.lora_r < 1:
        raise TracerError(f"--lora-r {args.lora_r}: must be at least 1")
    if args.depth < 0:
        raise TracerError(f"--depth {args.depth}: must be 0 or more")
    if args.dtype not in DTYPES:
        raise TracerError(f"--dtype {args.dtype!r}: choose one of {', '.join(DTYPES)}")
    if args.json:
        check_output_path(args.json, "--json")
    if args.clip or not args.static_only:
        from .audio import check_clip_args
        from .loading import BUILTIN_CLIP
        if not args.clip:
            shown = os.path.relpath(BUILTIN_CLIP)
            args.clip = str(BUILTIN_CLIP) if shown.startswith("..") else shown
        check_clip_args(args.clip, args.offset, args.duration)


def _run(args) -> int:
    _validate(args)
    import warnings
    # peft 0.21 calls a transformers API that 5.x deprecated: noise for our users, not theirs to fix
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    from .discovery import static_report
    from .loading import load_model, resolve_device, resolve_dtype
    from .reporting import SCHEMA_VERSION, clip_record, render_clip, render_static, write_json_atomic

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    loaded = load_model(args.model, args.config, device=device, dtype=dtype, static_only=args.static_only,
                        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    if loaded.source == "builtin":
        print("note: built-in tiny Qwen2-Audio with RANDOM weights (structure and costs are real, outputs are "
              "noise); pass --model DIR_OR_HUB_ID for a real checkpoint")
    report = static_report(loaded.model)
    print(render_static(report, depth=args.depth))
    clip = inputs = None
    if args.clip:
        clip, inputs = _load_inputs(args, loaded, report)
        print(render_clip(clip.info, inputs))
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
        code = _run_strategies(args, loaded, report, inputs, device, payload)
    if args.json:
        write_json_atomic(args.json, payload)
        print(f"\nwrote {args.json}")
    return code


def _run_strategies(args, loaded, report, inputs, device, payload) -> int:
    from .errors import EXIT_STRATEGY_FAILED
    from .diagnosis import dead_groups_of
    from .report_runtime import (render_comparison, render_confirmation, render_lora_diagnosis, render_lora_setup,
                                 render_run)
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
        print(render_lora_setup(setup))
    options = RunOptions(repeats=args.repeats, warmup=args.warmup, loss=args.loss, progress=True)
    runs = run_strategies(model, run_report, inputs, options, device, which=args.strategy)
    for name, run in runs.items():
        print(render_run(name, run, top=args.top, verbose=args.verbose))
    comparison = compare(runs, run_report)
    if args.strategy == "both":
        print(render_comparison(runs, comparison, inputs.accounting.audio_tokens))
    payload["runs"] = runs
    payload["comparison"] = comparison
    from .confirmation import confirm
    static_paths = {row.path for row in run_report.tree}
    verdicts = confirm(run_report, runs, payload.get("clip"), static_paths)
    payload["confirmation"] = [v.to_dict() for v in verdicts]
    if setup is not None:
        from .lora import requested_gaps, suggest_targets
        explicit = args.lora_targets != "auto" or args.lora_config or args.adapter
        diagnosis = {"requested_gaps": requested_gaps(report, setup["target_modules"]) if explicit else [],
                     "suggested_target_modules": suggest_targets(report),
                     "dead_groups": {name: dead_groups_of(run) for name, run in runs.items() if "lora" in run}}
        print(render_lora_diagnosis(runs, diagnosis))
        payload["lora_setup"] = setup
        payload["lora_diagnosis"] = diagnosis
    print(render_confirmation(verdicts))
    return EXIT_STRATEGY_FAILED if any(r["status"] == "failed" for r in runs.values()) else EXIT_OK


def _load_inputs(args, loaded, report):
    from .audio import load_clip
    from .inputs import DEFAULT_PROMPT, DEFAULT_TARGET, feature_extractor_of, prepare_inputs
    from .loading import processor_for
    processor, note = processor_for(loaded)
    if note:
        print(f"note: {note}")
    fe = feature_extractor_of(processor)
    clip = load_clip(args.clip, fe.sampling_rate, max_seconds=float(getattr(fe, "chunk_length", 30)),
                     offset=args.offset, duration=args.duration)
    modules = dict(loaded.model.named_modules())
    encoder = modules[report.audio_encoder.path] if report.audio_encoder else None
    inputs = prepare_inputs(processor, loaded.model, encoder, clip, prompt=args.prompt or DEFAULT_PROMPT,
                            target=args.target or DEFAULT_TARGET)
    return clip, inputs
