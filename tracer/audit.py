"""``bin/trace audit``: a saved PEFT LoRA adapter checked against its base model without training.

Four faults, each with a code, a one-line detail and a fix: ``untrained`` (every lora_B in the file is
zero), ``missing_weights`` (layers the config targets that the file has no weights for: PEFT loads them
silently at their initial values), ``no_match`` (weights that fit no module of the base) and ``no_effect``
(the adapted model's output equals the base's on the clip). The first three need only the file and the
wrapped model; ``audit_notes`` gives them to the main job's ``--adapter``. Imports nothing heavy until called.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import TracerError, first_line, read_json_object

UNTRAINED, MISSING_WEIGHTS, NO_MATCH, NO_EFFECT = "untrained", "missing_weights", "no_match", "no_effect"
FIXES = {
    UNTRAINED: "save after training; load a trained adapter with PeftModel.from_pretrained, don't call "
               "get_peft_model on a trained model",
    MISSING_WEIGHTS: "under ZeRO-3 save the gathered state dict: accelerator.get_state_dict(model), "
                     "zero3_save_16bit_model, or stage3_gather_16bit_weights_on_model_save: true",
    NO_MATCH: "audit against the base the adapter was trained on (--model)",
    NO_EFFECT: "check lora_alpha (scaling = lora_alpha / r) and that target_modules cover what the clip runs",
}
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT's save_pretrained writes


@dataclass(frozen=True)
class Fault:
    code: str  # one of FIXES
    detail: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """What ``audit_adapter`` found; ``to_dict()`` is the ``--json`` record."""
    adapter: str
    base: str
    faults: tuple  # Fault
    layers: int  # LoRA layers PEFT made on the base
    max_abs_logit_change: float | None  # None when the model did not run on the clip
    notes: tuple = ()  # why a check was skipped

    def to_dict(self) -> dict:
        return {"adapter": self.adapter, "base": self.base, "faults": [f.to_dict() for f in self.faults],
                "layers": self.layers, "max_abs_logit_change": self.max_abs_logit_change, "notes": list(self.notes)}


def read_adapter_config(adapter_dir: str, label: str = "audit") -> dict:
    """adapter_config.json of a saved adapter whose weights file is there, or TracerError (no heavy import)."""
    directory = Path(adapter_dir)
    if not directory.is_dir():
        raise TracerError(f"{label} {adapter_dir}: no such directory")
    if not (directory / "adapter_config.json").is_file():
        raise TracerError(f"{label} {adapter_dir}: no adapter_config.json there (not a saved PEFT adapter)")
    config = read_json_object(str(directory / "adapter_config.json"), label)
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise TracerError(f"{label} {adapter_dir}: no {' or '.join(WEIGHT_FILES)} there")
    return config


def read_weights(adapter_dir: str, label: str = "audit", key_mapping: dict | None = None) -> dict:
    """``{key: tensor}`` as PEFT reads the file (the .bin with weights_only), or TracerError when unreadable."""
    read_adapter_config(adapter_dir, label)
    from peft.utils import load_peft_weights
    try:
        return load_peft_weights(adapter_dir, device="cpu", key_mapping=key_mapping)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise many types for a broken file
        name = next(n for n in WEIGHT_FILES if (Path(adapter_dir) / n).is_file())
        raise TracerError(f"{label} {adapter_dir}: unreadable weights in {name} ({first_line(e)})") from None


def untrained_faults(weights: dict) -> list[Fault]:
    """``untrained`` when the file has lora_B weights and every one is all zero."""
    b = [t for k, t in weights.items() if ".lora_B." in k or ".lora_embedding_B" in k]
    if not b or any(t.count_nonzero() for t in b):
        return []
    return [Fault(UNTRAINED, f"all {len(b)} lora_B weights in the file are zero: saved before any optimizer "
                             "step, the adapter changes nothing", FIXES[UNTRAINED])]


def match_faults(weights: dict, wrapped, base: str) -> list[Fault]:
    """``missing_weights`` and ``no_match``: the LoRA keys PEFT's own state dict of ``wrapped`` has (what
    its config targets on this base) against the keys in the file."""
    from peft import get_peft_model_state_dict
    expected = {k for k in get_peft_model_state_dict(wrapped, adapter_name=wrapped.active_adapter,
                                                     save_embedding_layers=False) if ".lora_" in k}
    present = {k for k in weights if ".lora_" in k}
    faults = []
    missing, targeted = _modules(expected - present), _modules(expected)
    if missing:
        faults.append(Fault(MISSING_WEIGHTS, f"{len(missing)} of {len(targeted)} LoRA layers the config targets "
                                             f"have no weights in the file ({_groups(missing)}): PEFT loads them "
                                             "silently at their initial values", FIXES[MISSING_WEIGHTS]))
    unmatched = _modules(present - expected)
    if unmatched:
        faults.append(Fault(NO_MATCH, f"{len(unmatched)} LoRA layers in the file match no LoRA layer PEFT makes on "
                                      f"{base} ({_groups(unmatched)}): their weights are ignored", FIXES[NO_MATCH]))
    return faults


def audit_notes(adapter_dir: str, wrapped) -> list[str]:
    """The file checks (untrained, missing_weights, no_match) of an adapter already loaded into ``wrapped``
    (a PeftModel), as one line each for the main job's LoRA section: ``code: detail; fix: fix``."""
    weights = read_weights(adapter_dir, "--adapter", _key_mapping(wrapped.get_base_model()))
    base = type(wrapped.get_base_model()).__name__
    return [f"{f.code}: {f.detail}; fix: {f.fix}"
            for f in untrained_faults(weights) + match_faults(weights, wrapped, base)]


def audit_adapter(adapter_dir: str, model: str | None = None, clip: str | None = None,
                  progress=lambda text: None) -> AuditResult:
    """Check a saved adapter against its base, on a clip.

    Args:
        adapter_dir: what ``save_pretrained`` wrote (adapter_config.json and the weights).
        model: the base (a directory, a cached hub id or a named model); None takes the adapter's
            ``base_model_name_or_path``, or the built-in tiny Qwen2-Audio when it names none.
        clip: the audio the output change is measured on (default: the shipped sample).

    Raises TracerError on bad input. Example::

        result = audit_adapter("out/checkpoint-500")
        [f.code for f in result.faults]   # [] or e.g. ["untrained"]
    """
    config = read_adapter_config(adapter_dir)
    weights = read_weights(adapter_dir)
    from .assets import BUILTIN_CLIP
    from .pipeline import TraceOptions, trace_clip
    spec = model or _base_of(config)
    # NB: static_only loads the base and builds the clip's inputs exactly as the main job does, runs nothing
    try:
        loaded = trace_clip(clip or str(BUILTIN_CLIP), spec, options=TraceOptions(static_only=True, lora=False),
                            observer=lambda event, report, detail: progress(detail) if event == "progress" else None)
    except TracerError as e:
        if model or not spec:
            raise
        raise TracerError(f"{e} (the base named in {adapter_dir}/adapter_config.json; pass --model)") from None
    base = spec or loaded.model_name
    mapping = _key_mapping(loaded.model)
    if mapping:
        weights = read_weights(adapter_dir, key_mapping=mapping)
    faults = untrained_faults(weights)
    encoder = (dict(loaded.model.named_modules())[loaded.static.audio_encoder.path]
               if loaded.static.audio_encoder is not None else None)
    from peft import PeftModel

    from .lora_params import lora_layers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's "missing adapter keys": a fault of its own here
            wrapped = PeftModel.from_pretrained(loaded.model, adapter_dir).eval()
    except Exception as e:  # noqa: BLE001 - peft raises many types for "does not fit this model"
        faults.append(Fault(NO_MATCH, f"does not load into {base} ({first_line(e)})", FIXES[NO_MATCH]))
        return AuditResult(adapter_dir, base, tuple(faults), 0, None)
    faults += match_faults(weights, wrapped, base)
    notes, change = [], None
    if loaded.inputs is None:
        notes.append(f"no_effect not checked: no inputs from the clip ({loaded.clip_error or 'none built'})")
    elif loaded.inputs.full is None and encoder is None:
        notes.append("no_effect not checked: this model takes no text and has no audio encoder to run")
    else:
        change, equal = _output_change(wrapped, loaded.inputs, encoder)
        if equal and not any(f.code == UNTRAINED for f in faults):  # an untrained one: its cause is named
            faults.append(Fault(NO_EFFECT, f"on the clip the adapted model's output equals the base's "
                                           f"(max |Δ| = {change:.3g}): the adapter does nothing here",
                                FIXES[NO_EFFECT]))
    return AuditResult(adapter_dir, base, tuple(faults), len(lora_layers(wrapped)), change, tuple(notes))


def render_audit(result: AuditResult) -> str:
    """The human report: a header, one line per fault (or the all-clear), the notes."""
    lines = [f"audit {result.adapter} against {result.base}: {result.layers} LoRA layers"]
    lines += [f"  {f.code}: {f.detail}; fix: {f.fix}" for f in result.faults]
    if not result.faults:
        effect = ("changes the output (max |Δlogit| = {:.3g})".format(result.max_abs_logit_change)
                  if result.max_abs_logit_change is not None else "output change not checked")
        lines.append(f"adapter OK: {result.layers} LoRA layers, trained, matches the base, {effect}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _base_of(config: dict) -> str | None:
    """The adapter's base as ``--model`` takes it; None (the built-in) when it names none or the built-in."""
    from .assets import BUILTIN_MODEL_DIR
    name = config.get("base_model_name_or_path")
    builtin_names = {"builtin tiny Qwen2-Audio", str(BUILTIN_MODEL_DIR), BUILTIN_MODEL_DIR.name}
    return None if not name or name in builtin_names or Path(name).resolve() == BUILTIN_MODEL_DIR else name


def _key_mapping(model) -> dict | None:
    """transformers' renames of old checkpoints' keys, applied by PEFT to adapter keys too (from_pretrained)."""
    return getattr(model, "_checkpoint_conversion_mapping", None) or None


def _modules(keys) -> list[str]:
    from .vocab import strip_peft_prefix
    return sorted({strip_peft_prefix(k.split(".lora_")[0]) for k in keys})


def _groups(paths: list[str], shown: int = 4) -> str:
    from .naming import collapse_paths
    groups = [f"{p} ({n})" if n > 1 else p for p, n in collapse_paths(paths)]
    return ", ".join(groups[:shown]) + (f", … {len(groups) - shown} more groups" if len(groups) > shown else "")


def _output_change(wrapped, inputs, encoder) -> tuple[float, bool]:
    """Max |Δ| between the adapted and the base (adapter disabled) output on the clip's inputs, and whether
    that is within rounding: the logits of the whole model, else the audio encoder's first output tensor."""
    import torch

    from .loading import input_device
    device = input_device(wrapped, torch.device("cpu"))
    run, batch = (wrapped, inputs.full) if inputs.full is not None else (encoder, inputs.tower)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        adapted = _first_tensor(run(**batch))
        with wrapped.disable_adapter():
            plain = _first_tensor(run(**batch))
    change = float((adapted.float() - plain.float()).abs().max())
    # NB: the base part of each LoRA layer computes the same either way, so any change is the adapter's;
    # one unit in the last place of the largest value is left for kernels that are not deterministic
    return change, change <= torch.finfo(adapted.dtype).eps * max(1.0, float(plain.float().abs().max()))


def _first_tensor(output):
    """``logits`` when the output has them, else its first tensor."""
    import torch
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    return next(v for v in values if isinstance(v, torch.Tensor))
