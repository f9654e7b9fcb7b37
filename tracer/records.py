"""Records of a traced run: plain dataclasses, turned into JSON-ready dicts only when asked."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    inputs: list
    outputs: list
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    backward_start_ns: int | None
    backward_end_ns: int | None


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
    inputs: list
    outputs: list
    outputs_require_grad: bool
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    grad_output_norm: float | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("cls")
        return d


def describe(meta) -> str:
    """('1x128x3000 float32') from a (shape, dtype, device) triple, or a type name."""
    if isinstance(meta, str):
        return meta
    shape, dtype, device = meta
    dims = "x".join(str(d) for d in shape) or "scalar"
    where = "" if device.type == "cpu" else f" {device}"
    return f"{dims} {str(dtype).replace('torch.', '')}{where}"


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


@dataclass(frozen=True)
class LanguageModelInfo:
    path: str
    cls: str
    found_by: str
    num_layers: int
    hidden_size: int | None


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
