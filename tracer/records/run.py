"""Records of a strategy's run: timings, stages, LoRA layers and their diagnosis, the comparison."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .calls import ModuleRecord, _Fields
from .vocab import RUN_FAILED, RUN_OK


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
    status: str  # vocab.LoraStatus
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
    """One component in one run: its modules' own forward and backward time summed (rollup/stages.py), bytes, params."""
    forward_ms: float = 0.0
    backward_ms: float | None = None
    saved_bytes: int = 0
    output_bytes: int = 0
    params: int = 0
    modules_executed: int = 0


@dataclass(frozen=True)
class RunRecord:
    """One strategy's run: "ok" with every figure, or "failed" / "not_applicable" with a reason."""
    status: str  # vocab.RunStatus
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
    lora_trajectory: dict | None = None  # LayerKey -> per step: grad norms A/B, update ratios A/B
    saved_modules: tuple | None = None  # diagnosis.SavedModule: PEFT modules_to_save copies
    notes: tuple = ()  # one-line facts on the traced pass the user must read (diagnose/run_notes.py)
    labels: dict | None = None  # when labels reached the model: {"supervised_tokens", "masked_samples"}
    calls: tuple | None = None  # CallRecord, kept for the Chrome trace only (not in the JSON)
    origin_unix_ns: int = field(default=0, compare=False)  # wall clock at the traced pass's start (Chrome traces; not in the JSON)

    @property
    def ok(self) -> bool:
        return self.status == RUN_OK

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
            if self.status == RUN_FAILED:
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
            d["lora_trajectory"] = {str(key): points for key, points in self.lora_trajectory.items()}
        if self.saved_modules:
            d["saved_modules"] = [m.to_dict() for m in self.saved_modules]
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
    dead_groups: dict  # strategy -> [diagnosis.DeadGroup]
    trajectory_flags: dict = field(default_factory=dict)  # strategy -> [diagnosis.TrajectoryFlag]
    not_targeted: tuple = ()  # {"pattern", "count", "component"}: a LoRA layer's kind left without one
    broken_ties: tuple = ()  # diagnosis.BrokenTie: one side of tied weights changed by PEFT

    def to_dict(self) -> dict:
        return {"requested_gaps": list(self.requested_gaps), "suggested_target_modules": self.suggested_target_modules,
                "dead_groups": _dicts(self.dead_groups), "trajectory_flags": _dicts(self.trajectory_flags),
                "not_targeted": list(self.not_targeted), "broken_ties": [t.to_dict() for t in self.broken_ties]}


def _dicts(by_strategy: dict) -> dict:
    """strategy -> records, as JSON."""
    return {name: [r.to_dict() for r in rows] for name, rows in by_strategy.items()}
