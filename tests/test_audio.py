"""Real audio files made at test time: rates, channels, formats, windows, and every bad input."""
import tracemalloc

import models
import numpy as np
import pytest
import soundfile as sf
import torch

from tracer.load.audio import load_clip
from tracer.static.discovery import static_report
from tracer.errors import TracerError
from tracer.inputs.families import prepare_inputs


@pytest.fixture(scope="module")
def speech(root):
    data, rate = sf.read(f"{root}/samples/sample.wav", dtype="float32")
    return data, rate


def _resampled(speech, rate):
    import librosa
    data, src = speech
    return librosa.resample(data, orig_sr=src, target_sr=rate) if rate != src else data


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_rates_are_resampled_to_16k(tmp_path, speech, rate):
    path = tmp_path / f"s{rate}.wav"
    sf.write(path, _resampled(speech, rate), rate, subtype="PCM_16")
    clip = load_clip(str(path), 16000)
    assert clip.info.source_sample_rate == rate and clip.info.sample_rate == 16000
    assert clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1
    assert abs(len(clip.waveform) - len(speech[0])) <= 16000 * 0.002  # same duration within 2 ms
    assert (f"resampled {rate} Hz -> 16000 Hz" in clip.info.warnings) == (rate != 16000)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_mixed_down(tmp_path, speech, channels):
    data = np.stack([speech[0] * (0.2 + 0.1 * c) for c in range(channels)], axis=1)
    path = tmp_path / f"c{channels}.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    clip = load_clip(str(path), 16000)
    assert clip.info.source_channels == channels
    np.testing.assert_allclose(clip.waveform, data.mean(axis=1), atol=1e-6)
    assert f"mixed {channels} channels down to mono" in clip.info.warnings


@pytest.mark.parametrize("fmt, subtype, ext", [("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"),
                                               ("WAV", "FLOAT", "wav"), ("FLAC", "PCM_16", "flac"),
                                               ("OGG", "VORBIS", "ogg")])
def test_formats(tmp_path, speech, fmt, subtype, ext):
    path = tmp_path / f"x.{ext}"
    sf.write(path, speech[0], 16000, format=fmt, subtype=subtype)
    clip = load_clip(str(path), 16000)
    assert (clip.info.format, clip.info.subtype) == (fmt, subtype)
    if fmt == "OGG":  # lossy: same length and loudness, not the same samples
        assert abs(len(clip.waveform) - len(speech[0])) < 160
        assert clip.info.rms == pytest.approx(float(np.sqrt(np.mean(speech[0] ** 2))), rel=0.1)
    else:
        assert np.abs(clip.waveform - speech[0]).max() < 1e-3


def test_long_file_window_policy_and_bounded_memory(tmp_path):
    rate, seconds = 16000, 75
    t = np.arange(rate * seconds) / rate
    path = tmp_path / "long.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="FLOAT")
    full_bytes = rate * seconds * 4
    tracemalloc.start()
    clip = load_clip(str(path), rate)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert clip.info.used_duration_s == 30.0 and clip.info.dropped_s == 45.0
    assert clip.info.warnings[0].startswith("the model sees at most 30 s per clip")
    window_bytes = rate * 30 * 4
    assert peak < 1.6 * window_bytes < full_bytes  # only the window was decoded
    late = load_clip(str(path), rate, offset=60)
    assert late.info.used_duration_s == 15.0 and late.info.offset_s == 60
    short = load_clip(str(path), rate, offset=10, duration=5)
    assert short.info.used_duration_s == 5.0


def test_silence_and_clipping_warn(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    assert any("silent" in w for w in load_clip(str(tmp_path / "silent.wav"), 16000).info.warnings)
    loud = np.clip(np.sin(np.arange(16000) / 5) * 3, -1, 1).astype(np.float32)
    sf.write(tmp_path / "loud.wav", loud, 16000, subtype="FLOAT")
    info = load_clip(str(tmp_path / "loud.wav"), 16000).info
    assert info.clipped_fraction > 0.5 and any(w.startswith("clipping:") for w in info.warnings)


@pytest.fixture(scope="module")
def tiny():
    loaded = models.builtin_loaded()
    report = static_report(loaded.model)
    encoder = dict(loaded.model.named_modules())[report.audio_encoder.path]
    return loaded, encoder


def test_accounting_matches_models_length_function_and_prompt_expands(tiny, root):
    loaded, encoder = tiny
    clip = load_clip(f"{root}/samples/sample.wav", 16000)
    inputs = prepare_inputs(loaded.processor, loaded.model, encoder, clip)
    acc = inputs.accounting
    assert acc.mel_frames == int(np.ceil(clip.info.samples / 160))
    conv, tokens = encoder._get_feat_extract_output_lengths(torch.tensor([acc.mel_frames]))
    assert (acc.encoder_frames, acc.audio_tokens) == (int(conv), int(tokens))
    assert acc.padded_fraction == pytest.approx(1 - acc.mel_frames / 3000, abs=1e-6)
    ids, labels = inputs.full["input_ids"], inputs.full["labels"]
    assert int((ids == loaded.model.config.audio_token_id).sum()) == acc.audio_tokens
    assert inputs.tower["input_features"].shape == (1, 128, 3000)
    # audio and prompt positions carry no loss; the target does
    assert (labels[0, :inputs.prompt_tokens] == -100).all()
    assert (labels[0, inputs.prompt_tokens:] == ids[0, inputs.prompt_tokens:]).all()
    out = loaded.model(**inputs.full)
    assert torch.isfinite(out.loss)


def test_10ms_clip_is_shorter_than_one_encoder_frame(tiny, tmp_path):
    loaded, encoder = tiny
    sf.write(tmp_path / "tick.wav", np.full(160, 0.1, np.float32), 16000)
    clip = load_clip(str(tmp_path / "tick.wav"), 16000)
    with pytest.raises(TracerError, match="10 ms is shorter than one encoder frame"):
        prepare_inputs(loaded.processor, loaded.model, encoder, clip)


def test_odd_length_24bit_extensible_wav_is_read_whole(tmp_path):
    """What sox writes for an odd number of 3-byte samples: a 'data' chunk of odd length, which libsndfile
    notes ("should be an even number of bytes") and reads in full. Not truncated."""
    path = tmp_path / "odd24.wav"
    samples = np.sin(np.arange(4801) / 8).astype("float32") * 0.5
    sf.write(path, samples, 48000, subtype="PCM_24", format="WAVEX")
    assert "should be an even number" in sf.info(str(path)).extra_info
    clip = load_clip(str(path), 16000)
    assert clip.info.source_sample_rate == 48000 and clip.info.subtype == "PCM_24"
    assert clip.waveform.shape[-1] == pytest.approx(4801 / 3, abs=1)


def test_wav_cut_short_is_truncated_with_both_counts(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, np.zeros(4800, dtype="float32"), 16000, subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: 44 + 2 * 1000])
    with pytest.raises(TracerError, match=r"truncated \(the header promises 4,800 frames, the file holds 1,000\)"):
        load_clip(str(path), 16000)
