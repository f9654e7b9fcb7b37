"""The catalogue of bad input: every case asserts its exact one-line message and exit code 2.

Each row: (id, argv with {t} for the temp dir, the message that must appear). Files are made at test time
with soundfile, real transformers models saved with save_pretrained, and real peft adapters.
"""
import json

import models
import numpy as np
import pytest
import soundfile as sf
import torch
from peft import LoraConfig, get_peft_model
from helpers import ROOT

from tracer.cli.main import main

CASES = [
    # clips
    ("clip-missing", ["{t}/missing.wav", "--static-only"], "{t}/missing.wav: no such file"),
    ("clip-directory", ["{t}/dir.wav", "--static-only"], "{t}/dir.wav: is a directory, not an audio file"),
    ("clip-empty", ["{t}/empty.wav", "--static-only"], "{t}/empty.wav: empty file"),
    ("clip-not-audio", ["{t}/notes.txt", "--static-only"], "{t}/notes.txt: not a readable audio file"),
    ("clip-text-named-wav", ["{t}/notes.wav"], "{t}/notes.wav: not a readable audio file"),
    ("clip-unsupported", ["{t}/noise.mp3", "--static-only"], "{t}/noise.mp3: not a readable audio file"),
    ("clip-truncated-wav", ["{t}/truncated.wav", "--static-only"], "{t}/truncated.wav: truncated"),
    ("clip-corrupt-flac", ["{t}/corrupt.flac", "--static-only"], "{t}/corrupt.flac: corrupt or truncated FLAC data"),
    ("clip-no-samples", ["{t}/nosamples.wav", "--static-only"], "{t}/nosamples.wav: no samples"),
    ("clip-nan", ["{t}/nan.wav", "--static-only"], "{t}/nan.wav: contains NaN or Inf samples"),
    ("clip-inf", ["{t}/inf.wav", "--static-only"], "{t}/inf.wav: contains NaN or Inf samples"),
    ("clip-10ms", ["{t}/tick.wav", "--static-only"], "10 ms is shorter than one encoder frame"),
    ("clip-offset-past-end", ["{t}/good.wav", "--offset", "5", "--static-only"], "--offset 5: past the end of the clip (2.00 s)"),
    ("clip-negative-offset", ["{t}/good.wav", "--offset", "-1", "--static-only"], "--offset -1: must be 0 or more"),
    ("clip-zero-duration", ["{t}/good.wav", "--duration", "0", "--static-only"], "--duration 0: must be more than 0"),
    # models
    ("model-missing", ["--model", "{t}/missing", "--static-only"], "--model {t}/missing: no such directory"),
    ("model-no-config", ["--model", "{t}/empty", "--static-only"], "--model {t}/empty: no config.json in {t}/empty"),
    ("model-not-cached", ["--model", "nobody/no-such-model", "--static-only"],
     "not in the local Hugging Face cache, and this tool does not download; run `hf download nobody/no-such-model`"),
    ("model-near-miss-of-a-named-one", ["--model", "whisper-tiny", "--static-only"],
     "--model whisper-tiny: no such directory, nor a named model; did you mean whisper-tiny.en?"),
    ("model-pickle", ["--model", "{t}/pickled", "--static-only"], "only pickle weights (.bin) found"),
    ("model-remote-code", ["--model", "{t}/remote", "--static-only"], "ships its own code; rerun with --trust-remote-code"),
    ("model-mismatched-weights", ["--model", "{t}/mismatch", "--static-only"], "the weights' shapes do not match config.json"),
    ("model-non-audio", ["--config", "{t}/textcfg/config.json"], "not an audio model (no audio encoder in step 3)"),
    # NB: --device cpu: on a GPU with room for it (an H200) the 7B build fits and runs
    ("config-too-big-for-memory", ["--config", "{root}/samples/qwen2-audio-7b.json", "--device", "cpu"],
     "GiB of float32 weights do not fit in the"),
    ("config-missing", ["--config", "{t}/missing.json", "--static-only"], "--config {t}/missing.json: no such file"),
    ("config-unknown-type", ["--config", "{t}/unknown.json", "--static-only"], "unknown model_type 'no_such_model'"),
    ("config-broken-json", ["--config", "{t}/broken.json", "--static-only"], "not valid JSON"),
    ("config-no-model-type", ["--config", "{t}/wrong.json", "--static-only"], "no 'model_type' key"),
    ("model-and-config", ["--model", "{t}/empty", "--config", "{t}/unknown.json", "--static-only"], "exclude each other"),
    # flags
    ("flag-strategy", ["--strategy", "nope"], "argument --strategy: invalid choice: 'nope'"),
    ("flag-repeats", ["--repeats", "0", "--static-only"], "--repeats 0: must be at least 1"),
    ("flag-warmup", ["--warmup", "-1", "--static-only"], "--warmup -1: must be 0 or more"),
    ("flag-dtype", ["--dtype", "float8", "--static-only"], "--dtype 'float8': choose one of auto, float32, bfloat16, float16"),
    ("flag-device", ["--device", "tpu", "--static-only"], "--device 'tpu': choose auto, cpu, cuda or cuda:N"),
    ("flag-steps", ["--steps", "-1", "--static-only"], "--steps -1: must be 0 or more"),
    ("flag-lr", ["--lr", "-0.1", "--static-only"], "--lr -0.1: must be 0 or more"),
    ("flag-cuda-absent", ["--device", "cuda", "--static-only"], "--device cuda: CUDA is not available on this machine"),
    ("flag-device-map-without-model", ["--device-map", "auto", "--static-only"], "--device-map needs --model"),
    ("flag-depth", ["--depth", "-2", "--static-only"], "--depth -2: must be 0 or more"),
    ("output-trace-without-run", ["--chrome-trace", "{t}/t.json", "--static-only"],
     "--chrome-trace draws the runs: drop --static-only"),
    ("output-unwritable", ["--json", "/proc/out.json", "--static-only"], "--json /proc/out.json: cannot write in /proc"),
    ("output-is-directory", ["--markdown", "{t}", "--static-only"], "--markdown {t}: is a directory"),
    ("output-no-parent", ["--markdown", "{t}/no/dir/x.md", "--static-only"],
     "--markdown {t}/no/dir/x.md: directory {t}/no/dir does not exist"),
    # LoRA
    ("lora-targets-match-nothing", ["--lora-targets", "nothing_like_this"],
     "LoRA targets ['nothing_like_this'] match nothing in this model"),
    ("lora-bad-regex", ["--lora-targets", "(unclosed"], "not a valid regex"),
    ("lora-config-broken", ["--lora-config", "{t}/broken.json"], "--lora-config {t}/broken.json: not valid JSON"),
    ("lora-config-wrong", ["--lora-config", "{t}/wrong.json"], "--lora-config {t}/wrong.json: not a valid LoraConfig"),
    ("lora-adapter-other-base", ["--adapter", "{t}/other"],
     "--adapter {t}/other: does not fit this model: none of its weights match a layer here (made for Qwen2ForCausalLM)"),
    ("lora-adapter-not-adapter", ["--adapter", "{t}/empty"], "no adapter_config.json there"),
    ("lora-exclusive", ["--no-lora", "--adapter", "{t}/other"], "--no-lora and --adapter exclude each other"),
    ("lora-rank", ["--lora-r", "0"], "--lora-r 0: must be at least 1"),
    # diff
    ("diff-missing", ["diff", "{t}/missing.json", "{t}/missing.json"], "diff: {t}/missing.json: no such file"),
    ("diff-static-record", ["diff", "{t}/static.json", "{t}/static.json"], "not a tracer record with runs"),
    ("diff-one-strategy", ["diff", "{t}/static.json:audio_tower", "{t}/static.json"], "name a strategy on both sides"),
    # audit
    ("audit-missing", ["audit", "{t}/missing"], "audit {t}/missing: no such directory"),
    ("audit-not-adapter", ["audit", "{t}/empty"], "audit {t}/empty: no adapter_config.json there"),
    ("audit-no-weights", ["audit", "{t}/noweights"],
     "audit {t}/noweights: no adapter_model.safetensors or adapter_model.bin there"),
    ("audit-unreadable-weights", ["audit", "{t}/badweights"],
     "audit {t}/badweights: unreadable weights in adapter_model.safetensors"),
    ("audit-json-is-directory", ["audit", "{t}/other", "--json", "{t}"], "--json {t}: is a directory"),
    ("audit-clip-missing", ["audit", "{t}/other", "--clip", "{t}/missing.wav"], "{t}/missing.wav: no such file"),
    ("audit-no-dir", ["audit"], "the following arguments are required: ADAPTER_DIR"),
]
# clips refused only once decoded (a sound header over broken data, bad samples, too few frames for the
# processor): the static report comes first; every other clip is refused from its header, before the model
DECODED = {"clip-corrupt-flac", "clip-nan", "clip-inf", "clip-10ms"}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    (t / "dir.wav").mkdir()
    (t / "empty").mkdir()
    (t / "empty.wav").write_bytes(b"")
    (t / "notes.txt").write_text("this is not audio\n" * 50)
    (t / "notes.wav").write_text("this is not audio either, whatever its name says\n" * 50)
    (t / "noise.mp3").write_bytes(bytes(range(256)) * 40)
    tone = (np.sin(np.arange(32000) / 9) * 0.3).astype(np.float32)
    sf.write(t / "good.wav", tone, 16000, subtype="PCM_16")
    raw = (t / "good.wav").read_bytes()
    (t / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    sf.write(t / "good.flac", tone, 16000)
    flac = (t / "good.flac").read_bytes()
    (t / "corrupt.flac").write_bytes(flac[: len(flac) // 2])
    sf.write(t / "nosamples.wav", np.zeros(0, np.float32), 16000)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        samples = np.full(16000, 0.1, np.float32)
        samples[100] = value
        sf.write(t / f"{name}.wav", samples, 16000, subtype="FLOAT")
    sf.write(t / "tick.wav", np.full(160, 0.1, np.float32), 16000)
    (t / "unknown.json").write_text(json.dumps({"model_type": "no_such_model"}))
    (t / "broken.json").write_text("{not json")
    (t / "wrong.json").write_text(json.dumps({"no_such_field": 1}))
    (t / "static.json").write_text(json.dumps({"schema_version": 1, "static": {}}))
    loaded = models.builtin_loaded()
    loaded.model.config.save_pretrained(t / "pickled")
    torch.save({}, t / "pickled" / "pytorch_model.bin")
    loaded.model.save_pretrained(t / "mismatch")
    config = json.loads((t / "mismatch" / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96  # the saved MLP weights are 128 wide
    (t / "mismatch" / "config.json").write_text(json.dumps(config))
    (t / "remote").mkdir()
    (t / "remote" / "config.json").write_text(json.dumps({"model_type": "my_custom_audio", "auto_map": {
        "AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyAudioModel"}}))
    (t / "remote" / "model.safetensors").write_bytes(b"")
    models.text_only_lm(tied=False).config.save_pretrained(t / "textcfg")
    other = get_peft_model(models.text_only_lm(tied=False), LoraConfig(r=2, target_modules=["gate_proj"]))
    other.save_pretrained(t / "other")
    for name in ("noweights", "badweights"):
        (t / name).mkdir()
        (t / name / "adapter_config.json").write_text((t / "other" / "adapter_config.json").read_text())
    (t / "badweights" / "adapter_model.safetensors").write_bytes(b"\x08not a safetensors header")
    return t


@pytest.mark.parametrize("case, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(bad, capsys, monkeypatch, case, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "cuda" in argv:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    argv = [a.format(t=bad, root=ROOT) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors, already one line
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message.format(t=bad) in err
    assert "Traceback" not in err
    if case.startswith("clip-") and case not in DECODED:
        assert out == ""


def test_each_case_is_one_distinct_situation():
    """Two cases with one name, or one argv twice, would hide a situation the table claims to cover."""
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({tuple(c[1]) for c in CASES if not callable(c[1])}) == len([c for c in CASES if not callable(c[1])])


def test_silence_and_clipping_are_allowed_with_a_warning(bad, capsys, tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    assert main([str(tmp_path / "silent.wav"), "--static-only"]) == 0
    assert "! clip is silent" in capsys.readouterr().out
