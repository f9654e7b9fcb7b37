"""What a checkpoint ships in place of a processor, as a user meets it through `bin/trace CLIP --model DIR`:
a tokenizer and a feature extractor with no processor config joining them (AutoProcessor then hands back
the bare tokenizer), a processor class that cannot load here, a tokenizer alone, a feature extractor alone
(AutoProcessor then builds an empty tokenizer into the processor). Never a guess: each part is checked for
what it is, and what cannot run says why."""
import json

import models
import pytest
from transformers import (
    AutoProcessor,
    KyutaiSpeechToTextFeatureExtractor,
    Phi4MultimodalFeatureExtractor,
    SeamlessM4TFeatureExtractor,
    WhisperFeatureExtractor,
)
from helpers import FAST, assert_both_ran_and_confirmed, set_processor_class, trace_json
from models import CHECKPOINTS, EXTRA_ARGS

from tracer.load.assets import BUILTIN_MODEL_DIR

# (what the tokenizer's config names, whether the chat template file stays, whether a feature extractor ships)
OMNI_LAYOUTS = {
    # no processor_class anywhere: AutoProcessor returns the bare Qwen2Tokenizer (this used to end in
    # "unexpected AttributeError: Qwen2Tokenizer has no attribute sampling_rate", exit 1, --static-only too)
    "tokenizer-and-extractor": (None, True, True),
    # its own processor class, which needs an image and a video processor too: it does not load here
    "declared-omni-processor": ("Qwen2_5OmniProcessor", False, True),
    # a tokenizer alone: the built-in feature extractor (which fits its 128-mel encoder) with its tokenizer
    "tokenizer-only": (None, True, False),
}


@pytest.mark.parametrize("layout", sorted(OMNI_LAYOUTS))
def test_qwen2_5_omni_thinker_with_a_tokenizer_and_an_extractor_but_no_processor_config(layout, tmp_path, capsys,
                                                                                           root):
    """The thinker's own Qwen2_5OmniProcessor also needs an image and a video processor, so the parts are
    joined in a Qwen2AudioProcessor: for a clip it expands the audio as the thinker's does (<|audio_bos|>,
    one <|AUDIO|> a token by the same length function, <|audio_eos|>), and the thinker checks the count
    against the features. Both strategies run and the LM sequence is confirmed; --static-only exits 0."""
    declared, keep_template, ships_extractor = OMNI_LAYOUTS[layout]
    directory = tmp_path / "omni"
    models.qwen2_5_omni_thinker().save_pretrained(directory)
    builtin = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    builtin.tokenizer.save_pretrained(directory)
    if ships_extractor:
        builtin.feature_extractor.save_pretrained(directory)
    set_processor_class(directory, declared)
    if not keep_template:
        (directory / "chat_template.jinja").unlink()
    assert not (directory / "processor_config.json").exists()
    if layout == "tokenizer-and-extractor":  # the case as the issue met it
        assert type(AutoProcessor.from_pretrained(directory)).__name__ == "Qwen2Tokenizer"

    clip = f"{root}/samples/sample.wav"
    data = trace_json([clip, "--model", str(directory), *FAST], tmp_path, capsys)
    assert_both_ran_and_confirmed(data)
    note = " ".join(data["notes"])
    assert "joined in a Qwen2AudioProcessor (as the qwen2_5_omni family builds its prompt" in note
    if declared:
        assert note.startswith("its processor (Qwen2_5OmniProcessor) does not load here (")
        assert "Qwen2_5OmniProcessor, which its files name, takes more than a tokenizer and a feature extractor" in note
    if not ships_extractor:
        assert note.startswith("the checkpoint ships a tokenizer (Qwen2Tokenizer) and no feature extractor: "
                               "using the built-in one (WhisperFeatureExtractor, 128 mels) and its own tokenizer")
    assert data["clip"]["audio_tokens"] == 105

    static = trace_json([clip, "--model", str(directory), "--static-only", "--quiet"], tmp_path, capsys)
    assert "clip_error" not in static and static["clip"]["audio_tokens"] == 105


def _extractor_of(family):
    """The feature extractor each family's tiny model takes (Granite's own needs torchaudio: SeamlessM4T's
    makes the same 80 mels stacked in pairs)."""
    own = {"whisper": lambda: WhisperFeatureExtractor(feature_size=80),
           "seamless_m4t_speech_to_text": SeamlessM4TFeatureExtractor,
           "granite_speech": SeamlessM4TFeatureExtractor,
           "phi4_multimodal": Phi4MultimodalFeatureExtractor,
           "kyutai_stt": KyutaiSpeechToTextFeatureExtractor}
    return own.get(family, lambda: WhisperFeatureExtractor(feature_size=128))()


@pytest.mark.parametrize("family", sorted(CHECKPOINTS))
def test_a_checkpoint_with_a_feature_extractor_and_no_tokenizer(family, tmp_path, capsys, root):
    """AutoProcessor builds an empty tokenizer into AudioFlamingo3's processor when none ships (its prompt
    then had no <sound> token: "Mismatch in audio token count", exit 1). With a feature extractor alone,
    full_forward is not applicable, with the reason, for every family; audio_tower runs on the extractor."""
    model, _ = CHECKPOINTS[family]()
    directory = tmp_path / family
    model.save_pretrained(directory)
    extractor = _extractor_of(family)
    extractor.save_pretrained(directory)
    data = trace_json([f"{root}/samples/sample.wav", "--model", str(directory), *FAST, *EXTRA_ARGS.get(family, [])],
                  tmp_path, capsys)
    runs = data["runs"]
    assert runs["audio_tower"]["status"] == ("not_applicable" if family == "kyutai_stt" else "ok")
    assert runs["full_forward"]["status"] == "not_applicable"
    name = type(extractor).__name__
    assert runs["full_forward"]["reason"] == (
        f"the checkpoint ships a feature extractor ({name}) and no tokenizer: full_forward needs its tokenizer "
        "for the prompt and the target; pass a directory that has it (audio_tower runs on the feature extractor "
        "alone)")
    assert data["notes"][0] == f"the checkpoint ships a feature extractor ({name}) and no tokenizer"


def test_a_processor_given_as_a_bare_tokenizer_or_extractor_is_taken_for_what_it_is(root):
    """The library's processor= argument goes through the same check: a tokenizer alone gets the built-in
    extractor beside it; a feature extractor alone runs audio_tower and says why full_forward cannot."""
    from tracer import TraceOptions, trace_clip
    builtin = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    clip, options = f"{root}/samples/sample.wav", TraceOptions(repeats=1, warmup=0, steps=0)
    r = trace_clip(clip, models.builtin_model(), processor=builtin.tokenizer, options=options)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].ok
    assert r.notes[0].startswith("the processor given is a tokenizer (Qwen2Tokenizer), no feature extractor: "
                                 "using the built-in one")
    r = trace_clip(clip, models.builtin_model(), processor=builtin.feature_extractor, options=options)
    assert r.runs["audio_tower"].ok and r.runs["full_forward"].status == "not_applicable"
    assert r.runs["full_forward"].reason.startswith("the processor given is a feature extractor "
                                                    "(WhisperFeatureExtractor), no tokenizer: full_forward needs")


def _importable(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _save_phi4_with_its_processor(directory, layout):
    """The tiny Phi-4-multimodal with the files its Phi4MultimodalProcessor saves: the tokenizer (naming the
    processor class), and the audio feature extractor beside an image processor, either as transformers 5
    writes them (processor_config.json, one entry a part) or in one preprocessor_config.json (older hub
    checkpoints). Without torchvision the image processor, hence the processor, cannot load."""
    models.phi4_multimodal().save_pretrained(directory)
    AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer.save_pretrained(directory)
    set_processor_class(directory, "Phi4MultimodalProcessor")
    audio = Phi4MultimodalFeatureExtractor().to_dict()
    image = {"image_processor_type": "Phi4MultimodalImageProcessorFast", "patch_size": 14, "dynamic_hd": 36}
    if layout == "processor_config":
        files = {"processor_config.json": {"processor_class": "Phi4MultimodalProcessor", "audio_processor": audio,
                                           "image_processor": image}}
    else:
        files = {"preprocessor_config.json": {**audio, **image, "processor_class": "Phi4MultimodalProcessor"}}
    for name, values in files.items():
        (directory / name).write_text(json.dumps(values))


@pytest.mark.parametrize("layout", ["processor_config", "preprocessor_config"])
def test_phi4_multimodal_without_torchvision_runs_its_audio_path_from_the_tokenizer_and_extractor(layout, tmp_path,
                                                                                                  capsys, root):
    """Phi-4's processor needs torchvision for its image processor (transformers raises ImportError on
    loading it; torchvision is not installed where this suite runs, CI included), but the audio path needs
    only its tokenizer and its audio feature extractor: both strategies run on them, the 53 audio tokens its
    extractor counts are what the LM consumed. Where torchvision is installed the processor itself loads and
    the same run passes through it."""
    directory = tmp_path / "phi4"
    _save_phi4_with_its_processor(directory, layout)
    clip = f"{root}/samples/sample.wav"
    data = trace_json([clip, "--model", str(directory), *FAST], tmp_path, capsys)
    assert_both_ran_and_confirmed(data)
    assert data["clip"]["audio_tokens"] == 53
    if not _importable("torchvision"):
        assert data["notes"] == ["its processor (Phi4MultimodalProcessor) needs torchvision, which is not installed; "
                                 "its tokenizer (Qwen2Tokenizer) and feature extractor (Phi4MultimodalFeatureExtractor) "
                                 "loaded on their own"]
    static = trace_json([clip, "--model", str(directory), "--static-only", "--quiet"], tmp_path, capsys)
    assert "clip_error" not in static and static["clip"]["audio_tokens"] == 53
