#!/usr/bin/env python3
"""GPU check: both strategies on CUDA with a 7B-shaped Qwen2-Audio in bf16 (random weights), one clip.

Run on a machine with a GPU (about 60 GB free):  python3 bench/gpu_strategies.py [--repeats 5] [--lora]
Prints the per-strategy tables and the comparison as `bin/trace` does (it is `tracer.trace_clip` underneath).
Without --lora every parameter is trainable, as in the first GPU run (docs/performance.md, GPU figures).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="samples/qwen2-audio-7b.json")
    parser.add_argument("--clip", default="samples/sample.wav")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="attach LoRA (auto targets) as bin/trace does")
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu with a small --config (a smoke test)")
    args = parser.parse_args()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device: this check runs on a GPU machine", file=sys.stderr)
        return 2
    from tracer import TraceOptions, trace_clip
    from tracer.render.runs import render_comparison, render_run

    def progress(event, report, detail):
        if event == "static":
            weights = sum(p.numel() * p.element_size() for p in report.model.parameters())
            where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
            print(f"built {report.model_name} on {where} in {time.perf_counter() - t0:.1f} s, "
                  f"{weights / 2**30:.1f} GiB of weights", flush=True)
        elif event == "run":
            print(render_run(detail, report.runs[detail]).text(), flush=True)

    t0 = time.perf_counter()
    options = TraceOptions(repeats=args.repeats, warmup=args.warmup, device=args.device, dtype="bfloat16",
                           lora=args.lora)
    report = trace_clip(args.clip, config=args.config, options=options, observer=progress)
    print(render_comparison(report.runs, report.comparison, report.inputs.accounting.audio_tokens).text())
    return 3 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
