"""The words the records are made of, in one place: strategies, components, statuses, verdicts, the
names of layer lists, PEFT's path prefix. Imports nothing, so the CLI's --help can use it."""
from __future__ import annotations

import re

STRATEGIES = ("audio_tower", "full_forward")
LOSSES = ("pooled_l2", "pooled_mean")  # audio_tower's surrogate losses (strategies.tower_loss)
COMPONENTS = ("audio_encoder", "projector", "language_model", "head", "other")

# a strategy's run
RUN_OK, RUN_FAILED, RUN_NOT_APPLICABLE = "ok", "failed", "not_applicable"

# a LoRA layer after a traced backward (diagnose/lora_status.py gives each its cause and fix)
LORA_STATUSES = ("ok", "zero_init", "not_executed", "bypassed", "frozen", "no_grad_mode", "off_loss_path", "disabled",
                 "zero_grad", "nonfinite", "loss_masked", "not_in_optimizer", "not_updated")

# a claim of the static report checked against what ran (diagnose/confirmation.py)
CONFIRMED, REFUTED, NOTED, NOT_CHECKED = "confirmed", "refuted", "noted", "not checked"

# module lists that hold a model's repeated layers: HF's `layers`/`layer`, `blocks`, GPT-2's `h`,
# Phi-4-multimodal's conformer `encoders`
LAYER_LIST_NAMES = ("layers", "layer", "blocks", "h", "encoders")
LAYER_PATH = re.compile(r"\.(?:" + "|".join(LAYER_LIST_NAMES) + r")\.\d+$")  # a path that ends in one layer

PEFT_PREFIX = "base_model.model."


def strip_peft_prefix(path: str) -> str:
    """A module path as the base model names it (PEFT puts ``base_model.model.`` in front)."""
    return path[len(PEFT_PREFIX):] if path.startswith(PEFT_PREFIX) else path
