"""The one rule for a stage's time, used by each run's stage table and by the ranks' merged view: every
module that ran counts toward its component ("other" too), by its own forward time and its own part of the
backward. Own times add up, so a stage's time is its modules' and nothing is counted twice (backward
windows nest and overlap: one stretch, such as a wait in a collective, is in every window around it)."""
from __future__ import annotations


def stage_times(modules, component_of: dict) -> dict:
    """component -> {"forward_ms", "backward_ms"} over the executed modules (ModuleRecords or their JSON
    dicts); backward_ms is None where no module of the stage took part in a backward."""
    stages: dict = {}
    for m in modules:
        get = m.get if isinstance(m, dict) else (lambda key, m=m: getattr(m, key, None))
        if not get("executed"):
            continue
        stage = stages.setdefault(component_of.get(get("path"), "other"), {"forward_ms": 0.0, "backward_ms": None})
        stage["forward_ms"] += get("self_forward_ms")
        own_backward = get("self_backward_ms")
        if own_backward is not None:
            stage["backward_ms"] = (stage["backward_ms"] or 0.0) + own_backward
    return stages
