"""`bin/trace audit`: real peft adapters of the built-in model saved with save_pretrained, each fault made the
way it happens (saved before a step, keys lost or renamed in the file, a zero scaling), and `--adapter` on
the main job carrying the file's faults as notes."""
import json

import models
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from tracer.cli.main import main

TARGETS = ["fc1", "q_proj"]  # 2 encoder layers x 2 + 2 LM layers x 1 (q_proj): 6 LoRA layers
WEIGHTS = "adapter_model.safetensors"


def audit(capsys, *argv):
    code = main(["audit", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """fresh: saved right after get_peft_model; trained: after one real AdamW step on the clip's inputs."""
    from tracer import TraceOptions, trace_clip
    from tracer.load.assets import BUILTIN_CLIP
    t = tmp_path_factory.mktemp("adapters")
    model = get_peft_model(models.builtin_model(), LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS))
    model.save_pretrained(t / "fresh")
    inputs = trace_clip(str(BUILTIN_CLIP), options=TraceOptions(static_only=True, lora=False)).inputs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**inputs.full).loss.backward()
    optimizer.step()
    model.save_pretrained(t / "trained")
    return t


def edited(adapters, tmp_path, edit_weights=None, edit_config=None):
    """A copy of the trained adapter with its safetensors keys or its config changed."""
    out = tmp_path / "edited"
    out.mkdir()
    weights = load_file(adapters / "trained" / WEIGHTS)
    save_file(edit_weights(weights) if edit_weights else weights, out / WEIGHTS)
    config = json.loads((adapters / "trained" / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(edit_config(config) if edit_config else config))
    return out


def test_saved_before_any_step_is_untrained(adapters, capsys, tmp_path):
    code, out, err = audit(capsys, adapters / "fresh", "--json", tmp_path / "a.json")
    assert code == 1, out + err
    assert "  untrained: all 6 lora_B weights in the file are zero" in out
    assert "fix: save after training" in out
    faults = json.loads((tmp_path / "a.json").read_text())["faults"]
    assert [f["code"] for f in faults] == ["untrained"]  # no_effect follows from it: not repeated


def test_trained_adapter_is_clean_with_the_json_shape(adapters, capsys, tmp_path):
    code, out, err = audit(capsys, adapters / "trained", "--json", tmp_path / "a.json")
    assert code == 0, out + err
    assert "adapter OK: 6 LoRA layers, trained, matches the base, changes the output (max |Δlogit| = " in out
    data = json.loads((tmp_path / "a.json").read_text())
    assert set(data) == {"adapter", "base", "faults", "layers", "max_abs_logit_change", "notes"}
    assert data["adapter"] == str(adapters / "trained") and data["base"] == "builtin tiny Qwen2-Audio"
    assert data["faults"] == [] and data["layers"] == 6 and data["notes"] == []
    assert data["max_abs_logit_change"] > 1e-4


def test_keys_missing_from_the_file_are_missing_weights(adapters, capsys, tmp_path):
    """A partial save (ZeRO-3 without the gathered state dict): layer 1's encoder weights are not in the file."""
    def drop(weights):
        return {k: v for k, v in weights.items() if "audio_tower.layers.1." not in k}
    code, out, _ = audit(capsys, edited(adapters, tmp_path, drop), "--json", tmp_path / "a.json")
    assert code == 1
    fault = json.loads((tmp_path / "a.json").read_text())["faults"]
    assert [f["code"] for f in fault] == ["missing_weights"]
    assert fault[0]["detail"] == ("2 of 6 LoRA layers the config targets have no weights in the file "
                                  "(model.audio_tower.layers.1.fc1, model.audio_tower.layers.1.self_attn.q_proj): "
                                  "PEFT loads them silently at their initial values")
    assert "zero3_save_16bit_model" in fault[0]["fix"]


def test_keys_renamed_to_nonexistent_modules_are_no_match(adapters, capsys, tmp_path):
    def rename(weights):
        return {k.replace("layers.0.fc1", "layers.0.fc9"): v for k, v in weights.items()}
    code, out, _ = audit(capsys, edited(adapters, tmp_path, rename), "--json", tmp_path / "a.json")
    assert code == 1
    faults = {f["code"]: f for f in json.loads((tmp_path / "a.json").read_text())["faults"]}
    assert set(faults) == {"no_match", "missing_weights"}  # fc9 fits nothing, so layer 0's fc1 got nothing
    assert faults["no_match"]["detail"].startswith("1 LoRA layers in the file match no LoRA layer PEFT makes on "
                                                   "builtin tiny Qwen2-Audio (model.audio_tower.layers.0.fc9)")
    assert "model.audio_tower.layers.0.fc1" in faults["missing_weights"]["detail"]


def test_adapter_of_another_base_is_no_match(capsys, tmp_path):
    """A text-only Qwen2 LM's adapter on the built-in: gate_proj exists there too, but under other paths."""
    other = get_peft_model(models.text_only_lm(tied=False), LoraConfig(r=2, target_modules=["gate_proj"]))
    other.save_pretrained(tmp_path / "other")
    code, out, _ = audit(capsys, tmp_path / "other")
    assert code == 1
    assert "  missing_weights: 2 of 2 LoRA layers the config targets have no weights in the file " \
           "(model.language_model.layers.0-1.mlp.gate_proj (2))" in out
    assert "  no_match: 2 LoRA layers in the file match no LoRA layer PEFT makes on builtin tiny Qwen2-Audio " \
           "(model.layers.0-1.mlp.gate_proj (2))" in out


def test_zero_scaling_has_no_effect(adapters, capsys, tmp_path):
    code, out, _ = audit(capsys, edited(adapters, tmp_path, edit_config=lambda c: {**c, "lora_alpha": 0}),
                         "--json", tmp_path / "a.json")
    assert code == 1
    data = json.loads((tmp_path / "a.json").read_text())
    assert [f["code"] for f in data["faults"]] == ["no_effect"] and data["max_abs_logit_change"] == 0.0
    assert "  no_effect: on the clip the adapted model's output equals the base's" in out


@pytest.mark.parametrize("what, message", [
    ("missing", "error: audit {t}/missing: no such directory"),
    ("empty", "error: audit {t}/empty: no adapter_config.json there"),
    ("noweights", "error: audit {t}/noweights: no adapter_model.safetensors or adapter_model.bin there"),
    ("broken", "error: audit {t}/broken: unreadable weights in adapter_model.safetensors"),
])
def test_bad_input_is_one_line_and_exit_2(adapters, capsys, tmp_path, what, message):
    (tmp_path / "empty").mkdir()
    for name in ("noweights", "broken"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text((adapters / "fresh" / "adapter_config.json").read_text())
    (tmp_path / "broken" / WEIGHTS).write_bytes(b"not a safetensors file")
    code, out, err = audit(capsys, tmp_path / what)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(message.format(t=tmp_path)), err


def test_adapter_on_the_main_job_carries_the_file_faults_as_notes(adapters, capsys, tmp_path):
    out_json = tmp_path / "r.json"
    code = main(["--adapter", str(adapters / "fresh"), "--strategy", "audio_tower", "--repeats", "1", "--warmup",
                 "0", "--steps", "0", "--json", str(out_json)])
    out, _ = capsys.readouterr()
    assert code == 0
    lora = out[out.index("[LORA] "):]
    assert lora.splitlines()[1].startswith("  ! untrained: all 6 lora_B weights in the file are zero")
    assert "zero_init here is not a fresh adapter's" in out and "zero_init is expected" not in out
    notes = json.loads(out_json.read_text())["lora_setup"]["notes"]
    assert len(notes) == 1 and notes[0].startswith("untrained: ")


def test_trained_adapter_on_the_main_job_has_no_notes(adapters):
    from tracer import TraceOptions, trace_clip
    report = trace_clip(options=TraceOptions(adapter=str(adapters / "trained"), strategy="audio_tower", repeats=1,
                                             warmup=0, steps=0))
    assert report.lora_setup.notes == [] and report.to_dict()["lora_setup"]["notes"] == []


def test_help_and_a_wrong_directory_import_nothing_heavy(root, tmp_path):
    import subprocess
    import sys
    code = ("import sys\nfrom tracer.cli.main import main\ntry:\n    main(['audit', '--help'])\nexcept SystemExit:\n    pass\n"
            f"assert main(['audit', {str(tmp_path / 'missing')!r}]) == 2\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert "usage: trace audit" in out.stdout and out.stdout.strip().endswith("heavy: []")
    assert out.stderr == f"error: audit {tmp_path / 'missing'}: no such directory\n"


def test_audit_notes_of_a_partial_adapter_through_attach_lora(adapters, tmp_path):
    """The main job's --adapter path: attach_lora keeps the missing layers as a note, not a peft warning."""
    from tracer.static.discovery import static_report
    from tracer.lora.attach import attach_lora
    partial = edited(adapters, tmp_path, lambda w: {k: v for k, v in w.items() if "language_model" not in k})
    model = models.builtin_model()
    _, setup = attach_lora(model, static_report(model), adapter_dir=str(partial))
    assert setup.notes == ["missing_weights: 2 of 6 LoRA layers the config targets have no weights in the file "
                           "(model.language_model.layers.0-1.self_attn.q_proj (2)): PEFT loads them silently at "
                           "their initial values; fix: under ZeRO-3 save the gathered state dict: "
                           "accelerator.get_state_dict(model), zero3_save_16bit_model, or "
                           "stage3_gather_16bit_weights_on_model_save: true"]
