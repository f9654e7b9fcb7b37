"""The Chrome/Perfetto trace: one file, or one per rank and a job file under torchrun."""
from __future__ import annotations

from ..module_paths import short
from ..records.schema import SCHEMA_VERSION
from ..files import write_atomic


def chrome_trace(runs: dict) -> dict:
    """Trace Event JSON from RunRecords kept with their calls: one process per strategy; forward, backward and recompute tracks; one complete
    event per module call, nested by time (Perfetto and chrome://tracing open it)."""
    events = []
    for pid, (name, run) in enumerate(runs.items(), start=1):
        if run.ok and run.calls is not None:
            events += call_events(run.calls, pid, name)
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"tool": "tracer", "schema_version": SCHEMA_VERSION}}


def call_events(calls, pid: int, name: str, offset_ns: int = 0, first_tid: int = 1, prefix: str = "") -> list:
    """Process ``pid`` (named ``name``; None: named elsewhere) with three tracks from ``first_tid``, and an
    event per forward call and backward window (times in µs, shifted by ``offset_ns``)."""
    events = [] if name is None else [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}]
    forward, backward, recompute = first_tid, first_tid + 1, first_tid + 2
    for tid, track in ((forward, "forward"), (backward, "backward"), (recompute, "recompute (checkpointing)")):
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": prefix + track}})
    for call in calls:
        args = {"inputs": [str(m) for m in call.inputs], "outputs": [str(m) for m in call.outputs],
                "output_bytes": call.output_bytes, "saved_bytes": call.saved_bytes,
                "grad_enabled": call.grad_enabled, "memory_delta_bytes": call.memory_delta_bytes,
                "peak_bytes": call.peak_bytes}
        label = short(call.path) or "(root)"
        events.append({"name": label, "cat": "recompute" if call.recompute else "forward", "ph": "X",
                       "ts": (offset_ns + call.start_ns) / 1e3, "dur": (call.end_ns - call.start_ns) / 1e3,
                       "pid": pid, "tid": recompute if call.recompute else forward, "args": args})
        start, end = call.backward_start_ns, call.backward_end_ns
        if start is not None and end is not None and end >= start:
            events.append({"name": label, "cat": "backward", "ph": "X", "ts": (offset_ns + start) / 1e3,
                           "dur": (end - start) / 1e3, "pid": pid, "tid": backward, "args": {}})
    return events


def rank_trace(calls_by_name: dict, info: dict, origins: dict) -> dict:
    """One rank's Chrome trace as Holistic Trace Analysis reads a job: ``distributedInfo`` (rank, world
    size, backend) at the top, times on the wall clock (each traced pass from its ``origins`` entry) so the
    ranks' files line up; the rank is the process (pid), each traced pass three tracks of it."""
    rank = info["rank"]
    events = [{"ph": "M", "name": "process_name", "pid": rank, "args": {"name": f"rank {rank}"}}]
    for index, (name, calls) in enumerate(calls_by_name.items()):
        prefix = f"{name} " if len(calls_by_name) > 1 else ""
        events += call_events(calls, rank, None, origins[name], first_tid=1 + 3 * index, prefix=prefix)
    return {"traceEvents": events, "displayTimeUnit": "ms", "distributedInfo": dict(info),
            "otherData": {"tool": "tracer", "schema_version": SCHEMA_VERSION}}


def write_job_traces(directory, calls_by_name: dict, origins: dict) -> list:
    """Each rank: ``DIR/rank{R}.json`` (rank_trace); rank 0 also ``DIR/perfetto/job.json``, every rank's
    events in one file (a subdirectory: HTA reads every JSON file of DIR as a rank's). A collective under
    a process group. Returns the paths this rank wrote."""
    import json
    from pathlib import Path

    from ..collect.sharding import gather_to_zero, rank_info
    info = rank_info() or {"rank": 0, "world_size": 1, "backend": None}
    trace = rank_trace(calls_by_name, info, origins)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"rank{info['rank']}.json"]
    write_atomic(str(written[0]), lambda tmp: Path(tmp).write_text(json.dumps(trace)))
    everyone = gather_to_zero(trace["traceEvents"])
    if everyone is not None:
        job = {"traceEvents": [e for events in everyone for e in events], "displayTimeUnit": "ms",
               "otherData": {**trace["otherData"], "world_size": info["world_size"], "backend": info["backend"]}}
        (directory / "perfetto").mkdir(exist_ok=True)
        written.append(directory / "perfetto" / "job.json")
        write_atomic(str(written[1]), lambda tmp: Path(tmp).write_text(json.dumps(job)))
    return [str(p) for p in written]
