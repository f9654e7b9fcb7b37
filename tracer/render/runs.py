"""Text rendering of the runtime part: per-strategy runs, stage rollups, slowest modules, the comparison."""
from __future__ import annotations

from tabulate import tabulate

from ..module_paths import label, short
from ..records.vocab import LoraStatus, SavedStatus
from .sections import Section


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def fmt_ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_run(name: str, run, top: int = 8, verbose: bool = False) -> Section:
    """One strategy's RunRecord: totals, stages, and the slowest modules (or every one with ``verbose``)."""
    if not run.ok:
        where = f" (in {run.failed_in})" if run.failed_in is not None else ""
        return Section(f"RUN {name}", f"{run.status.upper()}: {run.reason}{where}")
    lat, bwd = run.latency_ms, run.backward_ms
    out = [f"  untraced: forward {lat.median:.2f} ms (min {lat.min:.2f}, max {lat.max:.2f}, "
           f"{lat.runs} runs), backward {bwd.median:.2f} ms (min {bwd.min:.2f}, max {bwd.max:.2f}); "
           f"peak memory {fmt_bytes(run.peak_memory_bytes)} ({run.memory_kind}){_split(run.memory_split)}",
           _traced_line(run),
           f"  executed {run.modules_executed} of {run.modules_registered} modules, "
           f"{run.params_executed:,} parameters"]
    if run.note:
        out.append(f"  ! {run.note}")
    rows = [[c, fmt_ms(s.forward_ms), fmt_ms(s.backward_ms), fmt_bytes(s.saved_bytes), f"{s.params:,}",
             s.modules_executed] for c, s in run.stages.items() if s.modules_executed]
    out.append(tabulate(rows, headers=["stage", "self fwd ms", "bwd ms", "saved for bwd", "params", "modules"],
                        tablefmt="simple", disable_numparse=True))
    executed = [m for m in run.modules if m.executed]
    chosen = executed if verbose else sorted(executed, key=lambda m: -m.self_forward_ms)[:top]
    title = "every executed module" if verbose else f"slowest {len(chosen)} modules by self forward time"
    out.append(f"  {title}:")
    rows = [[short(m.path) or "(root)", m.cls, m.calls, fmt_ms(m.self_forward_ms), fmt_ms(m.backward_ms),
             ", ".join(map(str, m.outputs[:2])), fmt_bytes(m.saved_bytes)] for m in chosen]
    out.append(tabulate(rows, headers=["module", "class", "calls", "self fwd ms", "bwd ms", "output",
                                       "saved"], tablefmt="simple", disable_numparse=True))
    return Section(f"RUN {name}", f"loss {run.loss_kind} = {run.loss:.4g}", "\n".join(out))


def _traced_line(run) -> str:
    if not run.timing_noisy:
        return (f"  traced pass: {run.traced_ms:.2f} ms = {run.traced_over_untraced:.2f}× untraced (the tracer's "
                f"own overhead); clock: {run.clock}")
    spreads = [f"{kind} max/min {t.spread:.2f}×" for kind, t in (("forward", run.latency_ms),
                                                                   ("backward", run.backward_ms)) if t.noisy]
    if run.traced_over_untraced is not None and run.traced_over_untraced < 1:
        spreads.append(f"the traced pass took {run.traced_over_untraced:.2f}× the untraced one")
    return (f"  traced pass: {run.traced_ms:.2f} ms; NOISY timings ({', '.join(spreads)}): no overhead figure from "
            f"them; rerun on an idle machine or with more --repeats; clock: {run.clock}")


def _split(split: dict | None) -> str:
    if not split:
        return ""
    return (f": {fmt_bytes(split['activations'])} activations, {fmt_bytes(split['gradients'])} gradients, "
            f"{fmt_bytes(split['temporaries'])} temporaries; weights {fmt_bytes(split['parameters'])} besides")


def render_comparison(runs: dict, comparison, audio_tokens) -> Section:
    tower, full = runs.get("audio_tower"), runs.get("full_forward")
    if not comparison.complete:
        return Section("COMPARISON", "needs both strategies to succeed: " + ", ".join(
            f"{n} {r.status}" for n, r in runs.items()))

    def row(label, get, fmt, ratio, timed=False):
        noisy = timed and (tower.timing_noisy or full.timing_noisy)
        shown = "-" if ratio is None else f"{ratio:.2f}×" + (" (noisy)" if noisy else "")
        return [label, fmt(get(tower)), fmt(get(full)), shown]

    rows = [
        row("forward ms (median)", lambda r: r.latency_ms.median, fmt_ms, comparison.latency_ratio_full_over_tower,
            timed=True),
        row("backward ms (median)", lambda r: r.backward_ms.median, fmt_ms, comparison.backward_ratio_full_over_tower,
            timed=True),
        row("peak memory", lambda r: r.peak_memory_bytes, fmt_bytes, comparison.memory_ratio_full_over_tower),
        row("modules executed", lambda r: r.modules_executed, lambda v: f"{v} of {tower.modules_registered}",
            full.modules_executed / tower.modules_executed if tower.modules_executed else None),
        row("params executed", lambda r: r.params_executed, lambda v: f"{v:,}", comparison.params_ratio_full_over_tower),
        ["audio tokens", str(audio_tokens), str(audio_tokens), ""] if audio_tokens is not None else
        ["audio tokens", "-", "-", "none in the LM: its decoder cross-attends the encoder"],
    ]
    out = [tabulate(rows, headers=["", "audio_tower", "full_forward", "full / tower"], tablefmt="simple",
                    disable_numparse=True),
           "  only full_forward runs: " + (", ".join(short(p) for p in comparison.only_in_full_forward_layers)
                                        or "nothing")]
    return Section("COMPARISON", "full_forward vs audio_tower on the same clip, dtype and device", "\n".join(out))


def render_lora_setup(setup) -> Section:
    return Section("LORA", f"{setup.layers} LoRA layers, r={setup.r}{' (DoRA)' if setup.use_dora else ''}, "
                           f"target_modules {setup.target_modules} from {setup.source}; "
                           f"{setup.trainable_params:,} trainable parameters",
                   "\n".join(f"  ! {note}" for note in setup.notes))


def _no_run(runs: dict) -> str:
    """'audio_tower failed, full_forward not_applicable': why a section has no rows."""
    return ", ".join(f"{n} {r.status}" for n, r in runs.items() if not r.ok) or "no strategy ran"


def render_lora_diagnosis(runs: dict, diagnosis, setup=None) -> Section:
    from ..diagnose.lora_status import STATUSES
    counts = []
    for name, run in runs.items():
        for component, per in (run.lora_summary or {}).items():
            counts.append((name, component, per))
    if not counts:
        return Section("LORA DIAGNOSIS", f"nothing to diagnose: no strategy finished a traced backward "
                                         f"({_no_run(runs)})")
    used = [s for s in STATUSES if any(s in per for _, _, per in counts)]
    rows = [[name, component] + [per.get(s, "") for s in used] for name, component, per in counts]
    out = [tabulate(rows, headers=["strategy", "component", *used], tablefmt="simple", disable_numparse=True)]
    for name, groups in diagnosis.dead_groups.items():
        for g in groups:
            if g.by_design:
                out.append(f"  {short(g.pattern)}: not run under {name} ({g.count}) - by design: that "
                           "strategy runs the audio encoder alone")
                continue
            out.append(f"  {short(g.pattern)}: {g.status} under {name} ({g.count}) - {g.cause}"
                       + (f"; fix: {g.hint}" if g.hint else ""))
    out += _trajectory_lines(runs, diagnosis)
    for name, run in runs.items():
        for m in run.saved_modules or ():
            if m.status != SavedStatus.OK:
                out.append(f"  modules_to_save {short(m.path)} ({m.adapter}): {m.status} under {name} - "
                           f"{m.cause}" + (f"; fix: {m.hint}" if m.hint else ""))
    notes = {}
    for name, run in runs.items():
        for note in run.notes:
            notes.setdefault(note, []).append(name)
    out += [f"  ! {note} (under {', '.join(names)})" for note, names in notes.items()]
    untrained = any(note.startswith("untrained") for note in getattr(setup, "notes", ()))
    if untrained and any(r.ok and any(x.status == LoraStatus.ZERO_INIT for x in r.lora or ()) for r in runs.values()):
        out.append("  ! zero_init here is not a fresh adapter's: the loaded adapter's lora_B are all zero, it was "
                   "saved untrained (see [LORA])")
    elif any(r.ok and any(x.status == LoraStatus.ZERO_INIT for x in r.lora or ()) for r in runs.values()):
        out.append("  zero_init is expected on a fresh adapter: lora_B starts at 0, so lora_A's gradient is "
                   "exactly 0 until the first optimizer step")
    for group in getattr(diagnosis, "not_targeted", ()):
        out.append(f"  not targeted: {short(group['pattern'])} ({group['count']}) in {group['component']} - same "
                   "name as LoRA layers but none attached (layers_to_transform, layers_pattern or a regex left "
                   "them out): intended?")
    for tie in getattr(diagnosis, "broken_ties", ()):
        out.append(f"  ! {tie.module} is tied to {tie.tied_to}, but its {tie.change} changes it alone: the "
                   f"two stop being one matrix in training (adapt both, or neither)")
    for gap in diagnosis.requested_gaps:
        instead = f"; it uses {' / '.join(gap['use_instead'])}" if gap["use_instead"] else ""
        out.append(f"  ! '{gap['name']}' was requested but matches nothing in {gap['component']}{instead}")
    s = diagnosis.suggested_target_modules
    out.append(f"  suggested target_modules for {s['strategy']}: {s['list']}, or the regex r\"{s['regex']}\" "
               f"({s['note']})")
    return Section("LORA DIAGNOSIS", "did each LoRA layer get a gradient in the traced backward?", "\n".join(out))


def _trajectory_lines(runs: dict, diagnosis) -> list:
    """The steps, compactly: per strategy and component the median over its layers at each step."""
    from ..diagnose.lora_status import step_median, trajectories_by_component
    rows = []
    for name, run in runs.items():
        for component, layers in trajectories_by_component(run).items():
            for i in range(len(layers[0])):
                medians = [step_median(layers, i, f) for f in ("grad_norm_A", "grad_norm_B", "update_ratio_A",
                                                              "update_ratio_B")]
                rows.append([name, component, i + 1, *("-" if m is None else f"{m:.3g}" for m in medians)])
    if not rows:
        return []
    out = ["  AdamW steps on the clip (median over each component's layers; the statuses above are the last "
           "step's):",
           tabulate(rows, headers=["strategy", "component", "step", "|grad A|", "|grad B|", "update A",
                                   "update B"], tablefmt="simple", disable_numparse=True)]
    for name, flags in getattr(diagnosis, "trajectory_flags", {}).items():
        for f in flags:
            side = f" (lora_{f.side})" if f.side else ""
            out.append(f"  ! {short(f.path)}{side} {f.flag.replace('_', ' ')} under {name}")
    return out


def render_verdict(runs: dict) -> Section:
    """The answer in a few lines: which LoRA layers learn, which do not and why (diagnose/verdict.py)."""
    from ..diagnose.verdict import verdict_lines
    notes = list(dict.fromkeys(n for run in runs.values() for n in run.notes))
    lines = verdict_lines({name: run.lora for name, run in runs.items() if run.ok and run.lora}, notes)
    return Section("VERDICT", lines[0], "\n".join(lines[1:]))


def render_confirmation(verdicts: list, runs: dict | None = None) -> Section:
    if not verdicts:
        return Section("CONFIRMATION", f"nothing to confirm: no strategy ran to the end ({_no_run(runs or {})})")
    rows = [[v.claim, v.strategy or "", v.claimed, v.observed, v.verdict.upper()] for v in verdicts]
    out = [tabulate(rows, headers=["claim", "strategy", "claimed", "observed", "verdict"], tablefmt="simple",
                    disable_numparse=True)]
    out += [f"  ! {v.claim} ({v.strategy}): {v.todo}" for v in verdicts if v.verdict == "refuted" and v.todo]
    return Section("CONFIRMATION", "the static report checked against what ran (refuted claims first)",
                   "\n".join(out))


def render_ranks(distributed: dict, top: int = 5) -> Section:
    """Each strategy's ranks merged: per stage every rank's forward + backward ms, the slowest rank and its
    skew (slowest over the median); per stage, the modules where its slowest rank loses the time; whether the
    LoRA statuses agree."""
    world = distributed["world_size"]
    blocks = []
    for name, merged in distributed["strategies"].items():
        if "failed_on" in merged:
            blocks.append(f"{name}: not merged: it failed on rank(s) {', '.join(map(str, merged['failed_on']))}")
            continue
        rows = []
        for stage, s in merged["stages"].items():
            totals = [None if f is None else f + (b or 0.0) for f, b in zip(s["forward_ms"], s["backward_ms"])]
            rows.append([stage, *("-" if t is None else f"{t:.2f}" for t in totals),
                         "-" if s["slowest_rank"] is None else s["slowest_rank"],
                         "-" if s["skew"] is None else f"{s['skew']:.2f}×"])
        table = tabulate(rows, headers=["stage", *(f"rank {r} ms" for r in merged["ranks"]), "slowest", "skew"],
                         tablefmt="simple", disable_numparse=True)
        lines = [f"{name}: forward + backward per rank", table, *_time_lost(merged, top)]
        lines += agreement_lines(merged, "  ", top)
        blocks.append("\n".join(lines))
    title = f"{world} ranks ({distributed['backend']}, {distributed['parallel'].upper()}), merged on rank 0"
    return Section("RANKS", title, "\n\n".join(blocks))


def _time_lost(merged: dict, top: int, stages: int = 3) -> list:
    """Per stage that one rank is slowest in (the most time lost first): the modules where that rank loses it,
    each with its own ms over the median. Own times (self forward, own backward) add up to the stage's, so
    the modules named are the stage's and its slowest rank's: with 2 ranks their excesses sum to the stage's.
    Ranked by ms, not by ratio: a tiny module's ratio is noise."""
    import statistics
    lines = []
    lossy = sorted((s["excess_ms"], name, s["slowest_rank"]) for name, s in merged["stages"].items()
                   if s["excess_ms"])[::-1]
    for excess, name, rank in lossy[:stages]:
        lost = []
        for m in merged["modules"]:
            if m["stage"] != name or m["forward_ms"][rank] is None:
                continue
            times = [f + (b or 0.0) for f, b in zip(m["forward_ms"], m["backward_ms"]) if f is not None]
            over = m["forward_ms"][rank] + (m["backward_ms"][rank] or 0.0) - statistics.median(times)
            if over > 0:
                lost.append((over, m["path"]))
        modules = ", ".join(f"{label(path)} +{over:.2f} ms" for over, path in sorted(lost)[::-1][:top])
        where = f", most in {modules}" if modules else ""
        lines.append(f"  {name}: rank {rank} +{excess:.2f} ms over the median{where}")
    return lines


def agreement_lines(merged: dict, indent: str, top: int = 5) -> list:
    """Whether the ranks agree on every LoRA layer's status, or the layers they disagree on, rank by rank."""
    if merged["lora_statuses_agree"]:
        return [f"{indent}LoRA statuses agree across ranks"]
    lines = []
    for d in merged["lora_disagreements"][:top]:
        by_rank = ", ".join(f"rank {r}: {status}" for r, status in zip(merged["ranks"], d["statuses"]))
        lines.append(f"{indent}! ranks disagree on {short(d['path'])} ({by_rank})")
    return lines
