"""Records of module calls and modules: what a module got and gave, its times, memory and gradients.
Shapes stay tuples of ints until they are rendered; ``to_dict()`` gives the JSON of schema v1."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TensorMeta:
    """What a module got or gave: a tensor's shape, dtype and device. Not a tensor: only its description."""
    shape: tuple
    dtype: str  # "float32"
    device: str  # "cpu", "cuda:0"

    def __str__(self) -> str:  # '1x1500x64 float32' (the device only when not the CPU)
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{dims} {self.dtype}" + ("" if self.device == "cpu" else f" {self.device}")


class _Fields:
    """A record whose JSON object is its fields as they are."""

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_meta(meta):
    """A TensorMeta from the tracer's (shape, dtype, device) triple; a type name stays a string."""
    if isinstance(meta, str):
        return meta
    shape, dtype, device = meta
    return TensorMeta(tuple(int(d) for d in shape), str(dtype).replace("torch.", ""), str(device))


def describe(meta) -> str:
    """'1x128x3000 float32' for a TensorMeta or a (shape, dtype, device) triple; a type name as it is."""
    return str(tensor_meta(meta)) if isinstance(meta, tuple) else str(meta)


def _described(items) -> list:
    return [str(m) for m in items]


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
    inputs: tuple  # TensorMeta or a type name, per input
    outputs: tuple
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    backward_start_ns: int | None
    backward_end_ns: int | None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["inputs"], d["outputs"] = _described(self.inputs), _described(self.outputs)
        return d


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
    inputs: tuple  # of the first call: TensorMeta or a type name, per input
    outputs: tuple
    outputs_require_grad: bool
    output_bytes: int
    saved_bytes: int
    memory_delta_bytes: int | None
    peak_bytes: int | None
    grad_output_norm: float | None
    # its own part of the backward: backward_ms less the windows opened inside it (rollup.own_backward_ns);
    # these add up over modules, backward_ms windows do not
    self_backward_ms: float | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["class"] = d.pop("cls")
        d["inputs"], d["outputs"] = _described(self.inputs), _described(self.outputs)
        return d
