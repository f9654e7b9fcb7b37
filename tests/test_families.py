"""The family layer: each family's inputs end to end through trace_clip, with real tiny models."""
import models
import pytest
import torch

from tracer import TraceOptions, trace_clip
from tracer.inputs.families import family_of

FAST = TraceOptions(repeats=1, warmup=0)


def test_families_are_matched_by_the_wrapped_model():
    from peft import LoraConfig, get_peft_model
    builtin = models.builtin_model()
    assert family_of(builtin).name == "qwen2_audio"
    assert family_of(get_peft_model(builtin, LoraConfig(target_modules=["q_proj"]))).name == "qwen2_audio"
    assert family_of(models.whisper()).name == "whisper"
    assert family_of(models.text_only_lm()).name == "generic"


@pytest.fixture(scope="module")
def whisper_report(root):
    model, processor = models.whisper_with_processor()
    return trace_clip(f"{root}/samples/sample.wav", model, processor=processor, options=FAST)


def test_whisper_full_forward_is_encoder_plus_decoder_on_the_target(whisper_report):
    r = whisper_report
    assert (r.static.audio_encoder.path, r.static.language_model.path) == ("model.encoder", "model.decoder")
    tower, full = r.runs["audio_tower"], r.runs["full_forward"]
    assert tower.ok and full.ok
    assert not any(p.startswith("base_model.model.model.decoder") for p in tower.executed_paths())
    assert {"base_model.model.model.decoder.layers.1.encoder_attn", "base_model.model.proj_out"} <= full.executed_paths()
    # the decoder consumed exactly the target's tokens (less the start token the model puts back)
    target_ids = r.inputs.full["labels"]
    assert r.inputs.target_tokens == target_ids.shape[1] and r.inputs.prompt_tokens == 0
    decoder = full.module("base_model.model.model.decoder")
    assert decoder.outputs[0].shape == (1, target_ids.shape[1], 32)
    assert not r.inputs.audio_in_lm and r.inputs.accounting.encoder_frames == 211


def test_whisper_decoder_lora_is_diagnosed(whisper_report):
    r = whisper_report
    assert r.runs["audio_tower"].lora_summary == {"audio_encoder": {"ok": 12},
                                                  "language_model": {"not_executed": 20}}
    assert r.runs["full_forward"].lora_summary == {"audio_encoder": {"ok": 12},
                                                   "language_model": {"ok": 20}}


def test_whisper_claims_all_hold(whisper_report):
    verdicts = {(v.claim, v.strategy): v for v in whisper_report.verdicts}
    assert "refuted" not in {v.verdict for v in verdicts.values()}
    seq = verdicts[("LM sequence = prompt + target tokens, the audio cross-attended", "full_forward")]
    assert seq.verdict == "confirmed" and seq.observed == str(whisper_report.inputs.target_tokens)


def test_whisper_loss_is_the_decoders_cross_entropy_on_the_target(whisper_report):
    """Independently: the same model, the same features and labels, plain transformers."""
    model = whisper_report.model
    full = whisper_report.inputs.full
    with torch.no_grad():
        logits = model(input_features=full["input_features"], labels=full["labels"]).logits
    expected = torch.nn.functional.cross_entropy(logits[0], full["labels"][0])
    assert whisper_report.runs["full_forward"].loss == pytest.approx(float(expected), rel=1e-5)


def test_whisper_target_longer_than_the_decoder_is_one_line(root):
    from tracer import TracerError
    model, processor = models.whisper_with_processor()
    with pytest.raises(TracerError, match=r"--target: \d+ tokens, but the decoder takes at most 128"):
        trace_clip(f"{root}/samples/sample.wav", model, processor=processor,
                   options=TraceOptions(repeats=1, warmup=0, target="word " * 200))


def test_whisper_checkpoint_directory_through_the_cli(tmp_path, capsys, root):
    from tracer.cli.main import main
    model, processor = models.whisper_with_processor()
    model.save_pretrained(tmp_path / "whisper")
    processor.save_pretrained(tmp_path / "whisper")
    out = tmp_path / "r.json"
    assert main([f"{root}/samples/sample.wav", "--model", str(tmp_path / "whisper"), "--repeats", "1",
                 "--warmup", "0", "--json", str(out), "--quiet"]) == 0
    import json
    data = json.loads(out.read_text())
    assert {n: r["status"] for n, r in data["runs"].items()} == {"audio_tower": "ok", "full_forward": "ok"}
    assert data["runs"]["full_forward"]["lora_summary"]["language_model"] == {"ok": 20}
    assert all(v["verdict"] != "refuted" for v in data["confirmation"])


def test_upstream_qwen2_audio_test_config_runs_its_60_frame_encoder(tmp_path, capsys, root):
    """No processor ships with it: the feature extractor is fitted to the encoder (80 mels, 60 frames), and
    full_forward says why it cannot run (no tokenizer fits a 99-token vocabulary) instead of crashing."""
    from tracer.cli.main import main
    models.upstream_qwen2_audio().save_pretrained(tmp_path / "upstream")
    out = tmp_path / "r.json"
    assert main([f"{root}/samples/sample.wav", "--model", str(tmp_path / "upstream"), "--repeats", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "fitted to its encoder (80 mels, 60 frames = 0.6 s)" in stdout
    import json
    data = json.loads(out.read_text())
    tower = data["runs"]["audio_tower"]
    assert tower["status"] == "ok"
    encoder = next(m for m in tower["modules"] if m["path"] == "base_model.model.model.audio_tower")
    assert encoder["inputs"][0] == "1x80x60 float32"
    assert data["clip"]["audio_tokens"] == 15 and data["clip"]["mel_frames"] == 60
    full = data["runs"]["full_forward"]
    assert full["status"] == "not_applicable" and "no tokenizer fits its 99-token vocabulary" in full["reason"]


def test_audioflamingo3_takes_its_mask_and_its_own_audio_token(root):
    """The encoder needs input_features_mask (not Qwen2-Audio's feature_attention_mask) and the prompt
    needs <sound>, expanded by the processor: both strategies run and every claim holds."""
    model, processor = models.audioflamingo3_with_processor()
    assert family_of(model).name == "audioflamingo3"
    r = trace_clip(f"{root}/samples/sample.wav", model, processor=processor, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    assert set(r.inputs.tower) == {"input_features", "input_features_mask"}
    assert "input_features_mask" in r.inputs.full and "feature_attention_mask" not in r.inputs.full
    sound = processor.audio_token_id
    assert int((r.inputs.full["input_ids"] == sound).sum()) == r.inputs.accounting.audio_tokens == 105
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert r.runs["full_forward"].lora_summary == {"audio_encoder": {"ok": 12},
                                                   "language_model": {"ok": 6}}


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _static_only_reports_the_processor_error(directory, tmp_path, capsys, root, error):
    """--static-only needs no processor: exit 0, the structure reported and written, and the clip section
    (clip_error in the JSON) saying why there are no inputs, in the words a real run stops with."""
    import json

    from tracer.cli.main import main
    out = tmp_path / "static.json"
    assert main([f"{root}/samples/sample.wav", "--model", str(directory), "--static-only", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "could not be prepared (the static report above stands)" in stdout and f"! {error}" in stdout
    data = json.loads(out.read_text())
    assert data["clip_error"] == error and "clip" not in data
    assert data["static"]["audio_encoder"]["path"] == "model.audio_tower"


@pytest.mark.skipif(_importable("mistral_common"), reason="mistral-common is installed here")
def test_a_processor_needing_a_missing_package_is_named_not_replaced(tmp_path, capsys, root):
    """A checkpoint that ships Voxtral's processor, whose tokenizer needs mistral-common: one line naming the
    package and how to install it, exit 2 (not the built-in processor in its place). --static-only does not
    need it. (Granite's, which needs torchaudio for its log-mel only, runs on torch's: test_granite_mel.py.)"""
    import json

    from transformers import WhisperFeatureExtractor

    from tracer.cli.main import main
    directory = tmp_path / "voxtral"
    models.upstream_qwen2_audio().save_pretrained(directory)
    (directory / "tekken.json").write_text("{}")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "MistralCommonBackend", "processor_class": "VoxtralProcessor"}))
    extractor = WhisperFeatureExtractor(feature_size=80).to_dict()
    (directory / "processor_config.json").write_text(json.dumps(
        {"processor_class": "VoxtralProcessor", "feature_extractor": extractor}))
    capsys.readouterr()  # the save's progress bar
    assert main([f"{root}/samples/sample.wav", "--model", str(directory), "--repeats", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    error = (f"--model {directory}: its processor needs mistral-common, which is not installed: "
             "pip install mistral-common (or pip install -e '.[families]')")
    assert err == f"error: {error}\n"
    _static_only_reports_the_processor_error(directory, tmp_path, capsys, root, error)


def test_a_shipped_processor_that_does_not_load_is_an_error(tmp_path, capsys, root):
    import json

    from tracer.cli.main import main
    directory = tmp_path / "broken"
    models.upstream_qwen2_audio().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "NoSuchExtractor"}))
    capsys.readouterr()  # the save's progress bar
    assert main([f"{root}/samples/sample.wav", "--model", str(directory), "--repeats", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --model {directory}: its processor does not load (") and err.count("\n") == 1
    _static_only_reports_the_processor_error(directory, tmp_path, capsys, root, err[len("error: "):-1])


def test_qwen2_5_omni_thinker_tower_takes_packed_frames_with_their_lengths(root):
    """Its audio encoder takes the clip's frames alone (mel x frames, no batch axis) with feature_lens, as
    get_audio_features calls it, and returns tokens x width: the tower runs, and so does the thinker."""
    model = models.qwen2_5_omni_thinker()
    assert family_of(model).name == "qwen2_5_omni"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    tower = r.inputs.tower
    assert tower["input_features"].shape == (128, 422) and tower["feature_lens"].tolist() == [422]
    encoder = r.runs["audio_tower"].module("base_model.model.model.audio_tower")
    assert encoder.outputs[0].shape == (105, 32)  # the clip's 105 audio tokens, as the LM receives them
    assert "refuted" not in {v.verdict for v in r.verdicts}
    # LoRA on the vision tower's 'proj' never runs on a clip: reported, not counted as needed
    assert r.runs["full_forward"].lora_summary["other"] == {"not_executed": 2}


def test_voxtral_lm_gets_375_tokens_a_window_and_the_tower_pools_the_clips_frames(root):
    """Voxtral's encoder output is not pooled (the projector takes 4 frames a token): the LM receives 375
    tokens for the 30 s window, and the surrogate loss averages the 211 encoder frames that hold the clip."""
    model = models.voxtral()
    assert family_of(model).name == "voxtral"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    acc = r.inputs.accounting
    assert (acc.encoder_frames, acc.audio_tokens, r.inputs.tower_frames) == (211, 375, 211)
    assert int((r.inputs.full["input_ids"] == model.config.audio_token_id).sum()) == 375
    verdicts = {(v.claim, v.strategy): v for v in r.verdicts}
    seq = verdicts[("LM sequence = prompt + target tokens, 375 of them audio", "full_forward")]
    assert seq.verdict == "confirmed"
    # the tower's loss is over the clip's frames: the same number by hand
    from tracer.run.strategies import tower_loss
    encoder = model.model.audio_tower
    with torch.no_grad():
        hidden = encoder(input_features=r.inputs.tower["input_features"]).last_hidden_state
    assert hidden.shape[1] == 1500
    expected = float(hidden[:, :211].float().mean(1).square().sum())
    assert r.runs["audio_tower"].loss == pytest.approx(expected, rel=1e-5)
    assert float(tower_loss(hidden, 211, "pooled_l2")) == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(_importable("timm"), reason="timm is installed here")
def test_a_model_that_needs_a_missing_package_to_build_is_named(tmp_path, capsys, root):
    """Gemma3n's vision tower is a timm model: without timm, one line naming it, exit 2."""
    from transformers import Gemma3nConfig

    from tracer.cli.main import main
    config = Gemma3nConfig()
    config.architectures = ["Gemma3nForConditionalGeneration"]
    config.save_pretrained(tmp_path / "gemma3n")
    (tmp_path / "gemma3n" / "model.safetensors").write_bytes(b"")  # never read: building fails first
    capsys.readouterr()
    assert main([f"{root}/samples/sample.wav", "--model", str(tmp_path / "gemma3n"), "--static-only"]) == 2
    assert capsys.readouterr().err == (f"error: --model {tmp_path / 'gemma3n'}: building it needs timm, which is not "
                                       "installed: pip install timm (or pip install -e '.[families]')\n")


def test_seamless_m4t_speech_to_text_uses_its_own_extractor_and_decoder(root):
    """No processor ships (its tokenizer needs sentencepiece): the family's own feature extractor (stacked
    mels, 160 wide) replaces the built-in Whisper one; encoder + text decoder run on the target; the speech
    encoder's layers are found inside it (speech_encoder.encoder.layers) and confirmed."""
    model = models.seamless_m4t_speech_to_text()
    assert family_of(model).name == "seamless_m4t"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.notes[0].startswith("this model has no processor: using SeamlessM4TFeatureExtractor()")
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    features = r.inputs.tower["input_features"]
    assert features.shape[0] == 1 and features.shape[2] == 160
    assert r.inputs.accounting.mel_frames_padded == features.shape[1]  # frames, not the feature width
    assert r.static.audio_encoder.path == "speech_encoder"
    assert r.static.audio_encoder.layers_path == "speech_encoder.encoder.layers"
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert {"base_model.model.text_decoder.layers.1", "base_model.model.lm_head"} <= r.runs["full_forward"].executed_paths()


def test_kyutai_codec_front_end_is_said_plainly_and_full_forward_runs_on_its_codes(root):
    """Kyutai STT has no audio encoder: its Mimi codec turns the clip into 8 codes a frame, 12.5 frames a
    second. Step 3 and audio_tower say so; full_forward runs the LM on one frame a position (a start row,
    then codes + text), loss on the text stream; the codec runs outside the traced pass (frozen)."""
    model = models.kyutai_stt()
    assert family_of(model).name == "kyutai_stt"
    target = "the encoder and the language model"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=TraceOptions(repeats=1, warmup=0, target=target))
    assert r.static.audio_encoder is None and r.static.audio_codec == "codec_model"
    assert r.static.strategy.chosen == "full_forward" and "codec at 'codec_model' (MimiModel)" in \
        r.static.strategy.reason
    tower, full = r.runs["audio_tower"], r.runs["full_forward"]
    assert tower.status == "not_applicable" and "through the codec at base_model.model.codec_model" in tower.reason
    assert full.ok
    ids = r.inputs.full["input_ids"]
    frames = r.inputs.accounting.audio_tokens
    assert ids.shape == (1, frames + 1, 1 + 8)
    # the codes are the codec's own on the extractor's output, one frame a position after the start row
    from transformers import KyutaiSpeechToTextFeatureExtractor
    feats = KyutaiSpeechToTextFeatureExtractor()(r.clip.waveform, sampling_rate=24000, return_tensors="pt")
    with torch.no_grad():
        codes = model.codec_model.encode(feats["input_values"], feats["padding_mask"]).audio_codes
    assert torch.equal(ids[0, 1:, 1:], codes[0].T) and frames == codes.shape[-1]
    assert frames == -(-feats["input_values"].shape[-1] // 1920)  # 24 kHz / 12.5 a second
    labels = r.inputs.full["labels"][0]
    from transformers import AutoProcessor

    from tracer.load.model import BUILTIN_MODEL_DIR
    words = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    assert labels[0] == -100 and labels[1:len(words) + 1].tolist() == words
    assert set(labels[len(words) + 1:].tolist()) == {model.config.pad_token_id}  # text padding after the words
    assert torch.equal(ids[0, 1:, 0], labels[1:])  # the text stream is what the loss is on
    lm = full.module("base_model.model.model")
    assert lm.outputs[0].shape[1] == frames + 1 == r.inputs.prompt_tokens + r.inputs.target_tokens
    assert not any(p.startswith("base_model.model.codec_model") for p in full.executed_paths())
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert full.lora_summary["language_model"] == {"ok": 12}


def test_kyutai_target_longer_than_the_clips_frames_is_one_line(root):
    from tracer import TracerError
    with pytest.raises(TracerError, match=r"--target: \d+ tokens, but the clip gives 66 codec frames"):
        trace_clip(f"{root}/samples/sample.wav", models.kyutai_stt(),
                   options=TraceOptions(repeats=1, warmup=0, target="word " * 40))


def test_granite_speech_encoder_takes_hidden_states_and_the_qformer_sets_the_lm_tokens(root):
    """Its conformer encoder's forward takes the stacked mels (frames x 160) as hidden_states; the Q-Former
    makes 3 LM tokens of each 15-frame window (the last one padded): 210 frames -> 14 windows -> 42 tokens,
    which the prompt carries and the projector is seen to output."""
    model = models.granite_speech()
    assert family_of(model).name == "granite_speech"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.notes[0].startswith("this model has no processor: using SeamlessM4TFeatureExtractor()")
    assert (r.static.audio_encoder.path, r.static.language_model.path) == ("model.encoder", "model.language_model")
    assert r.static.audio_encoder.layers_path == "model.encoder.layers"
    assert set(r.inputs.tower) == {"hidden_states"} and r.inputs.tower["hidden_states"].shape == (1, 210, 160)
    tower, full = r.runs["audio_tower"], r.runs["full_forward"]
    assert tower.ok and full.ok
    assert not any(".language_model" in p or ".projector" in p for p in tower.executed_paths())
    acc = r.inputs.accounting
    assert (acc.encoder_frames, acc.audio_tokens) == (210, 42)
    assert int((r.inputs.full["input_ids"] == model.config.audio_token_id).sum()) == 42
    assert full.module("base_model.model.model.projector").outputs[0].shape == (1, 42, 32)
    lm_input = full.module("base_model.model.model.language_model").inputs[-1]
    assert lm_input.shape[1] == r.inputs.prompt_tokens + r.inputs.target_tokens
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert full.lora_summary == {"audio_encoder": {"ok": 17}, "language_model": {"ok": 4}}


def _lm_positions(report) -> int:
    """Positions the traced language model consumed, from its recorded input."""
    lm = report.runs["full_forward"].module("base_model.model." + report.static.language_model.path)
    return lm.inputs[0].shape[1]


def test_qwen3_asr_counts_its_packed_tokens_by_running_the_model(root):
    """Qwen3-ASR's windowed encoder has no length function and packs the clip's frames (tokens x width): the
    count is measured (55), equals the family's own formula, and is what the LM consumed."""
    from transformers.models.qwen3_asr.modeling_qwen3_asr import (
        _get_feat_extract_output_lengths,
    )
    model = models.qwen3_asr()
    assert family_of(model).name == "qwen3_asr"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    acc = r.inputs.accounting
    assert acc.mel_frames == 422
    assert acc.audio_tokens == acc.encoder_frames == int(_get_feat_extract_output_lengths(torch.tensor(422))) == 55
    assert acc.length_function.startswith("measured: Qwen3ASRForConditionalGeneration.get_audio_features")
    assert set(r.inputs.tower) == {"input_features", "input_features_mask"}
    assert r.runs["audio_tower"].module("base_model.model.model.audio_tower").outputs[0].shape == (55, 32)
    assert int((r.inputs.full["input_ids"] == model.config.audio_token_id).sum()) == 55
    assert _lm_positions(r) == r.inputs.prompt_tokens + r.inputs.target_tokens
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert r.runs["full_forward"].lora_summary == {"audio_encoder": {"ok": 13}, "language_model": {"ok": 6}}


def test_glm_asr_merges_four_frames_a_token_and_the_tower_loss_keeps_the_clips_frames(root):
    """GLM-ASR's encoder sees the padded window without a mask (1500 frames out); the projector merges 4
    frames a token and keeps the clip's: 422 mel frames -> 211 -> (211 - 4) // 4 + 1 = 52 LM tokens."""
    model = models.glm_asr()
    assert family_of(model).name == "qwen3_asr"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    acc = r.inputs.accounting
    assert (acc.encoder_frames, acc.audio_tokens, r.inputs.tower_frames) == (211, (211 - 4) // 4 + 1, 211)
    assert "input_features_mask" in r.inputs.full  # the whole model needs it, the encoder does not take it
    assert set(r.inputs.tower) == {"input_features"}
    assert _lm_positions(r) == r.inputs.prompt_tokens + r.inputs.target_tokens
    assert int((r.inputs.full["input_ids"] == model.config.audio_token_id).sum()) == 52
    assert "refuted" not in {v.verdict for v in r.verdicts}


def test_musicflamingo_goes_through_audioflamingo3s_entry_with_its_mask_renamed(root):
    """No processor: the built-in one's feature_attention_mask reaches the model as input_features_mask, and
    AudioFlamingo3's length function gives the 105 tokens the LM consumed."""
    model = models.musicflamingo()
    assert family_of(model).name == "audioflamingo3"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    assert "input_features_mask" in r.inputs.full and "feature_attention_mask" not in r.inputs.full
    assert int(r.inputs.full["input_features_mask"].sum()) == 422
    assert r.inputs.accounting.audio_tokens == 105
    assert int((r.inputs.full["input_ids"] == model.config.audio_token_id).sum()) == 105
    assert _lm_positions(r) == r.inputs.prompt_tokens + r.inputs.target_tokens
    assert "refuted" not in {v.verdict for v in r.verdicts}


def test_phi4_multimodal_end_to_end_with_its_nested_encoder(root):
    """Phi-4's conformer sits in the LM's embedding (audio_embed.encoder) and returns a bare tensor; its own
    extractor (time-first mels) gives the LM-token count, 8x fewer than the frames: 419 -> 53, which the
    encoder outputs, the prompt carries and the LM consumed. The image tower's LoRA never runs on a clip."""
    model = models.phi4_multimodal()
    assert family_of(model).name == "phi4_multimodal"
    r = trace_clip(f"{root}/samples/sample.wav", model, options=FAST)
    assert r.notes[0].startswith("this model has no processor: using Phi4MultimodalFeatureExtractor()")
    assert (r.static.audio_encoder.path, r.static.language_model.path) == \
        ("model.embed_tokens_extend.audio_embed.encoder", "model")
    tower, full = r.runs["audio_tower"], r.runs["full_forward"]
    assert tower.ok and full.ok
    assert r.inputs.tower["hidden_states"].shape == (1, 419, 80)
    acc = r.inputs.accounting
    assert (acc.mel_frames, acc.encoder_frames, acc.audio_tokens) == (419, 53, 53)
    encoder = tower.module("base_model.model.model.embed_tokens_extend.audio_embed.encoder")
    assert encoder.outputs[0].shape == (1, 53, 32)
    assert not any(".layers." in p for p in tower.executed_paths())  # the LM's decoder layers did not run
    assert int((r.inputs.full["input_ids"] == model.config.audio_config.audio_token_id).sum()) == 53
    assert full.module("base_model.model.model.layers.0").inputs[0].shape[1] == \
        r.inputs.prompt_tokens + r.inputs.target_tokens
    assert "refuted" not in {v.verdict for v in r.verdicts}
    assert full.lora_summary == {"audio_encoder": {"ok": 17}, "language_model": {"ok": 6}, "other": {"not_executed": 3}}


def test_a_missing_package_is_named_as_pip_installs_it():
    """PIL is installed as Pillow (transformers 4.57's Phi-4 processor imports it)."""
    from pathlib import Path

    from tracer.load.processors import _missing_package
    text = _missing_package(Path("ckpt"), ImportError("No module named 'PIL'"))
    assert text == "--model ckpt: its processor needs Pillow, which is not installed: pip install Pillow"
