#!/usr/bin/env python3
"""GPU check: both strategies on CUDA with a 7B-shaped Qwen2-Audio in bf16 (random weights), one clip.

Run on a machine with a GPU (about 60 GB free):  python3 bench/gpu_strategies.py [--repeats 5]
Prints the per-strategy tables and the comparison exactly as `bin/trace` does.
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
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu with a small --config (a smoke test)")
    args = parser.parse_args()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device: this check runs on a GPU machine", file=sys.stderr)
        return 2
    from tracer.audio import load_clip
    from tracer.discovery import static_report
    from tracer.inputs import feature_extractor_of, prepare_inputs
    from tracer.loading import load_model, processor_for
    from tracer.report_runtime import render_comparison, render_run
    from tracer.strategies import RunOptions, compare, run_strategies

    device = torch.device(args.device)
    t0 = time.perf_counter()
    loaded = load_model(config=args.config, device=device, dtype=torch.bfloat16)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print(f"built {loaded.name} on {where} in {time.perf_counter() - t0:.1f} s, {weights / 2**30:.1f} GiB of weights")
    report = static_report(loaded.model)
    processor, _ = processor_for(loaded)
    clip = load_clip(args.clip, feature_extractor_of(processor).sampling_rate)
    encoder = dict(loaded.model.named_modules())[report.audio_encoder.path]
    inputs = prepare_inputs(processor, loaded.model, encoder, clip)
    runs = run_strategies(loaded.model, report, inputs, RunOptions(args.repeats, args.warmup), device)
    for name, run in runs.items():
        print(render_run(name, run))
    print(render_comparison(runs, compare(runs, report), inputs.accounting.audio_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
