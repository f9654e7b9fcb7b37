"""Discovery: the 8-step static structure report, found by walking the module tree.

Nothing here runs the model, so it works on the meta device (no weights, no memory).
"""
from __future__ import annotations

import re
import sys

from ..module_paths import is_under
from ..records.static import AudioEncoderInfo, LanguageModelInfo, StaticReport, Strategy, TargetGap, TopLevelAttribute, TreeRow
from ..records.vocab import COMPONENTS, LAYER_LIST_NAMES  # noqa: F401 - COMPONENTS re-exported for old imports
from ..load.quantization import by_component as quantization_by_component
from ..load.quantization import values

AUDIO_ENCODER_NAMES = ("audio_tower", "audio_encoder", "audio_model", "speech_encoder", "whisper_encoder",
                       "audio_embed", "audio_embeds")
AUDIO_ENCODER_CLASS = re.compile(r"(Audio|Speech|Whisper|Wav2Vec2|Hubert|WavLM|Conformer)\w*Encoder$")
LANGUAGE_MODEL_NAMES = ("language_model", "text_model", "llm", "lm", "decoder")
PROJECTOR_NAME = re.compile(r"projector|mm_proj|multi_modal")
OTHER_MODALITY = re.compile(r"(^|\.)(image|vision|visual|img)\w*")  # inside an LM: another tower, not the LM
HEAD_NAMES = ("lm_head", "proj_out", "output", "embed_out")
AUDIO_CODEC_NAMES = ("codec_model", "audio_codec", "codec")  # audio in as discrete codes (Kyutai STT: Mimi)
# Names LoRA recipes conventionally target, and what a component uses instead when one is absent.
CONVENTIONAL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj",
                        "gate_proj", "up_proj", "down_proj", "fc1", "fc2")
TARGET_ALIASES = {"o_proj": ["out_proj"], "out_proj": ["o_proj"], "fc1": ["gate_proj", "up_proj"],
                  "fc2": ["down_proj"], "gate_proj": ["fc1"], "up_proj": ["fc1"], "down_proj": ["fc2"]}
CONFIG_KEYS = ("model_type", "hidden_size", "d_model", "num_hidden_layers", "encoder_layers",
               "num_attention_heads", "encoder_attention_heads", "num_key_value_heads", "intermediate_size",
               "encoder_ffn_dim", "vocab_size", "max_position_embeddings", "max_source_positions",
               "num_mel_bins", "rms_norm_eps", "audio_token_index", "audio_token_id", "tie_word_embeddings",
               "dtype")


def static_report(model) -> StaticReport:
    """Build the 8-step report for any ``nn.Module`` (PEFT-wrapped, on meta, or real).

    Example:
        >>> report = static_report(model)
        >>> report.audio_encoder.path, report.strategy.chosen
        ('model.audio_tower', 'audio_tower')
    """
    modules = dict(model.named_modules())
    encoder = _find_audio_encoder(modules)
    lm = _find_language_model(modules, encoder.path if encoder else None)
    component_of = _assign_components(modules, model, encoder, lm)
    params_total, params_trainable, components, shared = _count_parameters(model, component_of)
    candidates, examples = _lora_candidates(modules, component_of)
    codec = None if encoder else next((p for p in sorted(modules, key=_depth)
                                       if p and p.rsplit(".", 1)[-1] in AUDIO_CODEC_NAMES), None)
    return StaticReport(
        model_class=type(model).__name__,
        model_module=type(model).__module__,
        params_total=params_total,
        params_trainable=params_trainable,
        top_level=_top_level(model),
        audio_encoder=encoder,
        language_model=lm,
        config=_config_analysis(getattr(model, "config", None)),
        tree=_tree(model),
        components=components,
        component_of=component_of,
        shared_parameters=shared,
        lora_candidates=candidates,
        lora_examples=examples,
        target_gaps=_target_gaps(candidates),
        strategy=_strategy(encoder, lm, candidates, codec, modules),
        audio_codec=codec,
        quantization=quantization_by_component(model, component_of, COMPONENTS),
    )


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _find_audio_encoder(modules: dict) -> AudioEncoderInfo | None:
    # Shallowest match wins; a name match beats a class match at the same depth.
    matches = []
    for path, module in modules.items():
        if not path:
            continue
        leaf, cls = path.rsplit(".", 1)[-1], type(module).__name__
        if leaf in AUDIO_ENCODER_NAMES:
            matches.append((_depth(path), 0, path, f"name '{leaf}'"))
        elif AUDIO_ENCODER_CLASS.search(cls):
            matches.append((_depth(path), 1, path, f"class '{cls}'"))
        elif leaf == "encoder" and getattr(module, "main_input_name", None) == "input_features":
            matches.append((_depth(path), 2, path, "name 'encoder' taking input_features"))
    if not matches:
        return None
    _, _, path, found_by = min(matches)
    module = modules[path]
    layers_path, layers = _find_layer_list(module)
    layers_at = f"{path}.{layers_path}" if layers_path else None
    owner = layers_path.rsplit(".", 1)[0] if layers_path and "." in layers_path else None
    if owner and _is_pretrained(modules[f"{path}.{owner}"]) and not _is_pretrained(module):
        # a plain wrapper (Phi-4's audio_embed) around the encoder model that owns the layers; an encoder
        # model around its own layer stack (SeamlessM4T's speech_encoder) stays what was found
        path, module = f"{path}.{owner}", modules[f"{path}.{owner}"]
        found_by += f", then the owner of its layers '{owner}'"
    first = layers[0] if layers else None
    return AudioEncoderInfo(
        path=path, cls=type(module).__name__, found_by=found_by,
        num_layers=len(layers) if layers is not None else 0,
        hidden_size=_hidden_size(module, first),
        layer_class=type(first).__name__ if first is not None else None,
        layer_children=[[n, type(c).__name__] for n, c in first.named_children()] if first is not None else [],
        submodules=[[n, type(c).__name__] for n, c in module.named_children()],
        layers_path=layers_at,
    )


def _is_pretrained(module) -> bool:
    return any(cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__)


def _find_language_model(modules: dict, encoder_path: str | None) -> LanguageModelInfo | None:
    matches = []
    for path, module in modules.items():
        if not path or is_under(path, encoder_path):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if leaf in LANGUAGE_MODEL_NAMES and _find_layer_list(module)[1] is not None:
            matches.append((_depth(path), 0, path, f"name '{leaf}'"))
        elif hasattr(module, "embed_tokens") and _find_layer_list(module)[1] is not None:
            matches.append((_depth(path), 1, path, "embed_tokens + layers"))
    if not matches:
        return None
    _, _, path, found_by = min(matches)
    module = modules[path]
    layers_path, layers = _find_layer_list(module)
    return LanguageModelInfo(path=path, cls=type(module).__name__, found_by=found_by,
                             num_layers=len(layers), hidden_size=_hidden_size(module, layers[0] if layers else None),
                             layers_path=f"{path}.{layers_path}")


def _find_layer_list(module):
    """The repeated-block ModuleList of a component: a direct child by name first, then the shallowest one."""
    import torch.nn as nn
    for name in LAYER_LIST_NAMES:
        child = getattr(module, name, None)
        if isinstance(child, nn.ModuleList) and len(child):
            return name, child
    best = None
    for path, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) and path.rsplit(".", 1)[-1] in LAYER_LIST_NAMES:
            if best is None or _depth(path) < _depth(best[0]):
                best = (path, child)
    return best if best else (None, None)


def _hidden_size(module, first_layer) -> int | None:
    config = getattr(module, "config", None)
    for key in ("d_model", "hidden_size"):
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int):
            return value
    if first_layer is not None:  # no config: the first Linear's input width
        import torch.nn as nn
        for sub in first_layer.modules():
            if isinstance(sub, nn.Linear):
                return sub.in_features
    return None


def _head_path(model, modules: dict) -> str | None:
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    if head is not None:
        for path, module in modules.items():
            if module is head:
                return path
    for path in modules:
        if path.rsplit(".", 1)[-1] in HEAD_NAMES:
            return path
    return None


def _assign_components(modules: dict, model, encoder, lm) -> dict:
    head = _head_path(model, modules)
    # an audio encoder nested in the language model's embedding (Phi-4-multimodal): its siblings map its
    # output into the LM (projector), and the other modalities there are no part of the LM
    wrapper = encoder.path.rpartition(".")[0] if encoder else None
    nested = bool(wrapper) and lm is not None and is_under(wrapper, lm.path) and wrapper != lm.path
    component_of = {}
    for path in modules:
        # The head first: in the 4.x layout it sits inside the language model (a *ForCausalLM).
        if is_under(path, head):
            component_of[path] = "head"
        elif is_under(path, encoder.path if encoder else None):
            component_of[path] = "audio_encoder"
        elif nested and is_under(path, wrapper):
            component_of[path] = "projector"
        elif lm is not None and is_under(path, lm.path) and OTHER_MODALITY.search(path[len(lm.path):]):
            component_of[path] = "other"
        elif is_under(path, lm.path if lm else None):
            component_of[path] = "language_model"
        elif PROJECTOR_NAME.search(path.rsplit(".", 1)[-1]) or any(
                PROJECTOR_NAME.search(p) for p in path.split(".")):
            component_of[path] = "projector"
        else:
            component_of[path] = "other"
    return component_of


def _count_parameters(model, component_of: dict):
    """Totals, per-component counts and shared (tied) parameters, each tensor counted once, in values: a 4-bit
    weight's packed storage holds two a byte (quantization.values)."""
    components = dict.fromkeys(COMPONENTS, 0)
    first_owner = {}
    shared = []
    total = trainable = 0
    for path, param in model.named_parameters(remove_duplicate=False):
        key = id(param)
        if key in first_owner:
            shared.append([path, first_owner[key]])
            continue
        first_owner[key] = path
        module_path = path.rsplit(".", 1)[0] if "." in path else ""
        count = values(param)
        components[component_of.get(module_path, "other")] += count
        total += count
        trainable += count if param.requires_grad else 0
    return total, trainable, components, shared


def _lora_candidates(modules: dict, component_of: dict):
    """Every Linear-like leaf name, counted per component; PEFT-wrapped layers count as their wrapper."""
    linear_types = _linear_like_types()
    tuner_layer = _peft_tuner_layer_type()
    counts, examples, tuner = {}, {}, None
    for path, module in modules.items():
        if is_under(path, tuner):  # named_modules() is depth-first: a tuner's insides follow it
            continue
        is_tuner = tuner_layer is not None and isinstance(module, tuner_layer)
        if is_tuner:
            tuner = path
        elif not isinstance(module, linear_types) or not path:
            continue
        name = path.rsplit(".", 1)[-1]
        per_component = counts.setdefault(name, {})
        component = component_of[path]
        per_component[component] = per_component.get(component, 0) + 1
        if len(examples.setdefault(name, [])) < 3:
            examples[name].append(path)
    return counts, examples


def _linear_like_types() -> tuple:
    import torch.nn as nn
    types = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style "Linear"
        types.append(Conv1D)
    except ImportError:
        pass
    return tuple(types)


def _peft_tuner_layer_type():
    # Only consult peft when the user's model could contain its layers: importing it costs seconds.
    if "peft" not in sys.modules:
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer
    return BaseTunerLayer


def _target_gaps(candidates: dict) -> list:
    gaps = []
    for component in ("audio_encoder", "language_model"):
        present = {name for name, per in candidates.items() if per.get(component)}
        if not present:
            continue
        for name in CONVENTIONAL_TARGETS:
            if name in present or name not in candidates:
                continue  # only flag names that some other component does use
            instead = [alias for alias in TARGET_ALIASES.get(name, []) if alias in present]
            gaps.append(TargetGap(name=name, component=component, use_instead=instead))
    return gaps


def _strategy(encoder, lm, candidates: dict, codec: str | None = None, modules: dict | None = None) -> Strategy:
    if encoder is not None:
        runs = ("audio_encoder",)
        reason = f"audio encoder found at '{encoder.path}' ({encoder.found_by}): encode audio with it alone"
        hidden = encoder.hidden_size
        chosen = "audio_tower"
    else:
        runs = ("audio_encoder", "projector", "language_model")
        reason = "no audio encoder found in the module tree: the whole model must run on the input"
        if codec is not None:
            reason = (f"no audio encoder: the audio enters through a codec at '{codec}' "
                      f"({type(modules[codec]).__name__}) as discrete codes the LM reads as tokens; nothing "
                      "differentiable runs on audio alone, so the whole model must run")
        hidden = lm.hidden_size if lm else None
        chosen = "full_forward"
    names = [n for n, per in candidates.items() if any(per.get(c) for c in runs)]
    order = {n: i for i, n in enumerate(CONVENTIONAL_TARGETS)}
    names.sort(key=lambda n: (order.get(n, len(order)), n))
    return Strategy(chosen=chosen, reason=reason, hidden_size=hidden, lora_targets=names)


def _top_level(model) -> list:
    import torch.nn as nn
    rows = [TopLevelAttribute(name, type(child).__name__, True, sum(map(values, child.parameters())))
            for name, child in model.named_children()]
    for name, value in sorted(vars(model).items()):
        if name.startswith("_") or isinstance(value, nn.Module):
            continue
        if type(value).__name__.endswith("Config"):
            rows.append(TopLevelAttribute(name, type(value).__name__, False, 0))
    return rows


def _config_values(config) -> dict:
    values = {}
    for key in CONFIG_KEYS:
        value = getattr(config, key, None)
        if value is not None and isinstance(value, (int, float, str, bool)):
            values[key] = value
        elif value is not None and key in ("dtype"):
            values[key] = str(value).replace("torch.", "")
    return values


def _config_analysis(config) -> dict:
    if config is None:
        return {}
    sub_configs = {}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            sub_configs[key] = {"class": type(sub).__name__, "values": _config_values(sub)}
    return {"class": type(config).__name__, "values": _config_values(config), "sub_configs": sub_configs}


def _tree(model) -> list:
    """Every module with its parameter count (shared tensors counted once per subtree)."""
    rows = []
    for path, module in model.named_modules():
        params = sum(map(values, module.parameters()))
        rows.append(TreeRow(path=path, cls=type(module).__name__, params=params, depth=_depth(path)))
    return rows
