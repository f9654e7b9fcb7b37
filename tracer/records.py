"""Records of a traced run and of the static report: frozen dataclasses. Shapes stay tuples of ints until
they are rendered; ``to_dict()`` gives the JSON of schema v1 (schema.py reads it back)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class TensorMeta:
    """What a module got or gave: a tensor's shape, dtype and device. Not a tensor: only its description."""
    shape: tuple
    dtype: str  # "float32"
    device: str  # "cpu", "cuda:0"

    def __str__(self) -> str:  # '1x1500x64 float32' (the device only when not the CPU)
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{dims} {self.dtype}" + ("" if self.device == "cpu" else f" {self.device}")


class _Fields:
    """A record whose JSON object is its fields as they are."""

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_meta(meta):
    """A TensorMeta from the tracer's (shape, dtype, device) triple; a type name stays a string."""
    if isinstance(meta, str):
        return meta
    shape, dtype, device = meta
    return TensorMeta(tuple(int(d) for d in shape), str(dtype).replace("torch.", ""), str(device))


def describe(meta) -> str:
    """'1x128x3000 float32' for a TensorMeta or a (shape, dtype, device) triple; a type name as it is."""
    return str(tensor_meta(meta)) if isinstance(meta, tuple) else str(meta)


def _described(items) -> list:
    return [str(m) for m in items]


@dataclass(frozen=True)
class CallRecord:
    """One forward call of one module (times in ns on the tracer's clock, relative to the pass start)."""
    path: str
    call_index: int
    start_ns: int
    end_ns: int
    self_ns: int
    grad_enabled: bool
    recompute: bool  # a gradient-checkpointing re-run inside backward, not a call of its own
    inputs: tuple  # TensorMeta or a type name, per input
    outputs: tuple
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    backward_start_ns: int | None
    backward_end_ns: int | None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["inputs"], d["outputs"] = _described(self.inputs), _described(self.outputs)
        return d


@dataclass(frozen=True)
class ModuleRecord:
    """Everything one module did in the traced region (the "modules" rows of the run record)."""
    path: str
    cls: str
    calls: int
    recomputed_calls: int
    executed: bool
    container: bool
    forward_ms: float
    self_forward_ms: float
    backward_ms: float | None
    grad_enabled: bool | None
    inputs: tuple  # of the first call: TensorMeta or a type name, per input
    outputs: tuple
    outputs_require_grad: bool
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    grad_output_norm: float | None
    # its own part of the backward: backward_ms less the windows opened inside it (rollup.own_backward_ns);
    # these add up over modules, backward_ms windows do not
    self_backward_ms: float | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["class"] = d.pop("cls")
        d["inputs"], d["outputs"] = _described(self.inputs), _described(self.outputs)
        return d


@dataclass(frozen=True)
class LoraLayerRecord(_Fields):
    """One LoRA layer x adapter after a traced backward: did a gradient arrive, and why not."""
    path: str
    adapter: str
    component: str
    executed: bool
    grad_enabled: bool | None
    grad_arrived: bool
    grad_norm_A: float | None
    grad_norm_B: float | None
    grad_norm_magnitude: float | None  # DoRA
    lora_B_zero: bool
    status: str  # vocab.LORA_STATUSES
    cause: str
    hint: str
    # with an optimizer (Tracer(optimizer=...)): None otherwise
    in_optimizer: bool | None = None
    lr: float | None = None
    optimizer_steps: int | None = None
    stepped: bool | None = None
    update_ratio_A: float | None = None
    update_ratio_B: float | None = None


NOISY_SPREAD = 1.5  # repeats whose max exceeds min by more than this are too spread to compare


@dataclass(frozen=True)
class Timing(_Fields):
    """Untraced passes of one kind: their median, min and max in ms."""
    median: float
    min: float
    max: float
    runs: int

    @property
    def spread(self) -> float | None:
        """max / min over the repeats (None with one run: nothing to judge)."""
        return self.max / self.min if self.runs > 1 and self.min > 0 else None

    @property
    def noisy(self) -> bool:
        return self.spread is not None and self.spread > NOISY_SPREAD


@dataclass(frozen=True)
class StageRecord(_Fields):
    """One component in one run: its modules' own forward and backward time summed (stages.py), bytes, params."""
    forward_ms: float = 0.0
    backward_ms: float | None = None
    saved_bytes: int = 0
    output_bytes: int = 0
    params: int = 0
    modules_executed: int = 0


@dataclass(frozen=True)
class RunRecord:
    """One strategy's run: "ok" with every figure, or "failed" / "not_applicable" with a reason."""
    status: str  # vocab.RUN_OK | RUN_FAILED | RUN_NOT_APPLICABLE
    reason: str | None = None
    failed_in: str | None = None  # the innermost module a failure passed through
    loss: float | None = None
    note: str | None = None
    loss_kind: str | None = None
    latency_ms: Timing | None = None  # untraced forward
    backward_ms: Timing | None = None  # untraced backward
    peak_memory_bytes: int | None = None  # above what was allocated before the pass
    memory_kind: str | None = None
    memory_split: dict | None = None  # parameters; at the peak: activations, gradients, temporaries
    traced_ms: float | None = None
    traced_over_untraced: float | None = None
    modules_executed: int = 0
    modules_registered: int = 0
    params_executed: int = 0
    stages: dict = field(default_factory=dict)  # component -> StageRecord
    modules: tuple = ()  # ModuleRecord, in named_modules() order
    never_called: tuple = ()
    total_forward_ms: float | None = None
    total_backward_ms: float | None = None
    clock: str | None = None
    lora: tuple | None = None  # LoraLayerRecord, when the model has LoRA layers
    lora_summary: dict | None = None  # {component: {status: count}}
    lora_trajectory: dict | None = None  # "path|adapter" -> per step: grad norms A/B, update ratios A/B
    saved_modules: tuple | None = None  # PEFT modules_to_save copies: {"path", "adapter", "status", …}
    notes: tuple = ()  # one-line facts on the traced pass the user must read (run_notes.py)
    labels: dict | None = None  # when labels reached the model: {"supervised_tokens", "masked_samples"}
    calls: tuple | None = None  # CallRecord, kept for the Chrome trace only (not in the JSON)
    origin_unix_ns: int = field(default=0, compare=False)  # wall clock at the traced pass's start (Chrome traces; not in the JSON)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def timing_noisy(self) -> bool:
        """Its timings cannot carry a ratio: the repeats disagree, or the traced pass beat the untraced ones
        (a busy machine; the tracer only adds work)."""
        return bool(self.ok and (self.latency_ms.noisy or self.backward_ms.noisy or (
            self.traced_over_untraced is not None and self.traced_over_untraced < 1)))

    def module(self, path: str) -> ModuleRecord | None:
        return next((m for m in self.modules if m.path == path), None)

    def executed_paths(self) -> set:
        return {m.path for m in self.modules if m.executed}

    def to_dict(self) -> dict:
        if not self.ok:
            d = {"status": self.status, "reason": self.reason}
            if self.status == "failed":
                d["failed_in"] = self.failed_in
            return d
        d = {"status": self.status, "loss": self.loss, "note": self.note, "loss_kind": self.loss_kind,
             "latency_ms": self.latency_ms.to_dict(), "backward_ms": self.backward_ms.to_dict(),
             "peak_memory_bytes": self.peak_memory_bytes, "memory_kind": self.memory_kind,
             "memory_split": self.memory_split,
             "traced_ms": self.traced_ms, "traced_over_untraced": self.traced_over_untraced,
             "timing_noisy": self.timing_noisy,
             "modules_executed": self.modules_executed, "modules_registered": self.modules_registered,
             "params_executed": self.params_executed,
             "stages": {c: s.to_dict() for c, s in self.stages.items()},
             "modules": [m.to_dict() for m in self.modules], "never_called": list(self.never_called),
             "total_forward_ms": self.total_forward_ms, "total_backward_ms": self.total_backward_ms,
             "clock": self.clock, "failed_in": self.failed_in}
        if self.lora is not None:
            d["lora"] = [r.to_dict() for r in self.lora]
            d["lora_summary"] = self.lora_summary
        if self.lora_trajectory is not None:
            d["lora_trajectory"] = self.lora_trajectory
        if self.saved_modules:
            d["saved_modules"] = list(self.saved_modules)
        if self.labels is not None:
            d["labels"] = self.labels
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class Comparison:
    """full_forward over audio_tower, and what only one of them runs. Empty unless both ran."""
    complete: bool = False
    latency_ratio_full_over_tower: float | None = None
    backward_ratio_full_over_tower: float | None = None
    memory_ratio_full_over_tower: float | None = None
    params_ratio_full_over_tower: float | None = None
    only_in_full_forward: tuple = ()  # component roots
    only_in_full_forward_layers: tuple = ()  # the same with layer ranges collapsed
    only_in_audio_tower: tuple = ()

    def to_dict(self) -> dict:
        if not self.complete:
            return {"latency_ratio_full_over_tower": None, "only_in_full_forward": []}
        d = asdict(self)
        del d["complete"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class LoraSetup(_Fields):
    """What was attached before the runs (lora.attach_lora)."""
    source: str  # "auto targets (step 8)", "--lora-targets …", "--lora-config FILE", "--adapter DIR"
    target_modules: object  # a list of names or a regex, as peft holds it
    r: int
    use_dora: bool
    layers: int
    trainable_params: int
    notes: list = field(default_factory=list)  # an --adapter file's faults, one line each (audit.audit_notes)


@dataclass(frozen=True)
class LoraDiagnosis:
    """Across the runs: requested names that match nothing, the targets to use, dead layers grouped."""
    requested_gaps: tuple  # {"name", "component", "use_instead"}
    suggested_target_modules: dict  # {"strategy", "list", "regex", "note"}
    dead_groups: dict  # strategy -> [{"pattern", "status", "count", "cause", "hint"}]
    trajectory_flags: dict = field(default_factory=dict)  # strategy -> [{"path", "adapter", "flag", "side"}]
    not_targeted: tuple = ()  # {"pattern", "count", "component"}: a LoRA layer's kind left without one
    broken_ties: tuple = ()  # {"module", "change", "tied_to"}: one side of tied weights changed by PEFT

    def to_dict(self) -> dict:
        return {"requested_gaps": list(self.requested_gaps), "suggested_target_modules": self.suggested_target_modules,
                "dead_groups": self.dead_groups, "trajectory_flags": self.trajectory_flags,
                "not_targeted": list(self.not_targeted), "broken_ties": list(self.broken_ties)}


@dataclass(frozen=True)
class ClipRecord:
    """The clip as the model received it: the file and what was done to it (audio.ClipInfo), and its cost
    in frames and tokens (the JSON "clip" object)."""
    info: object  # audio.ClipInfo
    mel_frames: int
    mel_frames_padded: int
    encoder_frames: int | None
    audio_tokens: int | None
    padded_fraction: float
    length_function: str
    template: str
    prompt_tokens: int | None
    target_tokens: int | None
    audio_in_lm: bool = True  # False: an encoder-decoder's decoder cross-attends the audio

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("info", "audio_in_lm")}
        return {**self.info.to_dict(), **d}


# -- the static report (discovery.py builds these) ------------------------------------------------------
@dataclass(frozen=True)
class TopLevelAttribute:
    name: str
    cls: str
    is_module: bool
    params: int


@dataclass(frozen=True)
class AudioEncoderInfo:
    path: str
    cls: str
    found_by: str
    num_layers: int
    hidden_size: int | None
    layer_class: str | None
    layer_children: list  # [[name, class], ...] of the first layer
    submodules: list  # [[name, class], ...] direct children
    layers_path: str | None = None  # the module list of its layers (SeamlessM4T: speech_encoder.encoder.layers)


@dataclass(frozen=True)
class LanguageModelInfo:
    path: str
    cls: str
    found_by: str
    num_layers: int
    hidden_size: int | None
    # the module list of its layers: its owner's output is the hidden state (a *ForCausalLM found by name, as
    # in transformers' 4.x layout and up to 5.6's Qwen2-Audio, returns logits: language_model.model.layers)
    layers_path: str | None = None


@dataclass(frozen=True)
class TreeRow:
    path: str
    cls: str
    params: int
    depth: int


@dataclass(frozen=True)
class TargetGap:
    """A conventional LoRA target name that matches nothing in a component that has siblings of it."""
    name: str
    component: str
    use_instead: list


@dataclass(frozen=True)
class Strategy:
    chosen: str  # "audio_tower" | "full_forward"
    reason: str
    hidden_size: int | None
    lora_targets: list


@dataclass(frozen=True)
class StaticReport:
    model_class: str
    model_module: str
    params_total: int
    params_trainable: int
    top_level: list
    audio_encoder: AudioEncoderInfo | None
    language_model: LanguageModelInfo | None
    config: dict
    tree: list
    components: dict
    component_of: dict = field(repr=False)  # module path -> component
    shared_parameters: list  # [[path, shares_with], ...]
    lora_candidates: dict  # name -> {component: count}
    lora_examples: dict  # name -> [paths]
    target_gaps: list
    strategy: Strategy
    audio_codec: str | None = None  # with no audio encoder: a codec that turns audio into tokens (Kyutai's Mimi)
    quantization: dict = field(default_factory=dict)  # component -> quantization.ComponentQuantization

    def to_dict(self) -> dict:
        """The JSON contract's "static" object (schema_version 1)."""
        d = asdict(self)
        for key in ("model_class", "model_module", "params_total", "params_trainable", "component_of"):
            d.pop(key)
        for row in d["top_level"]:
            row["class"] = row.pop("cls")
        for row in d["tree"]:
            row["class"] = row.pop("cls")
        for key in ("audio_encoder", "language_model"):
            if d[key]:
                d[key]["class"] = d[key].pop("cls")
        return d
