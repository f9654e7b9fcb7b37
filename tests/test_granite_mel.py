"""Granite Speech without torchaudio: its log-mel front end with torch alone (tracer.load.granite_mel), held to
what transformers' GraniteSpeechFeatureExtractor computes through torchaudio, and a checkpoint that ships
Granite's processor traced end to end on it."""
import importlib.util
import json
from pathlib import Path

import models
import pytest
import soundfile
import torch
from helpers import FAST, assert_both_ran_and_confirmed, set_processor_class, trace_json
from transformers import AutoProcessor

from tracer.load.granite_mel import GraniteLogMel
from tracer.load.assets import BUILTIN_MODEL_DIR

# Made once by tests/data/make_granite_logmel_pin.py where torchaudio installs (its docstring says how to
# rerun it): GraniteSpeechFeatureExtractor on the shipped clip, whole (211 stacked frames) and cut to
# 53,760 samples (337 mel frames: the odd last one dropped), as fingerprints of each (1, frames, 160) tensor.
PINS = json.loads((Path(__file__).parent / "data" / "granite_logmel_torchaudio.json").read_text())
HAS_TORCHAUDIO = importlib.util.find_spec("torchaudio") is not None


def _features(root, samples):
    waveform, _ = soundfile.read(f"{root}/samples/sample.wav", dtype="float32")
    return GraniteLogMel(**PINS["extractor"])([waveform[:samples]])


@pytest.mark.parametrize("clip", sorted(PINS["clips"]))
def test_torch_alone_gives_torchaudios_log_mel(clip, root):
    """Shape, LM-token count and mask exact; each frame's and column's sum (of 160 and of ~200 values in
    [-1, 2]) within 1e-3, 64 entries within 1e-4 (seen: 4e-6 at most, torch 2.9.1 against 2.13)."""
    pin = PINS["clips"][clip]
    out = _features(root, pin["samples"])
    features = out["input_features"]
    assert list(features.shape) == pin["shape"]
    assert list(out["audio_embed_sizes"]) == pin["audio_embed_sizes"]
    assert out["input_features_mask"].tolist() == [[True] * pin["audio_embed_sizes"][0]]
    f = features[0].double()
    assert f.sum(1).tolist() == pytest.approx(pin["frame_sums"], abs=1e-3)
    assert f.sum(0).tolist() == pytest.approx(pin["column_sums"], abs=1e-3)
    for i, j, value in pin["entries"]:
        assert float(f[i, j]) == pytest.approx(value, abs=1e-4), (i, j)


@pytest.mark.skipif(not HAS_TORCHAUDIO, reason="torchaudio is not installed here: the pins above stand for it")
def test_torch_alone_equals_the_extractor_where_torchaudio_is_installed(root):
    from transformers import GraniteSpeechFeatureExtractor
    waveform, _ = soundfile.read(f"{root}/samples/sample.wav", dtype="float32")
    theirs = GraniteSpeechFeatureExtractor()([waveform])["input_features"]
    assert torch.allclose(GraniteLogMel()([waveform])["input_features"], theirs, atol=1e-4)


AUDIO_PROCESSOR = {"feature_extractor_type": "GraniteSpeechFeatureExtractor", "feature_size": 80,
                   "melspec_kwargs": {"hop_length": 160, "n_fft": 512, "n_mels": 80, "sample_rate": 16000,
                                      "win_length": 400},
                   "padding_side": "right", "padding_value": 0.0, "projector_downsample_rate": 5,
                   "projector_window_size": 15, "return_attention_mask": True, "sampling_rate": 16000}


def _save_granite_with_its_processor(directory, layout):
    """The tiny Granite Speech with the files GraniteSpeechProcessor.save_pretrained writes (transformers 5:
    processor_config.json with its audio_processor entry, as seen where torchaudio installs), or the one
    preprocessor_config.json of the hub's granite-speech checkpoints."""
    models.granite_speech().save_pretrained(directory)
    AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer.save_pretrained(directory)
    set_processor_class(directory, "GraniteSpeechProcessor")
    if layout == "processor_config":
        files = {"processor_config.json": {"audio_processor": AUDIO_PROCESSOR, "audio_token": "<|AUDIO|>",
                                           "processor_class": "GraniteSpeechProcessor"}}
    else:
        files = {"preprocessor_config.json": {**AUDIO_PROCESSOR, "processor_class": "GraniteSpeechProcessor"}}
    for name, values in files.items():
        (directory / name).write_text(json.dumps(values))


@pytest.mark.skipif(HAS_TORCHAUDIO, reason="torchaudio is installed here: Granite's own processor loads")
@pytest.mark.parametrize("layout", ["processor_config", "preprocessor_config"])
def test_a_granite_checkpoint_runs_without_torchaudio_on_the_torch_log_mel(layout, tmp_path, capsys, root):
    """Its processor needs torchaudio (it used to be refused, exit 2, --static-only too): its tokenizer and
    the torch log-mel with its saved settings take its place, both strategies run, and the 211 stacked
    frames of the whole clip give ceil(211 / 15) x 3 = 45 LM tokens, which the LM consumed."""
    directory = tmp_path / "granite"
    _save_granite_with_its_processor(directory, layout)
    clip = f"{root}/samples/sample.wav"
    data = trace_json([clip, "--model", str(directory), *FAST], tmp_path, capsys)
    assert_both_ran_and_confirmed(data)
    assert (data["clip"]["mel_frames"], data["clip"]["audio_tokens"]) == (211, 45)
    assert data["notes"] == [
        "its processor (GraniteSpeechProcessor) needs torchaudio, which is not installed: its tokenizer "
        "(Qwen2Tokenizer) loaded on its own, and its GraniteSpeechFeatureExtractor's log-mel computed with torch "
        "alone, the same settings (GraniteLogMel(sampling_rate=16000, n_fft=512, win_length=400, hop_length=160, "
        "n_mels=80))"]
    static = trace_json([clip, "--model", str(directory), "--static-only", "--quiet"], tmp_path, capsys)
    assert "clip_error" not in static and static["clip"]["audio_tokens"] == 45
