"""What a Tracer collected, as the roll-ups read it: the slots of a raw call record and ``Collected``.
Imports nothing of the package, so the collector (collect/hooks.py) and the roll-ups (rollup/calls.py) both stand on it."""
from __future__ import annotations

from dataclasses import dataclass, field

# Slots of one call record while tracing (a list: cheaper than an object on the hot path).
(_IDX, _PARENT, _START, _END, _GRAD, _RECOMPUTE, _INPUTS, _OUTPUTS, _OUT_BYTES, _OUT_RG, _SAVED,
 _MEM_BEFORE, _MEM_AFTER, _PEAK, _BW_START, _BW_END, _NORMS) = range(17)


@dataclass
class Collected:
    """What a Tracer collected: per module index its path, class and whether it is a container; per call
    the raw slots (``_IDX`` … ``_NORMS``, times in ns; ``_NORMS`` is None until a gradient reaches an output,
    then the norms kept, if any); parameter gradient times; the clock used."""
    paths: list
    classes: list
    containers: list
    calls: list
    param_times: list
    clock: str
    failed_in: str | None
    steps: dict | None = None  # (LoRA path, adapter) -> optimizer_watch.StepFacts, with an optimizer
    supervised_tokens: list | None = None  # per sample of the root calls given labels: labels that are not -100
    grad_off: dict = field(default_factory=dict)  # call id -> how autograd was off (its caller had it on)
    weights_saved: frozenset = frozenset()  # LoRA layer paths whose base weight autograd saved
    compiled: bool = False  # a torch.compile'd model, traced eagerly
    origin_unix_ns: int = 0  # the wall clock when the tracer was entered (times are ns since then)

    @property
    def labels_all_masked(self) -> bool:
        """Labels reached the model and every one is -100: the loss supervises nothing."""
        return bool(self.supervised_tokens) and not any(self.supervised_tokens)


@dataclass(frozen=True)
class AutogradOff:
    """Where autograd was switched off above a module that ran without it: ``boundary``, the outermost call
    without autograd; ``caller``, the module whose forward called it (None: the user's code); ``how``:
    ``no_grad``, ``inference_mode`` or ``function:NAME`` (an autograd Function ran it: a reentrant checkpoint)."""
    boundary: str
    caller: str | None
    how: str


def autograd_off(collected: Collected) -> dict:
    """path -> AutogradOff for every module whose first call ran with autograd off (checkpoint replays left out)."""
    calls, paths, out = collected.calls, collected.paths, {}
    for cid, c in enumerate(calls):
        path = paths[c[_IDX]]
        if c[_GRAD] or c[_RECOMPUTE] or path in out:
            continue
        top = cid
        while top not in collected.grad_off and calls[top][_PARENT] >= 0:
            top = calls[top][_PARENT]
        parent = calls[top][_PARENT]
        out[path] = AutogradOff(paths[calls[top][_IDX]], paths[calls[parent][_IDX]] if parent >= 0 else None,
                                collected.grad_off.get(top, "no_grad"))
    return out


def grads_arrived(collected: Collected) -> frozenset:
    """Paths of the modules a gradient reached at an output (whether or not its norm was kept)."""
    return frozenset(collected.paths[c[_IDX]] for c in collected.calls if c[_NORMS] is not None)
