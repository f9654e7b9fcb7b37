"""Schema v1, read back: the JSON that ``--json`` writes (``TraceReport.to_dict()``) into typed records, so
that ``bin/trace diff`` and library users work on the same records the tracer builds."""
from __future__ import annotations

from ..errors import TracerError, read_json_object
from .run import LoraLayerRecord, RunRecord, StageRecord, Timing
from .calls import ModuleRecord, TensorMeta
from .diagnosis import LayerKey, SavedModule
from .vocab import RUN_OK, LoraStatus, RunStatus, SavedStatus

SCHEMA_VERSION = 1


def tensor_meta_from_str(text: str):
    """'1x1500x64 float32 cuda:0' -> TensorMeta; anything else (a type name such as 'DynamicCache') stays."""
    parts = text.split(" ")
    if len(parts) not in (2, 3):
        return text
    dims = parts[0]
    if dims == "scalar":
        shape = ()
    elif all(d.isdigit() for d in dims.split("x")):
        shape = tuple(int(d) for d in dims.split("x"))
    else:
        return text
    return TensorMeta(shape, parts[1], parts[2] if len(parts) == 3 else "cpu")


def module_from_dict(d: dict) -> ModuleRecord:
    values = dict(d)
    values["cls"] = values.pop("class")
    values["inputs"] = tuple(map(tensor_meta_from_str, values["inputs"]))
    values["outputs"] = tuple(map(tensor_meta_from_str, values["outputs"]))
    return ModuleRecord(**values)


def run_from_dict(d: dict) -> RunRecord:
    if d["status"] != RUN_OK:
        return RunRecord(RunStatus(d["status"]), reason=d.get("reason"), failed_in=d.get("failed_in"))
    values = {k: v for k, v in d.items() if k not in ("latency_ms", "backward_ms", "stages", "modules", "lora",
                                                      "never_called", "saved_modules", "notes", "timing_noisy",
                                                      "lora_trajectory")}
    values["status"] = RUN_OK
    return RunRecord(
        **values, latency_ms=Timing(**d["latency_ms"]), backward_ms=Timing(**d["backward_ms"]),
        stages={c: StageRecord(**s) for c, s in d["stages"].items()},
        modules=tuple(module_from_dict(m) for m in d["modules"]), never_called=tuple(d["never_called"]),
        lora=tuple(LoraLayerRecord(**{**r, "status": LoraStatus(r["status"])}) for r in d["lora"])
        if d.get("lora") is not None else None,
        lora_trajectory={LayerKey.parse(k): v for k, v in d["lora_trajectory"].items()}
        if d.get("lora_trajectory") is not None else None,
        saved_modules=tuple(SavedModule(**{**m, "status": SavedStatus(m["status"])}) for m in d["saved_modules"])
        if d.get("saved_modules") else None,
        notes=tuple(d.get("notes", ())))


def read_record(path: str, label: str) -> dict:
    """A tracer JSON record, checked: the runs become RunRecords (the rest stays as written)."""
    data = read_json_object(path, label)
    if data.get("schema_version") != SCHEMA_VERSION or "runs" not in data:
        raise TracerError(f"{label} {path}: not a tracer record with runs (schema_version {SCHEMA_VERSION}; "
                          "written by `bin/trace CLIP --json FILE` without --static-only)")
    try:
        data["runs"] = {name: run_from_dict(run) for name, run in data["runs"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # ValueError: a word not in vocab
        raise TracerError(f"{label} {path}: a run does not match schema_version {SCHEMA_VERSION} ({e})") from None
    return data
