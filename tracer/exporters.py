"""Exporters: the Chrome/Perfetto trace (one file, or one per rank and a job file under torchrun) and a
PNG plot; atomic writes (temp file, rename) that follow the umask."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .module_paths import short
from .schema import SCHEMA_VERSION
from .vocab import LAYER_LIST_NAMES, LAYER_PATH


def _umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)  # elsewhere the only way to read it is to set it: straight back
        os.umask(mask)
        return mask


def follow_umask(root) -> None:
    """Give the directory ``root`` and everything in it the modes a plain open() or mkdir() gives (0666 or
    0777 less the umask): writers that go through temp files (transformers' safetensors, mkstemp,
    mkdtemp) leave theirs 0600 or 0700, unreadable to the rest of a group that shares a cache."""
    mask = _umask()
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o777 & ~mask)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):  # a link's mode is its target's business
                os.chmod(path, 0o666 & ~mask)


def write_atomic(path: str, write) -> None:
    """``write(tmp_path)`` fills a temp file in the target's directory, then it replaces ``path`` at once."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        # NB: mkstemp makes 0600 files; the result should have the mode a plain open() gives (umask applies)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    from .distributed import gather_to_zero, rank_info
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


PLOT_SIZE = (10, 14)  # inches; at PLOT_DPI that is 1000 x 1400 pixels
PLOT_DPI = 100
STATUS_COLOURS = {"ok": "tab:green", "zero_init": "tab:olive", "not_executed": "tab:gray", "bypassed": "magenta",
                  "frozen": "tab:blue",
                  "no_grad_mode": "tab:purple", "off_loss_path": "tab:orange", "disabled": "tab:brown",
                  "zero_grad": "tab:pink", "nonfinite": "tab:red", "loss_masked": "tab:cyan",
                  "not_in_optimizer": "darkred", "not_updated": "black"}


def plot(runs: dict, path: str) -> None:
    """Per-layer forward/backward time, LoRA grad norms coloured by status, and the strategy comparison,
    from the RunRecords by strategy."""
    try:
        import matplotlib
    except ImportError:
        from .errors import TracerError
        raise TracerError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = {n: r for n, r in runs.items() if r.ok}
    fig, (layers_ax, lora_ax, steps_ax, cmp_ax) = plt.subplots(4, 1, figsize=PLOT_SIZE, dpi=PLOT_DPI)
    main = ok.get("full_forward") or next(iter(ok.values()), None)
    if main:
        rows = [m for m in main.modules if m.executed and LAYER_PATH.search(m.path)]
        xs = range(len(rows))
        layers_ax.bar([x - 0.2 for x in xs], [m.forward_ms for m in rows], 0.4, label="forward")
        layers_ax.bar([x + 0.2 for x in xs], [m.backward_ms or 0 for m in rows], 0.4, label="backward")
        layers_ax.set_xticks(list(xs), [_layer_label(m.path) for m in rows], rotation=90, fontsize=7)
        layers_ax.legend()
    layers_ax.set_ylabel("ms")
    layers_ax.set_title("per-layer time (" + ("full_forward" if "full_forward" in ok else "first strategy") + ")")
    # one x position per LoRA layer of the strategy with the most, named as enc.3.q_proj
    layers = max((run.lora or () for run in ok.values()), key=len, default=())
    position = {(r.path, r.adapter): i for i, r in enumerate(layers)}
    for marker, (name, run) in zip("os", ok.items()):
        lora = [r for r in run.lora or () if (r.path, r.adapter) in position]
        for status in dict.fromkeys(r.status for r in lora):
            picked = [r for r in lora if r.status == status]
            lora_ax.scatter([position[(r.path, r.adapter)] for r in picked],
                            [max(r.grad_norm_B or 0, 1e-12) for r in picked],
                            marker=marker, color=STATUS_COLOURS.get(status, "black"), label=f"{name}: {status}")
    if layers:
        lora_ax.set_xticks(range(len(layers)), [lora_label(r.path, r.component) for r in layers], rotation=90,
                           fontsize=max(3, min(7, 700 // len(layers))))
    lora_ax.set_yscale("log")
    lora_ax.set_ylabel("|grad lora_B| (1e-12 = none)")
    lora_ax.set_title("LoRA gradient norm per layer, coloured by status")
    if lora_ax.get_legend_handles_labels()[0]:
        lora_ax.legend(fontsize=7)
    metrics = [("forward ms", lambda r: r.latency_ms.median), ("backward ms", lambda r: r.backward_ms.median),
               ("peak MiB", lambda r: (r.peak_memory_bytes or 0) / 2**20)]
    width = 0.8 / max(len(ok), 1)
    for k, (name, run) in enumerate(ok.items()):
        cmp_ax.bar([i + k * width for i in range(len(metrics))], [get(run) for _, get in metrics], width, label=name)
    cmp_ax.set_xticks([i + width * (len(ok) - 1) / 2 for i in range(len(metrics))], [m for m, _ in metrics])
    _plot_steps(steps_ax, ok)
    cmp_ax.set_title("strategies compared")
    if ok:
        cmp_ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=PLOT_DPI))
    plt.close(fig)


def _plot_steps(ax, runs: dict) -> None:
    """Over the --steps: the median |grad lora_B| per strategy and component (solid) and the median update
    ratio of lora_B (dashed, right axis)."""
    from .diagnosis import step_median, trajectories_by_component
    right = ax.twinx()
    for name, run in runs.items():
        for component, layers in trajectories_by_component(run).items():
            steps = [p["step"] for p in layers[0]]
            grad = [step_median(layers, i, "grad_norm_B") for i in range(len(steps))]
            ratio = [step_median(layers, i, "update_ratio_B") for i in range(len(steps))]
            label = f"{name} {COMPONENT_TAGS.get(component, component)}"
            ax.plot(steps, [float("nan") if g is None else g for g in grad], marker="o", label=label)
            right.plot(steps, [float("nan") if r is None else r for r in ratio], linestyle="--", alpha=0.6)
    ax.set_xlabel("AdamW step on the clip")
    ax.set_ylabel("median |grad lora_B| (log)")
    if ax.get_legend_handles_labels()[0]:
        ax.set_yscale("log")  # the two strategies' losses differ in scale by orders of magnitude
        ax.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel("median update ratio B (dashed)")
    ax.set_title("LoRA over the steps (--steps)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no steps taken (--steps 0, or no LoRA)", ha="center", va="center", transform=ax.transAxes)


COMPONENT_TAGS = {"audio_encoder": "enc", "language_model": "lm", "projector": "proj", "head": "head"}
_LAYER_INDEX = re.compile(r"\.(?:" + "|".join(LAYER_LIST_NAMES) + r")\.(\d+)(?:\.|$)")


def lora_label(path: str, component: str) -> str:
    """A LoRA layer's short name for an axis: 'enc.3.q_proj', 'lm.0.down_proj', 'head.lm_head'."""
    tag = COMPONENT_TAGS.get(component, "other")
    match = _LAYER_INDEX.search(path)
    leaf = path.rpartition(".")[2]
    return f"{tag}.{match.group(1)}.{leaf}" if match else f"{tag}.{leaf}"


def _layer_label(path: str) -> str:
    parts = short(path).split(".")
    owner = "enc" if "audio" in path or "encoder" in path else "lm"
    return f"{owner}.{parts[-1]}"
