"""Written outputs: Chrome trace, PNG, Markdown, quiet mode, and `bin/trace diff`."""
import json
import re

import pytest
from PIL import Image

from tracer.cli.main import main
from tracer.export.plot import PLOT_DPI, PLOT_SIZE


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    paths = {k: d / name for k, name in (("json", "r.json"), ("trace", "r.trace.json"), ("png", "r.png"),
                                          ("md", "r.md"))}
    code = main(["--repeats", "1", "--warmup", "0", "--json", str(paths["json"]), "--chrome-trace",
                 str(paths["trace"]), "--plot", str(paths["png"]), "--markdown", str(paths["md"]), "--quiet"])
    assert code == 0
    return paths, json.loads(paths["json"].read_text())


def test_chrome_trace_is_valid_nested_and_covers_every_executed_module(written):
    paths, record = written
    trace = json.loads(paths["trace"].read_text())
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert all({"name", "ts", "dur", "pid", "tid", "cat"} <= set(e) and e["dur"] >= 0 for e in complete)
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"audio_tower", "full_forward"}
    for pid, run_name in ((1, "audio_tower"), (2, "full_forward")):
        forward = sorted((e for e in complete if e["pid"] == pid and e["tid"] == 1), key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # complete events on one track must nest: each starts inside the open one and ends before it
        for e in forward:
            while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"]:
                stack.pop()
            if stack:
                assert e["ts"] + e["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + 1e-3, e["name"]
            stack.append(e)
        executed = {m["path"].removeprefix("base_model.model.") for m in record["runs"][run_name]["modules"]
                    if m["executed"] and m["path"] not in ("", "base_model", "base_model.model")}
        assert executed <= {e["name"] for e in forward}
        assert any(e["pid"] == pid and e["tid"] == 2 for e in complete)  # a backward track too
    assert "calls" not in record["runs"]["audio_tower"]  # per-call events stay out of the JSON


def test_png_is_a_real_image_of_the_stated_size(written):
    paths, _ = written
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG"
        assert image.size == (PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI)
        width, height = image.size  # the LoRA panel is the second of four stacked ones
        pixels = set(image.convert("RGB").crop((0, height // 4, width, height // 2)).getdata())
    # the LoRA panel drew the statuses the run has, in their colours: ok (every layer under full_forward)
    # and not_executed (the LM's layers under audio_tower); no colour of a status the run does not have
    from matplotlib.colors import to_rgb

    from tracer.export.plot import STATUS_COLOURS

    def drawn(status):
        return tuple(round(255 * c) for c in to_rgb(STATUS_COLOURS[status])) in pixels
    assert drawn("ok") and drawn("not_executed") and not drawn("nonfinite")


def test_markdown_has_the_json_numbers(written):
    paths, record = written
    text = paths["md"].read_text()
    assert text.startswith("# tracer report: builtin tiny Qwen2-Audio")
    assert "## Step 8: Encoding strategy" in text and "## Confirmation:" in text
    assert f"{record['model']['params_total']:,} total" in text
    assert f"audio tokens       {record['clip']['audio_tokens']}" in text
    for name, run in record["runs"].items():
        assert f"forward {run['latency_ms']['median']:.2f} ms" in text
    assert "\033[" not in text


def test_quiet_prints_only_written_paths(capsys, tmp_path):
    paths = [tmp_path / "r.md", tmp_path / "r.json"]
    assert main(["--static-only", "--quiet", "--markdown", str(paths[0]), "--json", str(paths[1])]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"wrote {p}" for p in paths]


def test_diff_of_the_two_strategies_lists_the_lm_as_only_in_full_forward(written, capsys, tmp_path):
    paths, _ = written
    out = tmp_path / "diff.json"
    assert main(["diff", f"{paths['json']}:audio_tower", f"{paths['json']}:full_forward", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "executed only in B: lm_head, model.language_model, model.language_model.layers.0-1 ×2" in text
    assert re.search(r"LoRA model\.language_model\.layers\.0-1\.self_attn\.\{q,k,v\}_proj \(6\): "
                     r"not_executed -> ok", text)
    result = json.loads(out.read_text())[0]
    assert result["only_in_b"] == ["lm_head", "model.language_model", "model.multi_modal_projector"]
    assert result["only_in_a"] == []


def test_diff_same_file_pairs_each_strategy_and_reports_no_lora_change(written, capsys):
    paths, _ = written
    assert main(["diff", str(paths["json"]), str(paths["json"])]) == 0
    text = capsys.readouterr().out
    assert text.count("[DIFF]") == 2 and "LoRA statuses: no change" in text


def test_failed_job_writes_nothing(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["--lora-targets", "nothing_here", "--json", str(out), "--markdown", str(tmp_path / "r.md")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_lora_axis_names_say_which_layer():
    from tracer.export.plot import lora_label
    assert lora_label("base_model.model.model.audio_tower.layers.3.self_attn.q_proj", "audio_encoder") == "enc.3.q_proj"
    assert lora_label("base_model.model.model.language_model.layers.0.mlp.down_proj", "language_model") == "lm.0.down_proj"
    assert lora_label("base_model.model.lm_head", "head") == "head.lm_head"
    assert lora_label("transformer.h.11.attn.c_attn", "language_model") == "lm.11.c_attn"  # GPT-2's layer list


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    import os
    import stat

    from tracer.files import write_atomic
    old = os.umask(umask)
    try:
        path = tmp_path / "out.json"
        write_atomic(str(path), lambda tmp: open(tmp, "w").write("{}"))
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_sections_headings_and_colour_only_on_verdicts():
    from tracer.render.sections import Section, coloured, markdown
    assert Section("LORA DIAGNOSIS", "x").heading() == "LoRA diagnosis"
    assert Section("RUN audio_tower", "x").heading() == "Run audio_tower"
    assert Section("STEP 8", "Encoding strategy").heading() == "Step 8"
    verdicts = Section("CONFIRMATION", "checked", "a  CONFIRMED\nb  REFUTED\n  ! b (full_forward): fix it")
    text = coloured(verdicts)
    assert "\033[32mCONFIRMED\033[0m" in text and "\033[31mREFUTED\033[0m" in text and "\033[31m  !\033[0m" in text
    assert coloured(Section("CLIP", "REFUTED is just a word here")) == "\n[CLIP] REFUTED is just a word here"
    md = markdown(["note: hi", verdicts], "t")
    assert md == ("# t\n\n> note: hi\n\n## Confirmation: checked\n\n```\na  CONFIRMED\nb  REFUTED\n"
                  "  ! b (full_forward): fix it\n```")


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_a_written_directory_follows_the_umask(tmp_path, umask):
    """follow_umask: what temp-file writers leave private (mkstemp 0600, mkdtemp 0700) gets a plain file's
    and directory's modes."""
    import os
    import stat
    import tempfile

    from tracer.files import follow_umask
    old = os.umask(umask)
    try:
        inner = tempfile.mkdtemp(dir=tmp_path)
        fd, private = tempfile.mkstemp(dir=inner)
        os.close(fd)
        follow_umask(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(inner).st_mode) == stat.S_IMODE(tmp_path.stat().st_mode) == 0o777 & ~umask
