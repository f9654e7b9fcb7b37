"""Reporting: the static report (steps 1-8, the module tree) and the clip rendered as text sections
(tabulate); the clip record."""
from __future__ import annotations

from tabulate import tabulate

from ..static.discovery import StaticReport
from ..records.clip import ClipRecord
from .runs import fmt_bytes
from .sections import Section
from ..records.vocab import COMPONENTS


def _n(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return "-" if value is None else str(value)
    return f"{value:,}"


class _Steps:
    """Builds the static report's sections: ``start`` a step, ``add`` its lines."""

    def __init__(self):
        self.steps: list = []

    def start(self, number: int, title: str) -> None:
        self.steps.append((f"STEP {number}", title, []))

    def add(self, text: str) -> None:
        self.steps[-1][2].append(text)

    def lines_of(self, texts: list) -> None:
        self.steps[-1][2].extend(texts)

    def sections(self) -> list:
        return [Section(tag, title, "\n".join(lines)) for tag, title, lines in self.steps]


def render_static(report: StaticReport, depth: int = 4) -> list:
    """The 8 steps of the static structure report, one Section each."""
    steps = _Steps()
    steps.start(1, "Model class and module")
    steps.add(tabulate([["class", report.model_class], ["module", report.model_module],
                         ["parameters", f"{_n(report.params_total)} total, {_n(report.params_trainable)} trainable"]]
                        + _quantized_row(report.quantization), tablefmt="plain"))

    steps.start(2, "Top-level attributes")
    rows = [[a.name, "module" if a.is_module else "config", a.cls, _n(a.params) if a.is_module else ""]
            for a in report.top_level]
    steps.add(tabulate(rows, headers=["name", "kind", "class", "params"], tablefmt="simple"))

    steps.start(3, "Audio encoder")
    enc = report.audio_encoder
    if enc is None and report.audio_codec:
        steps.add(f"  none: the audio front end is a codec, {report.audio_codec}: audio becomes discrete codes "
                  "the LM reads as tokens, so there is no encoder to run or train alone")
    elif enc is None:
        steps.add("  none found (searched names " "audio_tower, audio_encoder, audio_model, speech_encoder, … "
                   "and classes *AudioEncoder/*SpeechEncoder/WhisperEncoder)")
    else:
        steps.add(f"  found {enc.path}: {enc.cls}  (by {enc.found_by})")
        steps.add(f"  layers: {enc.num_layers} × {enc.layer_class}, hidden size {_n(enc.hidden_size)}")
        steps.add("  submodules: " + ", ".join(f"{n} ({c})" for n, c in enc.submodules))
        steps.add("  first layer: " + ", ".join(f"{n} ({c})" for n, c in enc.layer_children))

    steps.start(4, "Language model")
    lm = report.language_model
    if lm is None:
        steps.add("  none found")
    else:
        steps.add(f"  found {lm.path}: {lm.cls}  (by {lm.found_by})")
        steps.add(f"  layers: {lm.num_layers}, hidden size {_n(lm.hidden_size)}")

    steps.start(5, "Config analysis")
    steps.add(_render_config(report.config))

    steps.start(6, f"Module tree (depth ≤ {depth}; repeated layers collapsed)")
    steps.add(render_tree(report.tree, depth))
    steps.add("  by component: " + ", ".join(f"{c} {_n(report.components[c])}" for c in COMPONENTS))
    steps.lines_of(_weights_lines(report.quantization))
    for path, shares_with in report.shared_parameters:
        steps.add(f"  shared: {path} is {shares_with} (counted once)")

    steps.start(7, "LoRA candidates (Linear leaves by name and component)")
    rows = [[name] + [_n(per.get(c)) if per.get(c) else "" for c in COMPONENTS]
            + [report.lora_examples[name][0]] for name, per in report.lora_candidates.items()]
    steps.add(tabulate(rows, headers=["name", *COMPONENTS, "e.g."], tablefmt="simple"))
    for gap in report.target_gaps:
        hint = f"; it uses {' / '.join(gap.use_instead)}" if gap.use_instead else ""
        steps.add(f"  ! '{gap.name}' matches nothing in {gap.component}{hint}")

    steps.start(8, "Encoding strategy")
    s = report.strategy
    steps.add(f"  chosen: {s.chosen}")
    steps.add(f"  reason: {s.reason}")
    steps.add(f"  encoding hidden size: {_n(s.hidden_size)}")
    steps.add(f"  LoRA target names in what it runs: {', '.join(s.lora_targets) or 'none'}")
    return steps.sections()


def _quantized_row(quantization: dict) -> list:
    """Step 1's row on a quantized base (none otherwise, so a full-precision report reads as before)."""
    parts = [f"{c} {'/'.join(q.formats)}" for c, q in quantization.items() if q.quantized]
    if not parts:
        return []
    compute = sorted({q.compute_dtype or "the input's dtype" for q in quantization.values() if q.quantized})
    return [["quantized", f"bitsandbytes: {', '.join(parts)}; compute {', '.join(compute)}"]]


def _weights_lines(quantization: dict) -> list:
    """Step 6's per-component weights on a quantized base: format, layers, compute dtype, real bytes."""
    if not any(q.quantized for q in quantization.values()):
        return []
    rows = [[f"    {component}", fmt_bytes(q.weight_bytes),
             f"{'/'.join(q.formats)}, {q.quantized_layers} quantized layer{'s' * (q.quantized_layers != 1)} "
             f"({_n(q.quantized_values)} values), compute {q.compute_dtype or 'the input dtype'}"
             if q.quantized else "not quantized"] for component, q in quantization.items() if q.weight_bytes]
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return ["  weights in memory (quant states included):"] + [
        f"{a.ljust(width[0])}  {b.rjust(width[1])}  {c}" for a, b, c in rows]


def _render_config(config: dict) -> str:
    if not config:
        return "  no config object"
    columns = [("model", config["values"])] + [(k, v["values"]) for k, v in config["sub_configs"].items()]
    keys = list(dict.fromkeys(k for _, values in columns for k in values))
    rows = [[key] + [_n(values.get(key)) if key in values else "" for _, values in columns] for key in keys]
    classes = [config["class"]] + [v["class"] for v in config["sub_configs"].values()]
    headers = ["key"] + [f"{name} ({cls})" for (name, _), cls in zip(columns, classes)]
    return tabulate(rows, headers=headers, tablefmt="simple")


def render_tree(tree: list, depth: int) -> str:
    """Indented tree; siblings ``0..N`` of one class and size collapse into ``0-N ×N+1``."""
    children: dict[str, list] = {}
    for row in tree:
        if row.path:
            parent = row.path.rpartition(".")[0]
            children.setdefault(parent, []).append(row)
    root = tree[0]
    lines = [[f"{root.cls}", _n(root.params)]]

    def walk(path: str, prefix: str, level: int) -> None:
        if level > depth:
            return
        kids = _collapse_siblings(children.get(path, []))
        for i, (row, label, count) in enumerate(kids):
            last = i == len(kids) - 1
            params = _n(row.params) + (" each" if count > 1 else "")
            lines.append([f"{prefix}{'└── ' if last else '├── '}{label}: {row.cls}", params])
            walk(row.path, prefix + ("    " if last else "│   "), level + 1)

    walk("", "", 1)
    # NB: by hand, not tabulate: its plain format strips a cell's leading blanks, which pulled the children of
    # a last child with children ("    ├── ...") back to the left edge (the 4.x layout's last language_model)
    lines.insert(0, ["module", "params"])
    left, right = (max(len(line[i]) for line in lines) for i in (0, 1))
    return "\n".join(f"{name.ljust(left)}  {params.rjust(right)}" for name, params in lines)


def _collapse_siblings(rows: list) -> list:
    out, i = [], 0
    while i < len(rows):
        row = rows[i]
        name = row.path.rpartition(".")[2]
        j = i + 1
        if name.isdigit():
            while (j < len(rows) and rows[j].path.rpartition(".")[2].isdigit()
                   and rows[j].cls == row.cls and rows[j].params == row.params):
                j += 1
        if j - i > 1:
            last = rows[j - 1].path.rpartition(".")[2]
            out.append((row, f"{name}-{last} ×{j - i}", j - i))
        else:
            out.append((row, name, 1))
        i = j
    return out


def clip_record(info, inputs) -> ClipRecord:
    """The clip record: the file, what was done to it, and its cost in frames and tokens."""
    acc = inputs.accounting
    return ClipRecord(info, acc.mel_frames, acc.mel_frames_padded, acc.encoder_frames, acc.audio_tokens,
                      acc.padded_fraction, acc.length_function, inputs.template, inputs.prompt_tokens,
                      inputs.target_tokens, inputs.audio_in_lm)


def render_clip(info, inputs) -> Section:
    acc = inputs.accounting
    rows = [
        ["file", f"{info.path} ({info.format} {info.subtype}, {info.source_sample_rate} Hz, "
                 f"{info.source_channels} ch, {info.duration_s:.2f} s)"],
        ["used", f"{info.offset_s:g}-{info.offset_s + info.used_duration_s:.2f} s at {info.sample_rate} Hz mono "
                 f"({info.samples:,} samples), {info.dropped_s:.2f} s dropped"],
        ["level", f"peak {info.peak:.3f}, RMS {info.rms:.3f}, clipped {info.clipped_fraction:.2%}"],
        ["encoder input", f"{acc.mel_frames:,} mel frames of {acc.mel_frames_padded:,} "
                          f"({acc.padded_fraction:.1%} padding)"],
        ["audio tokens", f"{_n(acc.audio_tokens)} (encoder frames {_n(acc.encoder_frames)}; "
                         f"by {acc.length_function})"] if inputs.audio_in_lm else
        ["encoder frames", f"{_n(acc.encoder_frames)} hold the clip (by {acc.length_function}); no audio "
                           "tokens in the LM: its decoder cross-attends the encoder"],
    ]
    if inputs.full is not None and inputs.audio_in_lm:
        rows.append(["full_forward text", f"{inputs.prompt_tokens:,} prompt tokens (audio included) + "
                                          f"{inputs.target_tokens:,} target tokens, {inputs.template}"])
    elif inputs.full is not None:
        rows.append(["full_forward text", f"{inputs.target_tokens:,} decoder tokens, {inputs.template}"])
    out = [tabulate(rows, tablefmt="plain")] + [f"  ! {w}" for w in info.warnings]
    return Section("CLIP", "The audio as the model receives it", "\n".join(out))
