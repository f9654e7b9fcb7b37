"""The CLI through main([...]) and once as a subprocess: output, JSON, exit codes, one-line errors."""
import json
import os
import subprocess
import sys

import models

from tracer.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_does_not_import_torch(root):
    code = ("import sys\nfrom tracer.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("heavy: []")


def test_bin_trace_subprocess_static_only(root, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([os.path.join(root, "bin", "trace"), "--static-only", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stdout and "[STEP 8]" in proc.stdout
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1
    assert data["static"]["audio_encoder"]["path"] == "model.audio_tower"
    assert data["static"]["strategy"]["chosen"] == "audio_tower"


def test_7b_config_json_contract(capsys, root, tmp_path):
    out = tmp_path / "7b.json"
    code, stdout, _ = run_cli(capsys, "--config", f"{root}/samples/qwen2-audio-7b.json", "--static-only",
                              "--json", str(out))
    assert code == 0
    data = json.loads(out.read_text())
    assert data["model"]["params_total"] == 8_397_094_912
    assert data["model"]["device"] == "meta"
    static = data["static"]
    assert set(static) >= {"top_level", "audio_encoder", "language_model", "config", "tree", "components",
                           "lora_candidates", "strategy"}
    assert static["components"]["language_model"] == 7_115_771_904
    assert static["audio_encoder"]["class"] == "Qwen2AudioEncoder"
    assert static["tree"][0] == {"path": "", "class": "Qwen2AudioForConditionalGeneration",
                                 "params": 8_397_094_912, "depth": 0}
    assert static["strategy"]["lora_targets"] == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert "0-31 ×32: Qwen2AudioEncoderLayer" in stdout


def test_model_dir_saved_with_save_pretrained(capsys, tmp_path):
    loaded = models.builtin_loaded()
    loaded.model.save_pretrained(tmp_path / "ckpt")
    loaded.processor.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(capsys, "--model", str(tmp_path / "ckpt"), "--static-only", "--json", str(out))
    assert code == 0, stdout
    assert "RANDOM weights" not in stdout
    data = json.loads(out.read_text())
    assert data["model"]["params_total"] == sum(p.numel() for p in loaded.model.parameters())
    assert data["static"]["audio_encoder"]["num_layers"] == 2


def test_model_dir_with_device_map_runs_and_traces(capsys, tmp_path):
    loaded = models.builtin_loaded()
    loaded.model.save_pretrained(tmp_path / "ckpt")
    loaded.processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(capsys, "--model", str(tmp_path / "ckpt"), "--device-map", "auto", "--repeats", "1",
                              "--warmup", "0", "--json", str(out))
    assert code == 0, stdout
    data = json.loads(out.read_text())
    assert {r["status"] for r in data["runs"].values()} == {"ok"}
    assert data["runs"]["full_forward"]["lora_summary"]["language_model"] == {"ok": 6}


def test_package_exports_are_lazy_and_real():
    import tracer
    from tracer.static.discovery import static_report
    from tracer.api.tracer import Tracer
    assert tracer.Tracer is Tracer and tracer.static_report is static_report
    from tracer.api.callback import TracerCallback
    from tracer.run.pipeline import TraceOptions, TraceReport, trace_clip
    assert tracer.TracerCallback is TracerCallback and tracer.trace_clip is trace_clip
    assert tracer.TraceOptions is TraceOptions and tracer.TraceReport is TraceReport
