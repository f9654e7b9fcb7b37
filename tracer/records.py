"""Records of a traced run: plain dataclasses, turned into JSON-ready dicts only when asked."""
from __future__ import annotations

from dataclasses import asdict, dataclass


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
