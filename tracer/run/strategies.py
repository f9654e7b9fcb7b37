"""Strategies: run one clip through the audio encoder alone and through the whole model, untraced for honest
latency and memory, then once traced for the per-module records; compare the two."""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from ..diagnose.lora_status import lora_layers
from ..static.discovery import StaticReport
from ..errors import StrategyFailed, first_line
from ..api.tracer import Tracer
from ..inputs.common import encoder_hidden
from ..collect.peak_memory import PeakMemory
from ..module_paths import new_roots
from ..load.quantization import values
from .options import RunOptions  # noqa: F401 - re-exported: run_strategy(…, RunOptions(…))
from ..records.diagnosis import LayerKey
from ..records.run import Comparison, RunRecord, StageRecord, Timing
from ..diagnose.judge import judged
from ..rollup.calls import run_facts
from ..rollup.stages import stage_times
from ..collect.tensor_memory import TensorMemory
from ..records.vocab import COMPONENTS, RUN_FAILED, RUN_NOT_APPLICABLE, RUN_OK, STRATEGIES


def tower_loss(hidden: torch.Tensor, valid_tokens: int | None, loss: str) -> torch.Tensor:
    """The audio_tower surrogate loss on the encoder output pooled over the clip's own frames.

    ``pooled_l2``: squared L2 norm of the time-mean (every weight gets a gradient);
    ``pooled_mean``: the plain mean (tiny, uniform gradients). Padding frames are left out; an encoder that
    packs the clip's frames alone without a batch axis (Qwen2.5-Omni: tokens x width) has none.
    """
    if hidden.dim() == 2:
        hidden, valid_tokens = hidden.unsqueeze(0), None
    frames = hidden[:, :valid_tokens] if valid_tokens else hidden
    pooled = frames.float().mean(dim=1)
    return pooled.square().sum() if loss == "pooled_l2" else pooled.mean()


def _move(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_step(name: str, model, report: StaticReport, inputs, options: RunOptions, device):
    """A callable returning the loss for one pass of the strategy (forward only; the caller runs backward)."""
    if name == "audio_tower":
        encoder = _runner(dict(model.named_modules())[report.audio_encoder.path], options)
        batch = _move(inputs.tower, device)
        frames = inputs.tower_frames if inputs.tower_frames is not None else inputs.accounting.audio_tokens
        return lambda: tower_loss(encoder_hidden(encoder(**batch)), frames, options.loss)
    batch = _move(inputs.full, device)
    runner = _runner(model, options)
    return lambda: runner(**batch).loss


def _runner(module, options: RunOptions):
    """What a strategy calls: the module, or under DDP the module wrapped, so every backward all-reduces the
    gradients as in the user's job (the Tracer's hooks sit on the modules inside). Unused parameters are
    expected: a LoRA layer outside what the strategy runs gets no gradient."""
    if options.parallel != "ddp" or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, find_unused_parameters=True)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: list[float]) -> Timing:
    return Timing(statistics.median(values), min(values), max(values), len(values))


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


def run_strategy(name: str, model, report: StaticReport, inputs, options: RunOptions, device) -> RunRecord:
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
        memory = _memory_pass(step, model, device)
    except Exception as e:
        raise StrategyFailed(e, _locate_failure(step, model, report)) from e
    facts, traced_ms, loss, trajectory = _traced_steps(step, model, report, options, device, memory.weights_saved)
    calls = _with_memory(facts.calls, memory.by_call)
    modules = _with_module_memory(facts.modules, calls, memory.grad_output_norms)
    untraced_ms = statistics.median(forward) + statistics.median(backward)
    stages = stage_rollup(modules, report, model)
    return RunRecord(
        status=RUN_OK,
        loss=float(loss.detach()),
        note=None if loss.requires_grad else "no backward: nothing this strategy runs requires grad",
        loss_kind=options.loss if name == "audio_tower" else "lm (labels on the target tokens)",
        latency_ms=_stats(forward),
        backward_ms=_stats(backward),
        peak_memory_bytes=memory.peak_bytes,
        memory_kind=memory.kind,
        memory_split=memory.split,
        traced_ms=traced_ms,
        traced_over_untraced=traced_ms / untraced_ms if untraced_ms > 0 else None,
        modules_executed=sum(1 for m in modules if m.executed),
        modules_registered=len(modules),
        params_executed=sum(s.params for s in stages.values()),
        stages=stages, modules=modules, never_called=facts.never_called,
        total_forward_ms=facts.total_forward_ms, total_backward_ms=facts.total_backward_ms, clock=facts.clock,
        failed_in=facts.failed_in, lora=facts.lora, lora_summary=facts.lora_summary,
        lora_trajectory=trajectory, saved_modules=facts.saved_modules, notes=facts.notes, labels=facts.labels,
        calls=calls if options.keep_calls else None,
        origin_unix_ns=facts.origin_unix_ns)


def _traced_steps(step, model, report, options: RunOptions, device, weights_saved: frozenset = frozenset()):
    """The traced pass, or with LoRA layers and ``options.steps`` N real AdamW steps on the same batch, each
    traced (the diagnosis is the last step's). The LoRA weights are put back afterwards, so the other
    strategy (and the caller) start from the same adapter. Returns (facts, traced ms, loss, trajectory).

    These passes are timed: they carry the timing hooks only. What autograd saves (``weights_saved``, the
    LoRA layers whose base weight it kept: a fused loss) and the output-gradient norms come from the memory
    pass."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    stepping = options.steps > 0 and bool(trainable) and bool(lora_layers(model))
    optimizer = torch.optim.AdamW(trainable.values(), lr=options.lr) if stepping else None
    initial = {n: p.detach().clone() for n, p in trainable.items()} if stepping else {}
    trajectory: dict = {}
    try:
        for index in range(options.steps if stepping else 1):
            model.zero_grad(set_to_none=True)
            tracer = Tracer(model, component_of=report.component_of, memory=False, optimizer=optimizer,
                            grad_norms=False, saved_tensors=False)
            try:
                with tracer:
                    t0 = time.perf_counter()
                    loss = step()
                    if loss.requires_grad:
                        loss.backward()
                    _sync(device)
                    traced_ms = (time.perf_counter() - t0) * 1e3  # NB: forward + backward, as the untraced passes
                    if optimizer is not None:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            except Exception as e:
                raise StrategyFailed(e, tracer.failed_in) from e  # the last module that ran, for the report
            collected = replace(tracer.collected(), weights_saved=weights_saved)
            facts = judged(run_facts(collected), collected, model, report.component_of)
            for r in facts.lora or () if stepping else ():
                trajectory.setdefault(LayerKey(r.path, r.adapter), []).append(
                    {"step": index + 1, "grad_norm_A": r.grad_norm_A, "grad_norm_B": r.grad_norm_B,
                     "update_ratio_A": r.update_ratio_A, "update_ratio_B": r.update_ratio_B})
    finally:
        with torch.no_grad():
            for name, value in initial.items():
                trainable[name].copy_(value)
    return facts, traced_ms, loss, (trajectory or None)


@dataclass(frozen=True)
class _Memory:
    peak_bytes: int
    kind: str
    split: dict  # parameters, and at the peak: activations, gradients, temporaries
    by_call: dict  # (path, call index, recompute) -> {memory_delta_bytes, peak_bytes, saved_bytes}
    grad_output_norms: dict  # module path -> the norm of its output gradient (None: no gradient arrived)
    weights_saved: frozenset  # LoRA layers whose base weight autograd saved (collected.Collected)


def _memory_pass(step, model, device) -> _Memory:
    """Memory gets a traced pass of its own: following every storage (and, on CUDA, asking the allocator
    around every call) costs more than the timed passes may carry. On CUDA the peak is the allocator's; on
    CPU, live tensor bytes. The split comes from the tensors either way. The facts that cost per tensor
    (saved-for-backward bytes, output-gradient norms) are taken here too, off the timed passes."""
    model.zero_grad(set_to_none=True)  # or the baseline counts the last pass's gradients and the peak looks tiny
    tensors = TensorMemory(device, model)
    allocator = PeakMemory(device) if device.type == "cuda" else nullcontext()
    source = None if device.type == "cuda" else tensors  # on CUDA the Tracer asks the allocator
    with allocator, tensors, Tracer(model, grad_norms=True, saved_tensors=True, memory_source=source) as tracer:
        loss = step()
        if loss.requires_grad:
            loss.backward()
    calls = tracer.calls()
    by_call = {(c.path, c.call_index, c.recompute): {"memory_delta_bytes": c.memory_delta_bytes,
                                                       "peak_bytes": c.peak_bytes, "saved_bytes": c.saved_bytes}
               for c in calls}
    norms = {m.path: m.grad_output_norm for m in tracer.modules(calls)}
    split = {"parameters": tensors.parameters, **tensors.peak_by_kind}
    weights_saved = tracer.collected().weights_saved
    if device.type == "cuda":
        return _Memory(allocator.peak_bytes, allocator.kind, split, by_call, norms, weights_saved)
    return _Memory(tensors.peak, "live tensor bytes", split, by_call, norms, weights_saved)


def _with_memory(calls: tuple, memory_by_call: dict) -> tuple:
    """Each call with its fields from the memory pass (memory, saved bytes), matched by path, index, replay."""
    if not memory_by_call:
        return calls
    return tuple(replace(c, **m) if (m := memory_by_call.get((c.path, c.call_index, c.recompute))) else c
                 for c in calls)


def _with_module_memory(modules: tuple, calls: tuple, grad_output_norms: dict | None = None) -> tuple:
    """Module records take their memory from the calls (when they have none): the first call's delta, the
    largest peak; their saved bytes, every call's (replays too); their output-gradient norm from the memory
    pass (``grad_output_norms``, by path) when given."""
    per_path: dict = {}
    for c in calls:
        per_path.setdefault(c.path, []).append(c)
    out = []
    for m in modules:
        cs = per_path.get(m.path)
        if cs and m.memory_delta_bytes is None:
            first = next((c for c in cs if not c.recompute), cs[0])
            m = replace(m, memory_delta_bytes=first.memory_delta_bytes,
                        peak_bytes=max((c.peak_bytes for c in cs if c.peak_bytes is not None), default=None))
        if cs:
            m = replace(m, saved_bytes=sum(c.saved_bytes for c in cs))
        if grad_output_norms is not None:
            m = replace(m, grad_output_norm=grad_output_norms.get(m.path))
        out.append(m)
    return tuple(out)


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


def stage_rollup(modules, report: StaticReport, model) -> dict:
    """Per component: own forward and backward time (stages.stage_times, the rule the ranks' view uses
    too), bytes saved for backward, the component roots' output bytes, params executed."""
    own_params = {path: sum(map(values, m.parameters(recurse=False))) for path, m in model.named_modules()}
    stages = {c: {"forward_ms": 0.0, "backward_ms": None, "saved_bytes": 0, "output_bytes": 0, "params": 0,
                  "modules_executed": 0} for c in COMPONENTS}
    component = report.component_of
    for name, times in stage_times(modules, component).items():
        stages[name].update(times)
    for m in modules:
        if not m.executed:
            continue
        stage = stages[component.get(m.path, "other")]
        stage["saved_bytes"] += m.saved_bytes
        stage["params"] += own_params.get(m.path, 0)
        stage["modules_executed"] += 1
        parent = m.path.rpartition(".")[0] if m.path else None
        if parent is None or component.get(parent) != component.get(m.path):
            stage["output_bytes"] += m.output_bytes
    return {c: StageRecord(**values) for c, values in stages.items()}


def run_strategies(model, report: StaticReport, inputs, options: RunOptions, device,
                   which: str = "both") -> dict:
    """Both strategies (or one), each isolated: a failure in one is recorded and the other still runs."""
    names = STRATEGIES if which == "both" else (which,)
    runs = {}
    for name in names:
        if name == "audio_tower" and report.audio_encoder is None:
            why = (f"the audio enters through the codec at {report.audio_codec} as discrete codes (see step 3): "
                   "no encoder to run alone" if report.audio_codec else
                   "no audio encoder in the module tree (see step 3): nothing to run alone")
            runs[name] = RunRecord(RUN_NOT_APPLICABLE, reason=why)
            continue
        if name == "full_forward" and inputs.full is None:
            runs[name] = RunRecord(RUN_NOT_APPLICABLE, reason=inputs.no_full_reason)
            continue
        try:
            runs[name] = run_strategy(name, model, report, inputs, options, device)
        except StrategyFailed as e:  # OOM and model errors become this strategy's row
            runs[name] = RunRecord(RUN_FAILED, reason=str(e), failed_in=e.failed_in)
        except Exception as e:  # noqa: BLE001 - outside the passes (building the step, the roll-ups)
            runs[name] = RunRecord(RUN_FAILED, reason=f"{type(e).__name__}: {first_line(e)}")
        finally:
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return runs


def compare(runs: dict, report: StaticReport) -> Comparison:
    """full_forward / audio_tower ratios, and what only full_forward runs (collapsed to component roots)."""
    tower, full = runs.get("audio_tower"), runs.get("full_forward")
    if tower is None or full is None or not tower.ok or not full.ok:
        return Comparison()
    roots, layers = new_roots(full.executed_paths(), tower.executed_paths())

    def ratio(a, b):
        return b / a if a else None

    return Comparison(
        complete=True,
        latency_ratio_full_over_tower=ratio(tower.latency_ms.median, full.latency_ms.median),
        backward_ratio_full_over_tower=ratio(tower.backward_ms.median, full.backward_ms.median),
        memory_ratio_full_over_tower=ratio(tower.peak_memory_bytes, full.peak_memory_bytes),
        params_ratio_full_over_tower=ratio(tower.params_executed, full.params_executed),
        only_in_full_forward=tuple(roots), only_in_full_forward_layers=tuple(layers),
        only_in_audio_tower=tuple(sorted(tower.executed_paths() - full.executed_paths())))


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, disable=None)
