"""Every family on a clip whose frames are not a multiple of its window or stride, so that the last window
is partial and a length formula that rounds it the wrong way shows. The shipped clip hides such a slip:
its 4.21 s give Granite Speech 210 stacked frames, exactly 14 of its 15-frame windows, so counting its LM
tokens as ``frames // window`` windows instead of ``ceil(frames / window)`` passed the suite. Cut to
3.37 s, the clip gives each family a remainder (asserted below, so a changed extractor cannot quietly take
it away), and the LM-token count must equal the family's own formula, written out here from its model
code, and what the model consumed."""
import math

import pytest
import soundfile
import torch
from models import CHECKPOINTS, EXTRA_ARGS

from tracer import TraceOptions, trace_clip

CUT_S = 3.37  # 53,920 samples at 16 kHz: 337 Whisper mel frames; 168 stacked ones to Granite; 335 to Phi-4


@pytest.fixture(scope="module")
def cut_clip(root, tmp_path_factory):
    data, rate = soundfile.read(f"{root}/samples/sample.wav", dtype="int16")
    path = tmp_path_factory.mktemp("clip") / "cut.wav"
    soundfile.write(path, data[: round(CUT_S * rate)], rate, subtype="PCM_16")
    return str(path)


def _whisper_style(mel):
    """Qwen2-Audio's, AudioFlamingo3's and Qwen2.5-Omni's audio encoder: a stride-2 conv, then pairs pooled."""
    conv = (mel - 1) // 2 + 1
    return conv, (conv - 2) // 2 + 1


def _lm_tokens(family, r, model):
    """(frames, window, LM tokens by the family's own formula) for the traced report ``r``: the frames the
    family's last length stage sees, the window or stride it takes them in, and what the LM must get."""
    acc = r.inputs.accounting
    mel = acc.mel_frames
    if family in ("qwen2_audio", "audioflamingo3", "musicflamingo"):
        return mel, 4, _whisper_style(mel)[1]
    if family == "qwen2_5_omni_thinker":  # its encoder packs chunks of 2 x n_window frames, then as above
        assert mel % (2 * model.config.audio_config.n_window) != 0
        return mel, 4, _whisper_style(mel)[1]
    if family == "voxtral":  # the clip's encoder frames in a 30 s window; the projector takes 4 a token
        return _whisper_style(mel)[0], 4, 1500 // 4
    if family == "qwen3_asr":  # windows of 2 x n_window frames, each reduced by its own formula
        from transformers.models.qwen3_asr.modeling_qwen3_asr import (
            _get_feat_extract_output_lengths,
        )
        return mel, 2 * model.config.audio_config.n_window, int(_get_feat_extract_output_lengths(torch.tensor(mel)))
    if family == "glm_asr":  # GlmAsrModel.get_audio_features: convs (stride 1, then 2), then 4 frames merged
        encoder = (mel - 1) // 2 + 1
        return encoder, 4, (encoder - 4) // 4 + 1
    if family == "phi4_multimodal":  # Phi4MultimodalFeatureExtractor._compute_audio_embed_size: 8x, rounded up
        return mel, 8, math.ceil(mel / 8)
    if family == "granite_speech":  # the Q-Former: 3 queries for each window of 15 frames, the last padded
        window = model.config.window_size
        return acc.mel_frames_padded, window, math.ceil(acc.mel_frames_padded / window) * (window //
                                                                                          model.config.downsample_rate)
    if family == "kyutai_stt":  # Mimi at 24 kHz: one frame each 1920 samples of its extractor's output, the
        # last one partial (the extractor pads the clip with silence first)
        from transformers import KyutaiSpeechToTextFeatureExtractor
        samples = KyutaiSpeechToTextFeatureExtractor()(r.clip.waveform, sampling_rate=24000,
                                                       return_tensors="pt")["input_values"].shape[-1]
        return samples, 1920, math.ceil(samples / 1920)
    return None  # encoder-decoder (Whisper, SeamlessM4T): the audio never enters the decoder's sequence


@pytest.mark.parametrize("family", sorted(CHECKPOINTS))
def test_a_clip_that_ends_mid_window_gives_each_family_its_own_lm_token_count(family, cut_clip):
    model, processor = CHECKPOINTS[family]()
    target = dict(zip(EXTRA_ARGS.get(family, [])[::2], EXTRA_ARGS.get(family, [])[1::2])).get("--target")
    r = trace_clip(cut_clip, model, processor=processor,
                   options=TraceOptions(repeats=1, warmup=0, steps=0, target=target))
    assert abs(r.clip.info.used_duration_s - CUT_S) < 1e-3
    counted = _lm_tokens(family, r, model)
    if counted is not None:
        frames, window, expected = counted
        assert frames % window != 0, f"{frames} frames fill whole windows of {window}: cut the clip elsewhere"
        assert r.inputs.accounting.audio_tokens == expected, r.inputs.accounting.length_function
    statuses = {name: run.status for name, run in r.runs.items()}
    assert statuses == {"audio_tower": "not_applicable" if family == "kyutai_stt" else "ok", "full_forward": "ok"}, \
        r.runs["full_forward"].reason
    assert "refuted" not in {v.verdict for v in r.verdicts}
    sequence = [v for v in r.verdicts if v.claim.startswith("LM sequence")]
    assert [v.verdict for v in sequence] == ["confirmed"]  # the LM consumed prompt + target, audio included
    if counted is None:
        assert not r.inputs.audio_in_lm
        return
    ids = r.inputs.full["input_ids"]
    if family == "kyutai_stt":  # one LM position a codec frame, after the start row
        assert ids.shape[1] - 1 == expected
        return
    audio_id = getattr(model.config, "audio_token_id", None) or getattr(model.config, "audio_token_index", None) \
        or model.config.audio_config.audio_token_id
    if processor is not None and getattr(processor, "audio_token_id", None) is not None:
        audio_id = processor.audio_token_id
    assert int((ids == audio_id).sum()) == expected
    full = r.runs["full_forward"]
    produced = {  # the module whose output is the audio rows the LM receives
        "granite_speech": "base_model.model.model.projector",
        "phi4_multimodal": "base_model.model.model.embed_tokens_extend.audio_embed.encoder",
        "qwen2_5_omni_thinker": "base_model.model.model.audio_tower",
        "qwen3_asr": "base_model.model.model.audio_tower",
    }.get(family)
    if produced is not None:
        rows = full.module(produced).outputs[0].shape
        assert (rows[1] if len(rows) == 3 else rows[0]) == expected
