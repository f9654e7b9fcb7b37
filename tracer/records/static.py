"""Records of the static report (static/discovery.py builds them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    quantization: dict = field(default_factory=dict)  # component -> load.quantization.ComponentQuantization

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
