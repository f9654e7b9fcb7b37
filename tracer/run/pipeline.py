"""``trace_clip()``: what ``bin/trace CLIP`` does, as one library call that returns the whole report.

Load (or take) a model, the static report, the clip, LoRA, both strategies, the LoRA diagnosis and the
confirmation. Nothing here prints or writes a file: an ``observer`` hears each part as it is ready (the CLI
renders it then, so a long job shows its static report before the runs), and ``TraceReport.to_dict()`` is
exactly the JSON that ``--json`` writes. Imports nothing heavy until called.
"""
from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable

from ..errors import TracerError, first_line
from ..records.run import LoraDiagnosis
from ..records.schema import SCHEMA_VERSION
from .observer import Observer, Observing, as_observer  # noqa: F401 - Observer re-exported
from .options import TraceOptions
from ..records.vocab import RUN_FAILED, RUN_NOT_APPLICABLE, STRATEGIES

BUILTIN_BANNER = ("built-in tiny Qwen2-Audio with RANDOM weights (structure and costs are real, outputs are "
                  "noise); pass --model DIR_OR_HUB_ID for a real checkpoint, or --model whisper-tiny.en for a "
                  "pretrained one offline")


@dataclass(frozen=True)
class TraceReport:
    """What one trace found; ``to_dict()`` is the ``--json`` record (schema v1). The observer sees it part
    by part: each event gets the report as it stands then."""
    model_name: str
    source: str  # builtin | named | dir | hub | config | object
    model_info: dict
    static: Any  # records.static.StaticReport of the model as loaded
    model: Any = None  # the model that ran (PEFT-wrapped when LoRA was attached)
    notes: tuple = ()
    clip: Any = None  # audio.Clip
    inputs: Any = None  # inputs.ModelInputs
    run_static: Any = None  # the static report of the model that ran (PEFT paths)
    lora_setup: Any = None  # records.LoraSetup
    runs: dict = field(default_factory=dict)  # strategy -> records.RunRecord
    comparison: Any = None  # records.Comparison
    verdicts: tuple = ()  # confirmation.Verdict, refuted first
    lora_diagnosis: Any = None  # records.LoraDiagnosis
    clip_error: str | None = None  # with static_only: why the clip's inputs could not be prepared
    distributed: dict | None = None  # under torchrun: rank, world size, backend, and on rank 0 each
    #   strategy's ranks merged (Tracer.merged(): per module and stage the slowest rank and the skew)

    @property
    def failed(self) -> bool:
        return any(r.status == RUN_FAILED for r in self.runs.values())

    def clip_record(self):  # records.ClipRecord | None
        from ..render.static import clip_record
        return None if self.clip is None else clip_record(self.clip.info, self.inputs)

    def to_dict(self) -> dict:
        payload = {"schema_version": SCHEMA_VERSION, "model": self.model_info, "static": self.static.to_dict()}
        if self.clip is not None:
            payload["clip"] = self.clip_record().to_dict()
        if self.clip_error is not None:
            payload["clip_error"] = self.clip_error
        if self.distributed is not None:
            payload["distributed"] = self.distributed
        if self.notes:  # what the tool decided for the user (a substitute processor, a device fallback)
            payload["notes"] = list(self.notes)
        if self.comparison is not None:
            payload["runs"] = {n: r.to_dict() for n, r in self.runs.items()}  # calls: Chrome trace only
            payload["comparison"] = self.comparison.to_dict()
            payload["confirmation"] = [v.to_dict() for v in self.verdicts]
        if self.lora_setup is not None:
            payload["lora_setup"] = self.lora_setup.to_dict()
            if self.lora_diagnosis is not None:
                payload["lora_diagnosis"] = self.lora_diagnosis.to_dict()
        return payload


class _Draft:
    """The report while the trace makes it: the pipeline fills it, the observer and the caller get frozen
    TraceReports of it."""

    def __init__(self, **values):
        self.__dict__.update({f.name: f.default if f.default is not MISSING else f.default_factory()
                              for f in fields(TraceReport) if f.name not in values}, **values)
        self.notes, self.verdicts = list(self.notes), list(self.verdicts)

    def freeze(self) -> TraceReport:
        values = {f.name: getattr(self, f.name) for f in fields(TraceReport)}
        values.update(notes=tuple(self.notes), verdicts=tuple(self.verdicts), runs=dict(self.runs))
        return TraceReport(**values)


def trace_clip(clip: str | None = None, model: Any = None, *, config: str | None = None,
               options: TraceOptions | None = None, processor: Any = None,
               observer: Observing | Callable | None = None) -> TraceReport:
    """Trace ``model`` on ``clip`` as ``bin/trace`` does and return the report.

    Args:
        clip: an audio file; None takes the shipped clip (or none with ``options.static_only``).
        model: None (the built-in tiny Qwen2-Audio), a checkpoint directory or cached hub id, or a model
            object (with ``processor``, or the built-in processor is used).
        config: build a random-weight model from a config.json instead (exclusive with ``model``).
        options: TraceOptions (defaults as the CLI's).
        observer: hears each part as it is ready: an ``Observer`` (run/observer.py: ``on_static(report)``,
            ``on_run(report, strategy)``, …), or a callable ``observer(event, report, detail)`` with the events
            "progress", "note" (the text), "static", "clip", "lora", "run" (the strategy's name), "done".

    Raises TracerError (one line) on bad input; a failing strategy is recorded in ``report.runs``.
    """
    options = options or TraceOptions()
    options.validate()
    with warnings.catch_warnings():  # NB: scoped: the process-wide filters are the caller's
        # peft 0.21 calls a transformers API that 5.x deprecated: noise for our users, not theirs to fix
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _trace(clip, model, config, options, processor, as_observer(observer))


def _trace(clip, model, config, options: TraceOptions, processor, observe: Observing) -> TraceReport:
    from ..static.discovery import static_report
    from ..load.model import input_device, resolve_device, resolve_dtype
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if clip is not None:  # a header read: a file that is no audio fails before the model loads
        from ..load.audio import probe_clip
        probe_clip(clip, options.offset, options.duration)
    loaded = _load(model, config, processor, options, device, dtype, observe)
    if options.device_map:
        device = input_device(loaded.model, device)
    report = static_report(loaded.model)
    trace = _Draft(model_name=loaded.name, source=loaded.source, model_info={
        "name": loaded.name, "class": report.model_class, "module": report.model_module,
        "dtype": str(dtype).replace("torch.", ""), "device": "meta" if loaded.on_meta else str(device),
        "params_total": report.params_total, "params_trainable": report.params_trainable}, static=report,
        model=loaded.model)
    if loaded.source == "builtin":
        _note(trace, observe, BUILTIN_BANNER)
    elif loaded.source == "named":
        from ..load.named import banner
        _note(trace, observe, banner(loaded.directory))
    observe.on_static(trace.freeze())
    if clip is None and not options.static_only:
        from ..load.assets import BUILTIN_CLIP
        clip = str(BUILTIN_CLIP)
    if clip is not None:
        audio, inputs = _load_inputs(clip, loaded, report, options, trace, observe)
        if inputs is not None:
            trace.clip, trace.inputs = audio, inputs
        observe.on_clip(trace.freeze())
    if not options.static_only:
        _run(trace, loaded, options, device, observe)
    final = trace.freeze()
    observe.on_done(final)
    return final


def _load(model, config, processor, options: TraceOptions, device, dtype, observe: Observing):
    from ..load.model import LoadedModel, load_model
    if model is not None and not isinstance(model, str):
        if config is not None:
            raise TracerError("model and config exclude each other: config builds a model from a config file alone")
        from ..load.processors import processor_parts
        on_meta = any(p.device.type == "meta" for p in model.parameters())
        return LoadedModel(model, processor_parts(processor, "the processor given"), type(model).__name__, "object",
                           on_meta)
    return load_model(model, config, device=device, dtype=dtype, static_only=options.static_only,
                      trust_remote_code=options.trust_remote_code, allow_pickle=options.allow_pickle,
                      device_map=options.device_map, progress=observe.on_progress)


def _note(trace: _Draft, observe: Observing, text: str) -> None:
    trace.notes.append(text)
    observe.on_note(trace.freeze(), text)


def _load_inputs(clip: str, loaded, report, options: TraceOptions, trace: _Draft, observe: Observing):
    from ..load.audio import load_clip
    from ..inputs.families import family_of, prepare_inputs, processor_from_parts
    from ..inputs.common import DEFAULT_PROMPT, DEFAULT_TARGET, feature_extractor_of, prepare_text_inputs
    from ..load.processors import processor_for
    prompt, target = options.prompt or DEFAULT_PROMPT, options.target or DEFAULT_TARGET
    if loaded.processor_error is not None:  # with static_only: the structure stands without it
        trace.clip_error = loaded.processor_error
        return None, None
    if report.audio_encoder is None and report.audio_codec is None:
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        if tokenizer is None or not callable(tokenizer):
            raise TracerError(f"{loaded.name}: not an audio model (no audio encoder in step 3) and no tokenizer "
                              "to run its text path: nothing to run on the clip; add --static-only for its structure")
        _note(trace, observe, "no audio encoder: the clip is read for the record, full_forward runs on the text alone")
        audio = load_clip(clip, 16000, offset=options.offset, duration=options.duration)
        return audio, _prepared(lambda: prepare_text_inputs(tokenizer, prompt, target), trace, options)
    family = family_of(loaded.model)  # once for the clip: the processor, the join and the inputs all follow it
    if report.audio_encoder is None and not family.takes_codec:
        why = (f"its audio enters through the codec at {report.audio_codec} as discrete codes in the LM's input, "
               "and no family entry says how to build them (step 3 has its structure)")
        if options.static_only:
            trace.clip_error = why
            return None, None
        raise TracerError(f"{loaded.name}: {why}: add --static-only")
    # a codec front end (Kyutai) takes the encoder's place: its family encodes the clip with it
    encoder = dict(loaded.model.named_modules())[report.audio_encoder.path if report.audio_encoder
                                                 else report.audio_codec]

    def resolve():
        processor, note = processor_for(loaded, encoder, family)
        processor, joined = processor_from_parts(processor, loaded.model, family)
        if note or joined:
            _note(trace, observe, (note or "") + joined)
        return processor, feature_extractor_of(processor).sampling_rate

    resolved = _prepared(resolve, trace, options)
    if resolved is None:  # with static_only: clip_error says why
        return None, None
    processor, rate = resolved
    fe = feature_extractor_of(processor)
    audio = load_clip(clip, rate, max_seconds=float(getattr(fe, "chunk_length", None) or 30),
                      offset=options.offset, duration=options.duration)
    return audio, _prepared(lambda: prepare_inputs(processor, loaded.model, encoder, audio, prompt=prompt,
                                                   target=target, family=family), trace, options)


def _prepared(prepare, trace: _Draft, options: TraceOptions):
    """What ``prepare`` makes of the processor: the model's inputs for a clip that was read fine (or the
    processor itself). With static_only a processor that fails is recorded, not raised: the structure is
    still worth its report and its JSON. Bad input (TracerError: a clip too short for one encoder frame, a
    --target too long) is refused as always."""
    try:
        return prepare()
    except TracerError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the processor raises
        if not options.static_only:
            raise
        trace.clip_error = f"{type(e).__name__}: {first_line(e)}"
        return None


def _run(trace: _Draft, loaded, options: TraceOptions, device, observe: Observing) -> None:
    """LoRA on, both strategies, the ranks merged, then the judgement: each a function of its own."""
    from ..collect.sharding import rank_info
    if loaded.on_meta:
        raise TracerError("a model on the meta device has no weights to run: add --static-only")
    info = rank_info()
    parallel = (options.parallel or "ddp") if info is not None and info["world_size"] > 1 else None
    _attach(trace, loaded.model, options, parallel, observe)
    run_options = replace(options, parallel=parallel)  # NB: the options object is its runs' options too
    _run_strategies(trace, run_options, device, observe)
    if parallel is not None:
        _merge_ranks(trace, info, parallel)
    _judge(trace, options)


def _attach(trace: _Draft, model, options: TraceOptions, parallel: str | None, observe: Observing) -> None:
    """LoRA with peft (rank 0's adapter on every rank), FSDP2 sharding; the static report the runs use."""
    from ..static.discovery import static_report
    run_report = trace.static
    if options.lora:
        from ..lora.attach import attach_lora
        model, trace.lora_setup = attach_lora(model, trace.static, targets=options.lora_targets, r=options.lora_r,
                                              config_file=options.lora_config, adapter_dir=options.adapter)
        if parallel is not None:  # rank 0's adapter on every rank, as DDP would make it (FSDP2 shards it as is)
            from .parallel import broadcast_trainable
            broadcast_trainable(model)
        run_report = static_report(model)  # paths now carry PEFT's base_model.model. prefix
        observe.on_lora(trace.freeze())
    if parallel == "fsdp":
        from .parallel import shard
        shard(model, run_report)
    trace.model, trace.run_static = model, run_report


def _run_strategies(trace: _Draft, options: TraceOptions, device, observe: Observing) -> None:
    from .strategies import run_strategies
    names = STRATEGIES if options.strategy == "both" else (options.strategy,)
    for name in names:
        trace.runs.update(run_strategies(trace.model, trace.run_static, trace.inputs, options, device, which=name))
        observe.on_run(trace.freeze(), name)


def _merge_ranks(trace: _Draft, info: dict, parallel: str) -> None:
    from ..rollup.ranks import merge
    # NB: a collective per strategy, in the same order on every rank, whether or not its run succeeded
    merged = {name: merge(run.to_dict() if run.ok else None, trace.run_static.component_of)
              for name, run in trace.runs.items() if run.status != RUN_NOT_APPLICABLE}
    trace.distributed = {**info, "parallel": parallel, **({"strategies": merged} if info["rank"] == 0 else {})}


def _judge(trace: _Draft, options: TraceOptions) -> None:
    """The comparison, the static claims confirmed, and with LoRA the diagnosis of the whole set-up."""
    from ..diagnose.confirmation import confirm
    from ..diagnose.lora_status import dead_groups_of, trajectory_flags
    from .strategies import compare
    report, run_report = trace.static, trace.run_static
    trace.comparison = compare(trace.runs, run_report)
    trace.verdicts = confirm(run_report, trace.runs, trace.freeze().clip_record(),
                             {row.path for row in run_report.tree})
    if trace.lora_setup is not None:
        from ..lora.attach import broken_ties, not_targeted, requested_gaps, suggest_targets
        explicit = options.lora_targets != "auto" or options.lora_config or options.adapter
        trace.lora_diagnosis = LoraDiagnosis(
            requested_gaps=tuple(requested_gaps(report, trace.lora_setup.target_modules)) if explicit else (),
            suggested_target_modules=suggest_targets(report, encoder_decoder=not (trace.inputs is None
                                                                                   or trace.inputs.audio_in_lm)),
            dead_groups={name: dead_groups_of(run, name) for name, run in trace.runs.items() if run.lora is not None},
            trajectory_flags={name: trajectory_flags(run.lora_trajectory) for name, run in trace.runs.items()
                              if run.lora_trajectory is not None},
            not_targeted=tuple(not_targeted(trace.model, run_report.component_of)),
            broken_ties=tuple(broken_ties(trace.model, report)))
