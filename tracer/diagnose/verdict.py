"""The answer first: which LoRA layers learn, which do not and why, in a few lines. Works on LoRA layer
records or their JSON dicts, so the terminal report, the Markdown and the training callback say the same."""
from __future__ import annotations

from ..module_paths import collapse_paths, short
from ..records.vocab import Component, LoraStatus, Strategy

LEARNING = (LoraStatus.OK, LoraStatus.ZERO_INIT)  # zero_init: a fresh adapter before its first step, expected


def _get(record, key):
    return record[key] if isinstance(record, dict) else getattr(record, key)


def by_design(strategy: str | None, record) -> bool:
    """A fact of the strategy, not a fault: audio_tower runs the audio encoder alone, so nothing else runs."""
    return (strategy == Strategy.AUDIO_TOWER and _get(record, "status") == LoraStatus.NOT_EXECUTED
            and _get(record, "component") != Component.AUDIO_ENCODER)


def problem_groups(records, strategy: str | None = None) -> list[dict]:
    """Layers that do not learn (by-design ones left out), grouped by status and cause, paths collapsed:
    ``{"pattern", "status", "count", "components", "cause", "hint"}``, largest first."""
    groups: dict = {}
    for r in records:
        if _get(r, "status") in LEARNING or by_design(strategy, r):
            continue
        key = (_get(r, "status"), _get(r, "cause"), _get(r, "hint"))
        groups.setdefault(key, []).append(r)
    out = []
    for (status, cause, hint), rs in groups.items():
        patterns = collapse_paths(dict.fromkeys(_get(r, "path") for r in rs))
        out.append({"pattern": ", ".join(short(p) for p, _ in patterns[:2]) + (" …" if len(patterns) > 2 else ""),
                    "status": status, "count": len(rs), "components": sorted({_get(r, "component") for r in rs}),
                    "cause": cause, "hint": hint})
    return sorted(out, key=lambda g: -g["count"])


def verdict_lines(lora_by_strategy: dict, notes: list | tuple = ()) -> list[str]:
    """Two or three lines: what learns, what does not (the largest group's cause and fix), what is by
    design, how many notes follow. ``lora_by_strategy``: strategy (or "step N") -> LoRA layer records."""
    learning, design, problems = [], [], []
    for strategy, records in lora_by_strategy.items():
        records = list(records or ())
        if not records:
            continue
        good = sum(_get(r, "status") in LEARNING for r in records)
        learning.append(f"{good} of {len(records)} under {strategy}")
        skipped = [r for r in records if by_design(strategy, r)]
        if skipped:
            components = ", ".join(sorted({_get(r, "component") for r in skipped}))
            design.append(f"under {strategy} the {len(skipped)} {components} layers do not run: by design, that "
                          "strategy runs the audio encoder alone")
        problems += [(strategy, g) for g in problem_groups(records, strategy)]
    if not learning:
        return ["no LoRA layer was traced"]
    lines = []
    if problems:
        count = sum(g["count"] for _, g in problems)
        kinds = ", ".join(f"{g['status']} ×{g['count']} ({'/'.join(g['components'])}, {s})" for s, g in problems[:3])
        lines.append(f"NOT LEARNING: {count} LoRA layer(s): {kinds}" + (" …" if len(problems) > 3 else ""))
        strategy, worst = problems[0]
        lines.append(f"  why: {worst['cause']}" + (f"; fix: {worst['hint']}" if worst["hint"] else ""))
        lines.append("  learning: " + "; ".join(learning))
    else:
        lines.append("LEARNING: every LoRA layer that runs gets a gradient (" + "; ".join(learning) + ")")
    lines += [f"  {d}" for d in design]
    if notes:
        lines.append(f"  {len(notes)} note(s) to read: " + "; ".join(n.split(":")[0] for n in notes[:3])
                     + (" …" if len(notes) > 3 else ""))
    return lines
