"""LoRA through the CLI: each way of attaching, the diagnosis in the report and JSON, and bad LoRA input."""
import json

import models
from peft import LoraConfig, get_peft_model

from tracer.cli.main import main

FAST = ["--repeats", "1", "--warmup", "0"]


def run(capsys, *argv):
    code = main([*FAST, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_auto_targets_and_diagnosis_json(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run(capsys, "--json", str(out))
    assert code == 0
    assert "[LORA] 18 LoRA layers" in stdout and "[LORA DIAGNOSIS]" in stdout
    data = json.loads(out.read_text())
    assert data["lora_setup"]["target_modules"] == ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"]
    tower = data["runs"]["audio_tower"]
    assert tower["lora_summary"] == {"audio_encoder": {"ok": 12}, "language_model": {"not_executed": 6}}
    row = tower["lora"][0]
    assert set(row) >= {"path", "adapter", "component", "executed", "grad_enabled", "grad_norm_A", "grad_norm_B",
                        "status", "cause", "hint"}
    assert data["lora_diagnosis"]["dead_groups"]["audio_tower"][0]["pattern"].endswith(
        "language_model.layers.0-1.self_attn.{q,k,v}_proj")
    assert data["lora_diagnosis"]["suggested_target_modules"]["strategy"] == "audio_tower"


def test_no_lora_has_no_diagnosis(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run(capsys, "--no-lora", "--json", str(out))
    assert code == 0 and "[LORA" not in stdout
    assert "lora_setup" not in json.loads(out.read_text())


def test_regex_targets_and_lora_config_file(capsys, tmp_path):
    code, stdout, _ = run(capsys, "--lora-targets", r"model\.audio_tower\..*\.(q_proj|v_proj)", "--strategy",
                          "audio_tower")
    assert code == 0 and "[LORA] 4 LoRA layers" in stdout
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["o_proj"]}))
    code, stdout, _ = run(capsys, "--lora-config", str(config), "--strategy", "full_forward")
    assert code == 0 and "[LORA] 2 LoRA layers, r=2" in stdout


def test_existing_adapter_dir(capsys, tmp_path):
    model = get_peft_model(models.builtin_model(), LoraConfig(r=2, target_modules=["fc1"]))
    model.save_pretrained(tmp_path / "adapter")
    code, stdout, _ = run(capsys, "--adapter", str(tmp_path / "adapter"), "--strategy", "audio_tower")
    assert code == 0 and "[LORA] 2 LoRA layers, r=2" in stdout and f"adapter {tmp_path}/adapter" in stdout


def test_lora_only_in_lm_audio_tower_has_no_backward_but_runs(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run(capsys, "--lora-targets", "gate_proj", "--json", str(out))
    assert code == 0
    assert "no backward: nothing this strategy runs requires grad" in stdout
    tower = json.loads(out.read_text())["runs"]["audio_tower"]
    assert tower["status"] == "ok" and tower["lora_summary"] == {"language_model": {"not_executed": 2}}


def test_layers_left_out_by_layers_to_transform_are_reported_as_not_targeted(tmp_path, root):
    """layers_to_transform=[0]: layer 1's q_proj in the encoder and in the LM carry no LoRA. They are not
    dead layers (never asked for) but the target check says so, per component."""
    import json as _json

    from tracer import TraceOptions, trace_clip
    config = tmp_path / "lora.json"
    config.write_text(_json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [0]}))
    report = trace_clip(f"{root}/samples/sample.wav",
                        options=TraceOptions(repeats=1, warmup=0, lora_config=str(config)))
    assert report.lora_setup.layers == 2
    assert list(report.lora_diagnosis.not_targeted) == [
        {"pattern": "base_model.model.model.audio_tower.layers.1.self_attn.q_proj", "count": 1,
         "component": "audio_encoder"},
        {"pattern": "base_model.model.model.language_model.layers.1.self_attn.q_proj", "count": 1,
         "component": "language_model"}]
    assert {r.status for r in report.runs["full_forward"].lora} == {"ok"}  # the two that exist are fine
