"""What the user reads first: the verdict, by-design facts told apart from faults, advice that fits the
model kind."""
import json

import models

from tracer.cli.main import main
from tracer.static.discovery import static_report
from tracer.lora.attach import suggest_targets

FAST = ["--repeats", "1", "--warmup", "0"]


def test_the_default_run_ends_with_the_verdict_and_the_markdown_opens_with_it(capsys, tmp_path):
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert main([*FAST, "--markdown", str(md), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    verdict = out[out.index("[VERDICT]"):]
    assert verdict.splitlines()[0] == ("[VERDICT] LEARNING: every LoRA layer that runs gets a gradient (12 of 18 "
                                       "under audio_tower; 18 of 18 under full_forward)")
    assert "the 6 language_model layers do not run: by design" in verdict
    assert "1 note(s) to read: projector ran but has no LoRA layer" in verdict
    # the LM under audio_tower is a fact of the strategy: no fix offered for it
    line = next(x for x in out.splitlines() if "language_model.layers.0-1.self_attn.{q,k,v}_proj" in x)
    assert "by design" in line and "fix:" not in line
    assert md.read_text().split("\n")[2].startswith("## Verdict: LEARNING")
    groups = json.loads(js.read_text())["lora_diagnosis"]["dead_groups"]["audio_tower"]
    assert [g["by_design"] for g in groups] == [True]


def test_a_frozen_layer_is_the_verdict_with_its_cause_and_fix():
    from peft import LoraConfig, get_peft_model

    from tracer.diagnose.verdict import verdict_lines
    model = get_peft_model(models.text_only_lm(tied=False), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "v_proj.lora_" in name:
            param.requires_grad_(False)
    import torch

    from tracer.api.tracer import Tracer
    ids = torch.randint(0, 100, (1, 8))
    with Tracer(model) as tr:
        model(input_ids=ids, labels=ids).loss.backward()
    lines = verdict_lines({"full_forward": tr.result()["lora"]})
    assert lines[0] == "NOT LEARNING: 2 LoRA layer(s): frozen ×2 (language_model, full_forward)"
    assert lines[1].startswith("  why: lora_A/lora_B of adapter 'default' have requires_grad=False")
    assert "fix: set requires_grad_(True)" in lines[1]
    assert lines[2] == "  learning: 2 of 4 under full_forward"


def test_encoder_decoder_advice_keeps_the_decoder():
    """Whisper: ASR fine-tunes train the decoder; never suggest an encoder-only regex there."""
    report = static_report(models.whisper())
    assert report.strategy.chosen == "audio_tower"
    plain = suggest_targets(report)
    assert plain["regex"].startswith("model\\.encoder")
    kept = suggest_targets(report, encoder_decoder=True)
    assert kept["regex"].startswith(".*\\.(") and "decoder" in kept["note"]


def _run(forward, traced_over_untraced):
    from tracer.records.run import RunRecord, Timing
    return RunRecord("ok", loss=1.0, loss_kind="lm", latency_ms=Timing(*forward), backward_ms=Timing(10, 9.5, 10.5, 3),
                     peak_memory_bytes=1024, memory_kind="live tensor bytes", traced_ms=30.0,
                     traced_over_untraced=traced_over_untraced, clock="perf_counter_ns")


def test_noisy_timings_are_marked_and_no_overhead_is_claimed_from_them():
    """Issue 22: '0.63× untraced (the tracer's own overhead)' under load; a 764-1670 ms spread unjudged."""
    from tracer.render.runs import render_run
    spread = _run((800, 764, 1670, 3), 1.4)
    faster_traced = _run((20, 19.5, 20.5, 3), 0.63)
    clean = _run((20, 19.5, 20.5, 3), 1.3)
    assert spread.timing_noisy and faster_traced.timing_noisy and not clean.timing_noisy
    text = render_run("audio_tower", spread).text()
    assert "NOISY timings (forward max/min 2.19×)" in text and "own overhead" not in text
    assert "took 0.63× the untraced one" in render_run("audio_tower", faster_traced).text()
    assert "= 1.30× untraced (the tracer's own overhead)" in render_run("audio_tower", clean).text()
    assert spread.to_dict()["timing_noisy"] is True
