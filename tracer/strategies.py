"""Strategies: run one clip through the audio encoder alone and through the whole model, untraced for honest
latency and memory, then once traced for the per-module records; compare the two."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch

from .discovery import StaticReport
from .errors import StrategyFailed, first_line
from .hooks import Tracer
from .memory import PeakMemory
from .naming import new_roots
from .vocab import COMPONENTS, STRATEGIES


@dataclass(frozen=True)
class RunOptions:
    repeats: int = 3
    warmup: int = 1
    loss: str = "pooled_l2"
    progress: bool = False
    keep_calls: bool = False  # per-call records, for the Chrome trace


def tower_loss(hidden: torch.Tensor, valid_tokens: int | None, loss: str) -> torch.Tensor:
    """The audio_tower surrogate loss on the encoder output pooled over the clip's own frames.

    ``pooled_l2``: squared L2 norm of the time-mean (every weight gets a gradient);
    ``pooled_mean``: the plain mean (tiny, uniform gradients). Padding frames are left out.
    """
    frames = hidden[:, :valid_tokens] if valid_tokens else hidden
    pooled = frames.float().mean(dim=1)
    return pooled.square().sum() if loss == "pooled_l2" else pooled.mean()


def _move(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_step(name: str, model, report: StaticReport, inputs, options: RunOptions, device):
    """A callable returning the loss for one pass of the strategy (forward only; the caller runs backward)."""
    if name == "audio_tower":
        encoder = dict(model.named_modules())[report.audio_encoder.path]
        batch = _move(inputs.tower, device)
        tokens = inputs.accounting.audio_tokens
        return lambda: tower_loss(encoder(**batch).last_hidden_state, tokens, options.loss)
    batch = _move(inputs.full, device)
    return lambda: model(**batch).loss


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def _timed_pass(step, model, device) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    loss = step()
    _sync(device)
    t1 = time.perf_counter()
    if loss.requires_grad:  # NB: nothing trainable in what ran (e.g. LoRA only in the LM) means no backward
        loss.backward()
    _sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def run_strategy(name: str, model, report: StaticReport, inputs, options: RunOptions, device) -> dict:
    """One strategy's RUN record. An error in a pass raises StrategyFailed (the model's exception is its
    ``__cause__``); KeyboardInterrupt passes through."""
    step = make_step(name, model, report, inputs, options, device)
    forward, backward = [], []
    try:
        for _ in range(options.warmup):
            _timed_pass(step, model, device)
        for _ in _progress(range(options.repeats), f"{name} untraced", options.progress):
            f, b = _timed_pass(step, model, device)
            forward.append(f)
            backward.append(b)
        # NB: memory gets a pass of its own: on CPU the RSS sampler thread would slow the timed passes.
        # The last pass's gradients are freed first, or the baseline counts them and the peak looks tiny.
        model.zero_grad(set_to_none=True)
        with PeakMemory(device) as memory:
            _timed_pass(step, model, device)
        memory_by_call = _cuda_memory_pass(step, model, device)
    except Exception as e:
        raise StrategyFailed(e, _locate_failure(step, model, report)) from e
    model.zero_grad(set_to_none=True)
    tracer = Tracer(model, component_of=report.component_of, memory=False)
    try:
        with tracer:
            t0 = time.perf_counter()
            loss = step()
            if loss.requires_grad:
                loss.backward()
            _sync(device)
            traced_ms = (time.perf_counter() - t0) * 1e3
    except Exception as e:
        raise StrategyFailed(e, tracer.failed_in) from e  # the last module that ran, for the report
    record = tracer.result()
    calls = _with_memory(tracer.calls(), memory_by_call)
    _merge_module_memory(record["modules"], calls)
    if options.keep_calls:
        record["calls"] = [asdict(c) for c in calls]
    untraced_ms = statistics.median(forward) + statistics.median(backward)
    stages = stage_rollup(record["modules"], report, model)
    executed = [m for m in record["modules"] if m["executed"]]
    return {
        "status": "ok",
        "loss": float(loss.detach()),
        "note": None if loss.requires_grad else "no backward: nothing this strategy runs requires grad",
        "loss_kind": options.loss if name == "audio_tower" else "lm (labels on the target tokens)",
        "latency_ms": _stats(forward),
        "backward_ms": _stats(backward),
        "peak_memory_bytes": memory.peak_bytes,
        "memory_kind": memory.kind,
        "traced_ms": traced_ms,
        "traced_over_untraced": traced_ms / untraced_ms if untraced_ms > 0 else None,
        "modules_executed": len(executed),
        "modules_registered": len(record["modules"]),
        "params_executed": sum(s["params"] for s in stages.values()),
        "stages": stages,
        **record,
    }


def _cuda_memory_pass(step, model, device) -> dict:
    """Per-call allocator bytes from a traced pass of its own, on CUDA: reading the allocator around every
    call costs far more than the call itself on a GPU, so the timed traced pass leaves it out. Keyed by
    (path, call index, recompute)."""
    if device.type != "cuda":
        return {}
    model.zero_grad(set_to_none=True)
    with Tracer(model, grad_norms=False, saved_tensors=False) as tracer:
        loss = step()
        if loss.requires_grad:
            loss.backward()
    return {(c.path, c.call_index, c.recompute): (c.memory_delta_bytes, c.peak_bytes) for c in tracer.calls()}


def _with_memory(calls: list, memory_by_call: dict) -> list:
    if not memory_by_call:
        return calls
    return [replace(c, memory_delta_bytes=m[0], peak_bytes=m[1]) if (m := memory_by_call.get(
        (c.path, c.call_index, c.recompute))) else c for c in calls]


def _merge_module_memory(modules: list[dict], calls: list) -> None:
    """Module rows take their memory from the calls: the first call's delta, the largest peak."""
    per_path: dict = {}
    for c in calls:
        per_path.setdefault(c.path, []).append(c)
    for row in modules:
        cs = per_path.get(row["path"])
        if not cs or row["memory_delta_bytes"] is not None:
            continue
        first = next((c for c in cs if not c.recompute), cs[0])
        row["memory_delta_bytes"] = first.memory_delta_bytes
        row["peak_bytes"] = max((c.peak_bytes for c in cs if c.peak_bytes is not None), default=None)


def _locate_failure(step, model, report) -> str | None:
    """Rerun the failing pass traced to name the innermost module the error came through."""
    tracer = Tracer(model, grad_norms=False, saved_tensors=False, component_of=report.component_of)
    try:
        with tracer:
            loss = step()
            if loss.requires_grad:
                loss.backward()
    except Exception:  # noqa: BLE001 - the same failure again is what we want to see
        pass
    finally:
        model.zero_grad(set_to_none=True)
    return tracer.failed_in


def stage_rollup(modules: list[dict], report: StaticReport, model) -> dict:
    """Per component: self forward time, the component roots' backward time, bytes, params executed."""
    own_params = {path: sum(p.numel() for p in m.parameters(recurse=False)) for path, m in model.named_modules()}
    stages = {c: {"forward_ms": 0.0, "backward_ms": None, "saved_bytes": 0, "output_bytes": 0, "params": 0,
                  "modules_executed": 0} for c in COMPONENTS}
    component = report.component_of
    for m in modules:
        if not m["executed"]:
            continue
        stage = stages[component.get(m["path"], "other")]
        stage["forward_ms"] += m["self_forward_ms"]
        stage["saved_bytes"] += m["saved_bytes"]
        stage["params"] += own_params.get(m["path"], 0)
        stage["modules_executed"] += 1
        parent = m["path"].rpartition(".")[0] if m["path"] else None
        is_root = parent is None or component.get(parent) != component.get(m["path"])
        if is_root and m["backward_ms"] is not None and component.get(m["path"]) != "other":
            stage["backward_ms"] = (stage["backward_ms"] or 0.0) + m["backward_ms"]
        if is_root:
            stage["output_bytes"] += m["output_bytes"]
    return stages


def run_strategies(model, report: StaticReport, inputs, options: RunOptions, device,
                   which: str = "both") -> dict:
    """Both strategies (or one), each isolated: a failure in one is recorded and the other still runs."""
    names = STRATEGIES if which == "both" else (which,)
    runs = {}
    for name in names:
        if name == "audio_tower" and report.audio_encoder is None:
            runs[name] = {"status": "not_applicable",
                          "reason": "no audio encoder in the module tree (see step 3): nothing to run alone"}
            continue
        if name == "full_forward" and inputs.full is None:
            runs[name] = {"status": "not_applicable", "reason": "the processor builds no text input for this model"}
            continue
        try:
            runs[name] = run_strategy(name, model, report, inputs, options, device)
        except StrategyFailed as e:  # OOM and model errors become this strategy's row
            runs[name] = {"status": "failed", "reason": str(e), "failed_in": e.failed_in}
        except Exception as e:  # noqa: BLE001 - outside the passes (building the step, the roll-ups)
            runs[name] = {"status": "failed", "reason": f"{type(e).__name__}: {first_line(e)}", "failed_in": None}
        finally:
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return runs


def compare(runs: dict, report: StaticReport) -> dict:
    """full_forward / audio_tower ratios, and what only full_forward runs (collapsed to component roots)."""
    tower, full = runs.get("audio_tower", {}), runs.get("full_forward", {})
    if tower.get("status") != "ok" or full.get("status") != "ok":
        return {"latency_ratio_full_over_tower": None, "only_in_full_forward": []}
    executed = {name: {m["path"] for m in run["modules"] if m["executed"]} for name, run in
                (("audio_tower", tower), ("full_forward", full))}
    roots, layers = new_roots(executed["full_forward"], executed["audio_tower"])

    def ratio(key, sub="median"):
        a, b = tower[key][sub] if sub else tower[key], full[key][sub] if sub else full[key]
        return b / a if a else None

    return {
        "latency_ratio_full_over_tower": ratio("latency_ms"),
        "backward_ratio_full_over_tower": ratio("backward_ms"),
        "memory_ratio_full_over_tower": ratio("peak_memory_bytes", None),
        "params_ratio_full_over_tower": ratio("params_executed", None),
        "only_in_full_forward": roots,
        "only_in_full_forward_layers": layers,
        "only_in_audio_tower": sorted(executed["audio_tower"] - executed["full_forward"]),
    }


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=None)
