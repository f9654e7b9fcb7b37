"""The PNG plot of the strategies' runs: stage times, the slowest layers, LoRA gradient norms, steps."""
from __future__ import annotations

import re

from ..module_paths import short
from ..records.vocab import LAYER_LIST_NAMES, LAYER_PATH
from ..files import write_atomic


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
        from ..errors import TracerError
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
    from ..diagnose.lora_status import step_median, trajectories_by_component
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
