"""The issue's bar, as a user meets it: each family's tiny model saved with save_pretrained (safetensors),
then `bin/trace CLIP --model DIR`. Both strategies run, the LM positions the clip became are what the
traced full_forward consumed, no claim is refuted, and no processor is silently replaced."""
import json

from models import CHECKPOINTS, EXTRA_ARGS
import pytest

from tracer.cli.main import main

# the transformers class each family needs: an older transformers 5.x lacks some (5.6: Qwen3-ASR)
MODEL_CLASS = {"qwen2_audio": "Qwen2AudioForConditionalGeneration", "whisper": "WhisperForConditionalGeneration",
               "audioflamingo3": "AudioFlamingo3ForConditionalGeneration",
               "musicflamingo": "MusicFlamingoForConditionalGeneration",
               "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
               "voxtral": "VoxtralForConditionalGeneration",
               "granite_speech": "GraniteSpeechForConditionalGeneration",
               "qwen3_asr": "Qwen3ASRForConditionalGeneration", "glm_asr": "GlmAsrForConditionalGeneration",
               "phi4_multimodal": "Phi4MultimodalForCausalLM",
               "seamless_m4t_speech_to_text": "SeamlessM4TForSpeechToText",
               "kyutai_stt": "KyutaiSpeechToTextForConditionalGeneration"}
NOT_APPLICABLE = {"kyutai_stt": "audio_tower"}  # no audio encoder: a codec front end


@pytest.mark.parametrize("family", sorted(CHECKPOINTS))
def test_a_saved_checkpoint_of_each_family_traces_through_the_cli(family, tmp_path, capsys, root):
    import transformers
    if not hasattr(transformers, MODEL_CLASS[family]):
        pytest.skip(f"transformers {transformers.__version__} has no {MODEL_CLASS[family]}")
    model, processor = CHECKPOINTS[family]()
    directory = tmp_path / family
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    out = tmp_path / "report.json"
    capsys.readouterr()
    code = main([f"{root}/samples/sample.wav", "--model", str(directory), "--repeats", "1", "--warmup", "0",
                 "--json", str(out), "--quiet", *EXTRA_ARGS.get(family, [])])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    expected = {"audio_tower": "ok", "full_forward": "ok"}
    if family in NOT_APPLICABLE:
        expected[NOT_APPLICABLE[family]] = "not_applicable"
    assert {name: run["status"] for name, run in data["runs"].items()} == expected
    verdicts = data["confirmation"]
    assert [v for v in verdicts if v["verdict"] == "refuted"] == []
    sequence = [v for v in verdicts if v["claim"].startswith("LM sequence") and v["strategy"] == "full_forward"]
    assert [v["verdict"] for v in sequence] == ["confirmed"]
    notes = " ".join(data.get("notes", []))
    assert ("no processor" in notes) == (processor is None)
    if family == "audioflamingo3":  # the saved chat template is the built-in tokenizer's, written for <|AUDIO|>
        assert data["clip"]["template"].endswith("(the checkpoint's chat template puts no <sound> in the prompt)")
