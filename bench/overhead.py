#!/usr/bin/env python3
"""Benchmarks: the tracer's overhead, timing fidelity, memory and scale, beside torch.profiler and torchinfo.

    python3 bench/overhead.py [--quick] [--json bench/results.json]

Everything is measured in one run and reported as ratios (these machines are noisy): A/B passes are
interleaved after a warm-up and medians are compared. Sections:
  overhead   fwd+bwd untraced vs traced on a medium Qwen2-Audio and on a stress model of tiny modules,
             with the floor (no-op hooks) and the added microseconds per module call
  anchors    torch.profiler (record_shapes, profile_memory, with_modules) and torchinfo.summary
  fidelity   per-stage times from the traced pass vs the same stages timed untraced
  memory     peak RSS traced vs untraced; record bytes per module call
  scale      the 7B static report on meta, with LoRA on every Linear; --help; the main job end to end
  gpu        the same overhead on CUDA in bf16 with event vs synchronise-per-hook timing (when CUDA exists)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's start/stop lines off stderr
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from tracer.api.tracer import Tracer  # noqa: E402
from tracer.collect.peak_memory import PeakMemory  # noqa: E402

MEDIUM = dict(
    audio_config=dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                      num_mel_bins=128, max_source_positions=1500),
    text_config=dict(model_type="qwen2", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=4, intermediate_size=1536, vocab_size=8000, max_position_embeddings=2048),
    audio_token_index=7999)


def medium_model():
    """The medium Qwen2-Audio with LoRA on the encoder's q/v (a realistic fine-tune) and its inputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from tracer.load.audio import load_clip
    from tracer.static.discovery import static_report
    from tracer.inputs.families import prepare_inputs
    from tracer.load.assets import BUILTIN_CLIP, BUILTIN_MODEL_DIR
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**MEDIUM)).eval()
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    encoder = model.model.audio_tower
    inputs = prepare_inputs(processor, model, encoder, load_clip(str(BUILTIN_CLIP), 16000))
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    return model, inputs, static_report(model)


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.lin(x)) + x


def stress_model(blocks=300, width=8):
    """Many tiny modules: hook cost dominates the arithmetic."""
    torch.manual_seed(0)
    return nn.Sequential(*[Block(width) for _ in range(blocks)])


TIMING = dict(grad_norms=False, saved_tensors=False, memory=False)  # what the report's timed traced pass carries


def module_calls(model, step) -> int:
    with Tracer(model, grad_norms=False, saved_tensors=False) as tr:
        step()
    return len(tr.calls())


class NoOpHooks:
    """The floor: what PyTorch's hook dispatch costs with hooks that do nothing (forward pre/post, and a
    tensor hook on each output for backward, the mechanism any per-module backward fact needs)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def post(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda g: None)

        self.handles = []
        for m in self.model.modules():
            self.handles.append(m.register_forward_pre_hook(lambda m, a: None))
            self.handles.append(m.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def timed(step, context_factory):
    """(forward ms, backward ms) of one pass inside a fresh context."""
    with context_factory():
        t0 = time.perf_counter()
        loss = step()
        t1 = time.perf_counter()
        loss.backward()
        if loss.is_cuda:  # count the queued backward kernels, not just their launch
            torch.cuda.synchronize()
        t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def interleaved(step, model, contexts: dict, rounds: int, warmup: int = 2) -> dict:
    """Median forward/backward ms per context, passes interleaved A/B/C… (the order rotating each round)
    so that every variant shares the machine's noise."""
    results = {name: ([], []) for name in contexts}
    names = list(contexts)
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            factory = contexts[name]
            model.zero_grad(set_to_none=True)
            f, b = timed(step, factory)
            if r >= warmup:
                results[name][0].append(f)
                results[name][1].append(b)
    return {n: {"forward_ms": statistics.median(f), "backward_ms": statistics.median(b),
                "forward_min_ms": min(f), "backward_min_ms": min(b)} for n, (f, b) in results.items()}


class Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class profiler_context:
    """torch.profiler with shapes, memory and module names; its C++ start/stop lines kept off stderr."""
    activities = ("CPU",)

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        self._prof = profile(activities=[getattr(ProfilerActivity, a) for a in self.activities], record_shapes=True,
                             profile_memory=True, with_modules=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._prof.__exit__(*exc)
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)


def bench_overhead(quick: bool) -> dict:
    out = {}
    model, inputs, report = medium_model()
    batch = inputs.full
    step = lambda: model(**batch).loss  # noqa: E731
    rounds = 3 if quick else 12
    medium = interleaved(step, model, {"untraced": Nothing, "floor": lambda: NoOpHooks(model),
                                       "tracer": lambda: Tracer(model), "tracer_timing": lambda: Tracer(model, **TIMING),
                                       "profiler": profiler_context}, rounds)
    calls = module_calls(model, step)
    out["medium"] = {"module_calls": calls, **medium}

    stress = stress_model()
    x = torch.randn(64, 8, requires_grad=True)
    sstep = lambda: stress(x).square().mean()  # noqa: E731
    srounds = 10 if quick else 40
    s = interleaved(sstep, stress, {"untraced": Nothing, "floor": lambda: NoOpHooks(stress),
                                    "tracer": lambda: Tracer(stress), "tracer_timing": lambda: Tracer(stress, **TIMING),
                                    "tracer_norms": lambda: Tracer(stress, grad_norms=True),
                                    "profiler": profiler_context}, srounds)
    scalls = module_calls(stress, sstep)
    # NB: per-call costs of µs on a noisy 2-core machine: minima are steadier than medians here
    per_call = {name: {k: (s[name][f"{k[:-3]}_min_ms"] - s["untraced"][f"{k[:-3]}_min_ms"]) * 1e3 / scalls
                       for k in ("forward_ms", "backward_ms")}
                for name in ("floor", "tracer", "tracer_timing", "tracer_norms", "profiler")}
    out["stress"] = {"module_calls": scalls, **s, "added_us_per_call": per_call}

    # torchinfo runs the forward only, under no_grad, with its own hooks
    import torchinfo
    t = time.perf_counter()
    with torch.no_grad():
        torchinfo.summary(stress, input_data=[x], verbose=0)
    torchinfo_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    with torch.no_grad():
        stress(x)
    plain_ms = (time.perf_counter() - t) * 1e3
    out["stress"]["torchinfo_forward_ms"] = torchinfo_ms
    out["stress"]["plain_no_grad_forward_ms"] = plain_ms
    return out, (model, inputs, report)


def bench_fidelity(model, inputs, report) -> dict:
    """Stage times from the traced pass vs the same forward timed untraced (median of 5 untraced passes)."""
    from tracer.run.strategies import RunOptions, run_strategy
    out = {}
    for name, path in (("audio_tower", report.audio_encoder.path), ("full_forward", "")):
        run = run_strategy(name, model, report, inputs, RunOptions(repeats=5, warmup=1), torch.device("cpu"))
        traced = run.module(path).forward_ms
        untraced = run.latency_ms.median
        spread = (run.latency_ms.max + run.backward_ms.max) / (run.latency_ms.median + run.backward_ms.median)
        out[name] = {"traced_stage_ms": traced, "untraced_forward_ms": untraced,
                     "timed_pass_over_untraced": run.traced_over_untraced, "untraced_max_over_median": spread,
                     "error_pct": 100 * (traced - untraced) / untraced,
                     "self_sum_over_total": sum(m.self_forward_ms for m in run.modules if m.executed)
                     / run.total_forward_ms}
    return out


def bench_memory_pass(model, inputs, report) -> dict:
    """The memory pass (TensorMemory + a Tracer reading it) against a plain fwd+bwd of the same step: what
    it costs on its own. Timed passes never carry it (it is a pass of its own)."""
    from tracer.run.strategies import RunOptions, _memory_pass, make_step
    cpu = torch.device("cpu")
    out = {}
    for name in ("audio_tower", "full_forward"):
        step = make_step(name, model, report, inputs, RunOptions(), cpu)
        plain, memory = [], []
        for _ in range(4):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            step().backward()
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            _memory_pass(step, model, cpu)
            memory.append(time.perf_counter() - t)
        out[name] = {"plain_ms": statistics.median(plain) * 1e3, "memory_pass_ms": statistics.median(memory) * 1e3}
    return out


def bench_callback(steps: int = 10) -> dict:
    """A real Trainer on the built-in model with LoRA: per-step time of untraced steps with TracerCallback
    listing only step 1, against no callback; and the traced step itself. Medians of steps 3..N."""
    import sys as _sys
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tracer.api.callback import TracerCallback
    _sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import tiny_inputs

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append((time.perf_counter() - self._t) * 1e3)

    class Same(torch.utils.data.Dataset):
        def __init__(self, full):
            self.item = {k: v[0] for k, v in full.items()}

        def __len__(self):
            return 1000

        def __getitem__(self, i):
            return dict(self.item)

    out = {}
    for variant in ("no_callback", "callback_step1"):
        loaded, inputs = tiny_inputs()
        model = get_peft_model(loaded.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        timer = StepTimes()
        callbacks = [TracerCallback(steps=(1,)), timer] if variant == "callback_step1" else [timer]
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=1, max_steps=steps, report_to=[],
                                     use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
            Trainer(model=model, args=args, train_dataset=Same(inputs.full), callbacks=callbacks).train()
        out[variant] = {"untraced_step_ms": statistics.median(timer.times[2:]), "first_step_ms": timer.times[0]}
    return out


def memory_child(variant: str) -> None:
    """In a fresh process (so the allocator has no warm cache): one fwd+bwd, its peak RSS growth."""
    model, inputs, _ = medium_model()
    step = lambda: model(**inputs.full).loss  # noqa: E731
    factory = Nothing if variant == "untraced" else (lambda: Tracer(model))
    with PeakMemory(torch.device("cpu")) as mem, factory() as tr:
        step().backward()
    out = {"peak_bytes": mem.peak_bytes}
    if variant == "traced":
        out["record_json_bytes_per_call"] = len(json.dumps(tr.result())) / len(tr.calls())
        out["module_calls"] = len(tr.calls())
    print(json.dumps(out))


def bench_memory() -> dict:
    results = {}
    for variant in ("untraced", "traced"):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", variant], capture_output=True, text=True,
                              check=True, env=dict(os.environ, KINETO_LOG_LEVEL="5"))
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_untraced_bytes": results["untraced"]["peak_bytes"],
            "peak_rss_traced_bytes": results["traced"]["peak_bytes"],
            "record_json_bytes_per_call": results["traced"]["record_json_bytes_per_call"],
            "module_calls": results["traced"]["module_calls"]}


def bench_scale() -> dict:
    from peft import LoraConfig, get_peft_model

    from tracer.static.discovery import static_report
    from tracer.load.model import load_model
    out = {}
    t = time.perf_counter()
    loaded = load_model(config=os.path.join(ROOT, "samples/qwen2-audio-7b.json"), device=torch.device("cpu"),
                        dtype=torch.bfloat16, static_only=True)
    report = static_report(loaded.model)
    out["static_7b_meta_s"] = time.perf_counter() - t
    out["static_7b_modules"] = len(report.tree)
    t = time.perf_counter()
    wrapped = get_peft_model(loaded.model, LoraConfig(r=8, target_modules="all-linear"))
    out["lora_all_linear_attach_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = static_report(wrapped)
    out["static_7b_lora_s"] = time.perf_counter() - t
    out["static_7b_lora_modules"] = len(report.tree)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    helps = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([os.path.join(ROOT, "bin/trace"), "--help"], capture_output=True, check=True, env=env)
        helps.append(time.perf_counter() - t)
    out["help_s"] = statistics.median(helps)
    t = time.perf_counter()
    subprocess.run([os.path.join(ROOT, "bin/trace"), os.path.join(ROOT, "samples/sample.wav"), "--quiet"],
                   capture_output=True, check=True, env=env)
    out["main_job_s"] = time.perf_counter() - t
    return out


def bench_gpu(device: str = "cuda", rounds: int = 12) -> dict | None:
    """The overhead section again on CUDA in bf16: the medium model (fwd+bwd ms per variant) and the stress
    model (added µs per module call against the no-op-hook floor). Each pass is bracketed by synchronise so
    that queued kernels are counted; variants are interleaved as on the CPU. (device="cpu" is a smoke test.)"""
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        return None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class SyncPerHook(NoOpHooks):
        """What a naive tracer does: time.time() around each module, made honest by a synchronise per hook."""

        def __enter__(self):
            self.handles = [m.register_forward_hook(lambda *a: sync()) for m in self.model.modules()]
            return self

    class cuda_profiler(profiler_context):
        activities = ("CPU", "CUDA") if cuda else ("CPU",)

    def synced(step):
        def run():
            sync()
            loss = step()
            sync()
            return loss
        return run

    out = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda:  # what the hot path's CUDA calls cost on their own, µs per call
        def per_call_us(fn, n=2000):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t) / n * 1e6
        out["api_us"] = {
            "memory_allocated()": per_call_us(torch.cuda.memory_allocated),
            "max_memory_allocated()": per_call_us(torch.cuda.max_memory_allocated),
            "memory_stats_as_nested_dict()": per_call_us(torch.cuda.memory_stats_as_nested_dict),
            "reset_peak_memory_stats()": per_call_us(torch.cuda.reset_peak_memory_stats),
            "Event(enable_timing).record()": per_call_us(lambda: torch.cuda.Event(enable_timing=True).record()),
        }
    model, inputs, _ = medium_model()
    model = model.to(device, torch.bfloat16)
    batch = {k: (v.to(device, torch.bfloat16) if v.is_floating_point() else v.to(device)) for k, v in inputs.full.items()}
    step = lambda: model(**batch).loss  # noqa: E731
    variants = {"untraced": Nothing, "floor": lambda: NoOpHooks(model), "tracer": lambda: Tracer(model),
                "tracer_lean": lambda: Tracer(model, grad_norms=False, saved_tensors=False, memory=False),
                "profiler": cuda_profiler, "sync_per_hook": lambda: SyncPerHook(model)}
    medium = interleaved(synced(step), model, variants, rounds=rounds, warmup=3)
    out["medium"] = {"module_calls": module_calls(model, step), **medium}

    stress = stress_model().to(device)
    x = torch.randn(64, 8, device=device, requires_grad=True)
    sstep = lambda: stress(x).square().mean()  # noqa: E731
    s = interleaved(synced(sstep), stress, {"untraced": Nothing, "floor": lambda: NoOpHooks(stress),
                                            "tracer": lambda: Tracer(stress),
                                            "tracer_lean": lambda: Tracer(stress, grad_norms=False, saved_tensors=False,
                                                                          memory=False),
                                            "profiler": cuda_profiler}, rounds=rounds * 3, warmup=3)
    scalls = module_calls(stress, sstep)
    s["added_us_per_call"] = {name: {k: (s[name][f"{k[:-3]}_min_ms"] - s["untraced"][f"{k[:-3]}_min_ms"]) * 1e3 / scalls
                                     for k in ("forward_ms", "backward_ms")}
                              for name in ("floor", "tracer", "tracer_lean", "profiler")}
    out["stress"] = {"module_calls": scalls, **s}
    return out


def render_gpu(g: dict) -> str:
    from tabulate import tabulate
    total = lambda d: d["forward_ms"] + d["backward_ms"]  # noqa: E731
    m = g["medium"]
    base = total(m["untraced"])
    rows = [[f"gpu medium fwd+bwd: {name} / untraced", f"{total(m[name]) / base:.3f}×",
             f"{total(m[name]):.2f} ms" + (f", {m['module_calls']} module calls" if name == "untraced" else "")]
            for name in ("untraced", "floor", "tracer", "tracer_lean", "profiler", "sync_per_hook")]
    tracer_added, profiler_added = total(m["tracer"]) - base, total(m["profiler"]) - base
    rows.append(["gpu medium: profiler overhead / tracer overhead",
                 f"{profiler_added / tracer_added:.1f}×" if tracer_added > 0 else "tracer within noise", ""])
    per = g["stress"]["added_us_per_call"]
    for phase in ("forward_ms", "backward_ms"):
        floor = per["floor"][phase]
        for name in ("tracer", "tracer_lean", "profiler"):
            ratio = f"{per[name][phase] / floor:.2f}×" if floor > 0.05 else "floor within noise"
            rows.append([f"gpu stress {phase.split('_')[0]}: added µs per call, {name} vs floor",
                         f"{per[name][phase]:.2f} vs {floor:.2f} µs = {ratio}", ""])
    for api, us in g.get("api_us", {}).items():
        rows.append([f"gpu api: {api}", f"{us:.1f} µs", "one call on its own"])
    return tabulate(rows, headers=["measure (" + g["device"] + ", bf16)", "result", "context"], tablefmt="github",
                    disable_numparse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test, noisier)")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results.json"))
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the CUDA section (a device check: the CPU sections take minutes)")
    parser.add_argument("--memory-child", choices=("untraced", "traced"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    if args.gpu_only:
        if not torch.cuda.is_available():
            print("error: --gpu-only needs a CUDA device", file=sys.stderr)
            return 2
        gpu = bench_gpu(rounds=8)
        print(render_gpu(gpu))
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "gpu": gpu, "elapsed_s": time.perf_counter() - started}, f, indent=1)
        print(f"\nwrote {args.json}")
        return 0
    overhead, (model, inputs, report) = bench_overhead(args.quick)
    results = {"machine": machine(),
               "overhead": overhead, "fidelity": bench_fidelity(model, inputs, report),
               "memory_pass": bench_memory_pass(model, inputs, report),
               "callback": bench_callback(),
               "memory": bench_memory(), "scale": bench_scale(), "gpu": bench_gpu()}
    results["elapsed_s"] = time.perf_counter() - started
    print(render(results))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")
    return 0


def machine() -> dict:
    facts = {"cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _overhead_ratio(m: dict, total) -> str:
    tracer, profiler = total(m["tracer"]) - total(m["untraced"]), total(m["profiler"]) - total(m["untraced"])
    if tracer <= 0:
        return "both within noise" if profiler <= 0 else f"tracer within noise (profiler +{profiler:.0f} ms)"
    return f"{profiler / tracer:.1f}×"


def render(r: dict) -> str:
    from tabulate import tabulate
    m, s = r["overhead"]["medium"], r["overhead"]["stress"]
    total = lambda d: d["forward_ms"] + d["backward_ms"]  # noqa: E731
    def by_min(name):  # NB: minima over the rounds: what a busy shared machine leaves steadiest
        return m[name]["forward_min_ms"] + m[name]["backward_min_ms"]
    rows = [[f"medium Qwen2-Audio fwd+bwd: {what} / untraced", f"{by_min(name) / by_min('untraced'):.3f}×",
             goal, f"medians {total(m[name]) / total(m['untraced']):.3f}×" + (
                 f"; {m['module_calls']} module calls, {by_min('untraced'):.0f} ms untraced" if name == "tracer" else "")]
            for name, what, goal in (("tracer", "tracer (default)", "≤ 1.03×"),
                                     ("tracer_timing", "tracer, timing only (the report's timed pass)", "≤ 1.03×"),
                                     ("floor", "no-op hooks (floor)", ""), ("profiler", "torch.profiler", ""))]
    rows.append(["medium: profiler overhead / tracer overhead", _overhead_ratio(m, total), "",
                 "how much more the profiler adds (medians)"])
    per = s["added_us_per_call"]
    for phase, goal in (("forward_ms", 1.3), ("backward_ms", 1.6)):
        label = phase.split("_")[0]
        for variant, what, bar in (("tracer", "tracer (default)", f"≤ {goal}×"),
                                   ("tracer_timing", "tracer, timing only", f"≤ {goal}×"),
                                   ("tracer_norms", "tracer, grad_norms=True", ""),
                                   ("profiler", "torch.profiler", "")):
            floor = per["floor"][phase]
            ratio = f"{per[variant][phase] / floor:.2f}×" if floor > 0.05 else "floor within noise"
            rows.append([f"stress {label}: added µs per module call, {what} vs floor",
                         f"{per[variant][phase]:.2f} vs {floor:.2f} µs = {ratio}", bar, ""])
    rows.append(["stress forward: torchinfo.summary / plain no_grad forward",
                 f"{s['torchinfo_forward_ms'] / s['plain_no_grad_forward_ms']:.1f}×", "", "forward only, no backward"])
    for name, f in r["fidelity"].items():
        rows.append([f"report {name}: timed traced pass / untraced fwd+bwd", f"{f['timed_pass_over_untraced']:.3f}×",
                     "within noise", f"untraced passes: max / median {f['untraced_max_over_median']:.3f}×"])
    for name, f in r["fidelity"].items():
        stage = "audio encoder" if name == "audio_tower" else "whole model"
        rows.append([f"fidelity {name}: {stage} time in the traced pass vs untraced forward",
                     f"{f['error_pct']:+.1f} %", "", f"{f['traced_stage_ms']:.0f} vs {f['untraced_forward_ms']:.0f} ms"])
        rows.append([f"fidelity {name}: sum of self times / total forward", f"{f['self_sum_over_total']:.4f}", "1.0",
                     ""])
    for name, m in r.get("memory_pass", {}).items():
        rows.append([f"memory pass {name} / plain fwd+bwd (a pass of its own)",
                     f"{m['memory_pass_ms'] / m['plain_ms']:.2f}×", "",
                     f"{m['memory_pass_ms']:.0f} vs {m['plain_ms']:.0f} ms; timed passes carry none of it"])
    cb = r.get("callback")
    if cb:
        rows.append(["Trainer step not listed, TracerCallback present / absent",
                     f"{cb['callback_step1']['untraced_step_ms'] / cb['no_callback']['untraced_step_ms']:.3f}×",
                     "1.0×", f"{cb['no_callback']['untraced_step_ms']:.0f} ms a step; no hook on such steps"])
        rows.append(["Trainer step 1 traced / untraced (with the callback)",
                     f"{cb['callback_step1']['first_step_ms'] / cb['callback_step1']['untraced_step_ms']:.2f}×", "",
                     "the first step also carries the Trainer's warm-up"])
    mem = r["memory"]
    rows.append(["memory: peak RSS growth traced / untraced",
                 f"{mem['peak_rss_traced_bytes'] / max(mem['peak_rss_untraced_bytes'], 1):.2f}×", "",
                 f"{mem['peak_rss_untraced_bytes'] / 2**20:.0f} MiB untraced"])
    rows.append(["memory: JSON record bytes per module call", f"{mem['record_json_bytes_per_call']:.0f} B", "", ""])
    sc = r["scale"]
    rows.append(["scale: 7B static report on meta (incl. build)", f"{sc['static_7b_meta_s']:.2f} s", "≤ 5 s",
                 f"{sc['static_7b_modules']} modules"])
    rows.append(["scale: 7B + LoRA on every Linear, report", f"{sc['static_7b_lora_s']:.2f} s", "≤ 5 s",
                 f"{sc['static_7b_lora_modules']} modules"])
    rows.append(["scale: bin/trace --help", f"{sc['help_s']:.3f} s", "≤ 0.5 s", ""])
    rows.append(["scale: bin/trace samples/sample.wav end to end", f"{sc['main_job_s']:.1f} s", "≤ 20 s", ""])
    table = tabulate(rows, headers=["measure", "result", "goal", "context"], tablefmt="github", disable_numparse=True)
    return table + ("\n\n" + render_gpu(r["gpu"]) if r["gpu"] else "")


if __name__ == "__main__":
    sys.exit(main())
