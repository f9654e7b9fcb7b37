"""The diagnosis's records as they cross from diagnose/ (and lora/) to the report: a LoRA layer's key, dead
groups, trajectory flags, modules_to_save copies, broken ties. ``to_dict()`` is their JSON of schema v1."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .calls import _Fields


@dataclass(frozen=True, order=True)
class LayerKey:
    """One LoRA layer x adapter. JSON writes it as ``"path|adapter"`` (lora_trajectory's keys), read back by
    splitting at the last ``|``, as the diagnosis always has."""
    path: str
    adapter: str

    def __str__(self) -> str:
        return f"{self.path}|{self.adapter}"

    @classmethod
    def parse(cls, text: str) -> LayerKey:
        path, _, adapter = text.rpartition("|")
        return cls(path, adapter)


class _Row(_Fields):
    """A record that was a dict before it was typed: ``row["status"]`` still reads its field, for code
    written against the dicts."""

    def __getitem__(self, key: str):
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class DeadGroup(_Row):
    """LoRA layers without a gradient, one status, paths collapsed (``…layers.0-31.self_attn.{q,k}_proj``)."""
    pattern: str
    status: str  # vocab.LoraStatus
    count: int
    cause: str
    hint: str
    by_design: bool  # the strategy never runs them (the LM under audio_tower): a fact, not a fault


@dataclass(frozen=True)
class TrajectoryFlag(_Row):
    """A layer whose course over the AdamW steps says something."""
    path: str
    adapter: str
    flag: str  # "dies", "explodes", "never_moves"
    side: str | None  # "A" or "B"; None for never_moves


@dataclass(frozen=True)
class SavedModule(_Row):
    """A PEFT ``modules_to_save`` copy after the traced pass: did it run (not the original), learn."""
    path: str
    adapter: str
    executed: bool
    original_ran: bool
    grad_norm: float | None
    status: str  # vocab.SavedStatus
    cause: str
    hint: str


@dataclass(frozen=True)
class BrokenTie(_Row):
    """One side of tied weights changed by PEFT (a LoRA layer or a modules_to_save copy), the other not."""
    module: str
    change: str  # "LoRA" or "modules_to_save copy"
    tied_to: str
