"""A saved PEFT adapter's file checked against the model it is loaded into, without running anything:
``untrained`` (every lora_B in the file is zero), ``missing_weights`` (layers the config targets that the
file has no weights for: PEFT loads them silently at their initial values), ``no_match`` (weights that fit
no module of the base). ``audit_notes`` gives them to the main job's ``--adapter``; ``bin/trace audit``
(cli/audit.py) adds the clip check. Imports nothing heavy until called.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import TracerError, first_line, read_json_object

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

def _key_mapping(model) -> dict | None:
    """transformers' renames of old checkpoints' keys, applied by PEFT to adapter keys too (from_pretrained)."""
    return getattr(model, "_checkpoint_conversion_mapping", None) or None
def _modules(keys) -> list[str]:
    from ..records.vocab import strip_peft_prefix
    return sorted({strip_peft_prefix(k.split(".lora_")[0]) for k in keys})
def _groups(paths: list[str], shown: int = 4) -> str:
    from ..module_paths import collapse_paths
    groups = [f"{p} ({n})" if n > 1 else p for p, n in collapse_paths(paths)]
    return ", ".join(groups[:shown]) + (f", … {len(groups) - shown} more groups" if len(groups) > shown else "")
