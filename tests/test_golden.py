"""Golden text of the built-in model's report: the static report exactly, the runtime tables with what
varies from run to run (times, ratios, bytes, losses) masked. Refresh after an intended change with
``python3 -m pytest tests/test_golden.py --update-golden`` and review the diff like code."""
import os
import re

import pytest

from tracer.cli.main import main

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
# a byte count with its unit (the unit changes with the size), or a decimal number (times, ratios, losses,
# gradient norms, in plain or scientific notation)
VARYING = re.compile(r"\b\d[\d,]*(?:\.\d+)? ?(?:B|KiB|MiB|GiB)\b|\d+(?:\.\d+)?e[-+]\d+|\d[\d,]*\.\d+")


def mask(text: str) -> str:
    """Numbers that vary become '#'; tables ranked by time keep only their header; runs of spaces and table
    rules shrink, since column widths follow the widest number."""
    lines, ranked = [], False
    for line in text.splitlines():
        if ranked:  # the ranked table runs to the next blank line
            ranked = bool(line.strip())
            if ranked:
                continue
        if "slowest" in line and "by self forward time" in line:
            ranked = True
        if line.startswith("peak memory "):  # on CPU a run's RSS growth can be 0 B, and its ratio then "-"
            line = "peak memory #"
        if line.startswith("  traced pass: "):  # the overhead figure, or NOISY when the machine is busy
            line = "  traced pass: #; clock: " + line.rpartition("clock: ")[2]
        line = line.replace(" (noisy)", "")
        line = VARYING.sub("#", line)
        line = re.sub(r"-{3,}", "---", line)
        lines.append(re.sub(r" {2,}", "  ", line).rstrip())
    return "\n".join(lines) + "\n"


def check(name: str, text: str, update: bool) -> None:
    path = os.path.join(GOLDEN, name)
    if update:
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        pytest.skip(f"rewrote {name}")
    with open(path) as f:
        expected = f.read()
    assert text == expected, f"{name} differs: rerun with --update-golden if the change is intended"


def test_static_report_golden(capsys, update_golden):
    assert main(["--static-only"]) == 0
    check("static_builtin.txt", capsys.readouterr().out, update_golden)


def test_runtime_tables_golden(capsys, root, monkeypatch, update_golden):
    monkeypatch.chdir(root)
    assert main(["samples/sample.wav", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    runtime = out[out.index("[CLIP]"):]
    check("runtime_builtin.txt", mask(runtime), update_golden)


def test_mask_keeps_counts_and_hides_what_varies():
    assert mask("forward 22.33 ms (min 21.96), peak 32.0 KiB, 1023 B; 75 of 247 modules, 118,272 params") == \
        "forward # ms (min #), peak #, #; 75 of 247 modules, 118,272 params\n"
    assert mask("  traced pass: 9.1 ms; NOISY timings (forward max/min 2.00×): …; clock: perf_counter_ns") == \
        mask("  traced pass: 9.1 ms = 1.10× untraced (the tracer's own overhead); clock: perf_counter_ns")
    ranked = "  slowest 2 modules by self forward time:\nmodule  x\n---  ---\nmodel.a  1.0\nlm_head  2.0\n\n[NEXT]"
    assert mask(ranked) == "  slowest 2 modules by self forward time:\n\n[NEXT]\n"


def test_7b_static_json_golden(root, tmp_path, update_golden):
    """The 7B-shaped Qwen2-Audio config built on meta, --static-only --json: deterministic to the byte (no
    weights, no clip, no time), so every field of the static record is pinned."""
    out = tmp_path / "7b.json"
    assert main(["--config", os.path.join(root, "samples", "qwen2-audio-7b.json"), "--static-only",
                 "--json", str(out)]) == 0
    check("static_7b.json", out.read_text().replace(root, "<root>"), update_golden)
