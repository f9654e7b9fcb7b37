"""The words the records are made of, in one place: strategies, components, statuses, verdicts, the
names of layer lists, PEFT's path prefix. Imports nothing heavy (enum and re come with the interpreter),
so the CLI's --help can use it."""
from __future__ import annotations

import re
from enum import Enum


class _Word(str, Enum):
    """A word of the records: equal to its string, hashed like it, and its plain value in JSON, f-strings and
    str() (3.11+ would format a ``(str, Enum)`` as ``Class.MEMBER``; enum.StrEnum is 3.11+ only)."""
    __hash__ = str.__hash__  # NB: Enum's own hashes the member's name, so a dict keyed "ok" would miss OK

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Strategy(_Word):
    AUDIO_TOWER = "audio_tower"
    FULL_FORWARD = "full_forward"


class Loss(_Word):  # audio_tower's surrogate losses (strategies.tower_loss)
    POOLED_L2 = "pooled_l2"
    POOLED_MEAN = "pooled_mean"


class Component(_Word):
    AUDIO_ENCODER = "audio_encoder"
    PROJECTOR = "projector"
    LANGUAGE_MODEL = "language_model"
    HEAD = "head"
    OTHER = "other"


class RunStatus(_Word):  # a strategy's run
    OK = "ok"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


class SavedStatus(_Word):  # a PEFT modules_to_save copy (diagnose/lora_status.saved_modules)
    OK = "ok"
    NOT_EXECUTED = "not_executed"
    ORIGINAL_RAN = "original_ran"
    FROZEN = "frozen"
    NO_GRADIENT = "no_gradient"


class LoraStatus(_Word):  # a LoRA layer after a traced backward (diagnose/lora_status.py gives its cause and fix)
    OK = "ok"
    ZERO_INIT = "zero_init"
    NOT_EXECUTED = "not_executed"
    BYPASSED = "bypassed"
    FROZEN = "frozen"
    NO_GRAD_MODE = "no_grad_mode"
    OFF_LOSS_PATH = "off_loss_path"
    DISABLED = "disabled"
    ZERO_GRAD = "zero_grad"
    NONFINITE = "nonfinite"
    LOSS_MASKED = "loss_masked"
    NOT_IN_OPTIMIZER = "not_in_optimizer"
    NOT_UPDATED = "not_updated"


class ClaimVerdict(_Word):  # a claim of the static report checked against what ran (diagnose/confirmation.py)
    CONFIRMED = "confirmed"
    REFUTED = "refuted"
    NOTED = "noted"
    NOT_CHECKED = "not checked"


# the names from before the Enums, kept so call sites read as they did
STRATEGIES, LOSSES, COMPONENTS, LORA_STATUSES = tuple(Strategy), tuple(Loss), tuple(Component), tuple(LoraStatus)
RUN_OK, RUN_FAILED, RUN_NOT_APPLICABLE = RunStatus
CONFIRMED, REFUTED, NOTED, NOT_CHECKED = ClaimVerdict

# module lists that hold a model's repeated layers: HF's `layers`/`layer`, `blocks`, GPT-2's `h`,
# Phi-4-multimodal's conformer `encoders`
LAYER_LIST_NAMES = ("layers", "layer", "blocks", "h", "encoders")
LAYER_PATH = re.compile(r"\.(?:" + "|".join(LAYER_LIST_NAMES) + r")\.\d+$")  # a path that ends in one layer

PEFT_PREFIX = "base_model.model."


def strip_peft_prefix(path: str) -> str:
    """A module path as the base model names it (PEFT puts ``base_model.model.`` in front)."""
    return path[len(PEFT_PREFIX):] if path.startswith(PEFT_PREFIX) else path
