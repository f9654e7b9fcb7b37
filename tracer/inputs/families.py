"""How each audio-LM family takes a clip, in one entry per family: the encoder's inputs, the whole model's
inputs and labels, and where the clip's length goes. A model is matched by its class (PEFT wrapper
unwrapped); anything else goes through the generic entry, which follows the processor as Qwen2-Audio's
does.

Covered: Qwen2-Audio and AudioFlamingo3/MusicFlamingo (the audio-in-prompt path, which follows the
processor: its audio token, its masks), Qwen2.5-Omni's thinker (the same, with its encoder's packed input),
Voxtral (unpooled frames, 375 LM tokens a window), Granite Speech (a conformer taking ``hidden_states``,
Q-Former windows), Qwen3-ASR and GLM-ASR (the LM-token count measured by running the model's own
``get_audio_features``), Phi-4-multimodal (its extractor's count, a nested conformer), Kyutai
speech-to-text (no encoder: the LM on its codec's codes), Whisper and SeamlessM4T speech-to-text
(encoder-decoder: the decoder's loss on the target).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..load.audio import Clip
from ..load.processors import AudioParts
from .common import DEFAULT_PROMPT, DEFAULT_TARGET, ModelInputs, audio_in_prompt_inputs
from .builders import (
    encoder_decoder_inputs, packed_tower_inputs, unpooled_inputs, qformer_window_inputs, measured_inputs,
    phi4_inputs, codec_inputs, _phi4_extractor, _kyutai_extractor, _seamless_extractor, _inner_model,
)


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple  # model class names this entry covers
    build: Callable  # (processor, model, encoder, clip, prompt, target) -> ModelInputs
    what_runs: str  # for the table in docs/families.md and the report: what full_forward runs on
    feature_extractor: Callable | None = None  # for a checkpoint that ships none, when Whisper's does not fit
    takes_codec: bool = False  # build() gets the codec front end (no audio encoder) in the encoder's place
    # None: build() takes a tokenizer and a feature extractor found on their own (AudioParts) as they are.
    # A dict: build() calls a processor (its audio token, its expansion); parts are joined in the class the
    # checkpoint's files name when it takes just these two, else in the one named here for the model class.
    joined_by: dict | None = None


GENERIC = Family("generic", (), audio_in_prompt_inputs, "the audio's tokens in the prompt, loss on the target",
                 joined_by={})
FAMILIES = (
    Family("qwen2_audio", ("Qwen2AudioForConditionalGeneration",), audio_in_prompt_inputs,
           "the audio's tokens in the prompt, loss on the target",
           joined_by={"Qwen2AudioForConditionalGeneration": "Qwen2AudioProcessor"}),
    Family("audioflamingo3", ("AudioFlamingo3ForConditionalGeneration", "MusicFlamingoForConditionalGeneration"),
           audio_in_prompt_inputs, "the audio's <sound> tokens in the prompt, loss on the target",
           joined_by={"AudioFlamingo3ForConditionalGeneration": "AudioFlamingo3Processor",
                      "MusicFlamingoForConditionalGeneration": "MusicFlamingoProcessor"}),
    # NB: its own Qwen2_5OmniProcessor needs an image and a video processor too; for a clip it expands the
    # audio as Qwen2-Audio's does (<|audio_bos|>, one <|AUDIO|> a token by the same length function,
    # <|audio_eos|>), which the thinker checks against the features it gets
    Family("qwen2_5_omni", ("Qwen2_5OmniThinkerForConditionalGeneration",), packed_tower_inputs,
           "the thinker on the prompt with the audio's tokens, loss on the target",
           joined_by={"Qwen2_5OmniThinkerForConditionalGeneration": "Qwen2AudioProcessor"}),
    Family("voxtral", ("VoxtralForConditionalGeneration",), unpooled_inputs,
           "the audio's tokens (375 a 30 s window) then the prompt, loss on the target"),
    Family("qwen3_asr", ("Qwen3ASRForConditionalGeneration", "GlmAsrForConditionalGeneration"), measured_inputs,
           "the audio's tokens (as many as get_audio_features hands the LM) in the prompt, loss on the target"),
    Family("phi4_multimodal", ("Phi4MultimodalForCausalLM",), phi4_inputs,
           "the audio's tokens (its extractor's count) then the prompt, loss on the target",
           feature_extractor=_phi4_extractor),
    Family("kyutai_stt", ("KyutaiSpeechToTextForConditionalGeneration",), codec_inputs,
           "the LM on the clip's codec codes (one frame a position) with the target in the text stream",
           feature_extractor=_kyutai_extractor, takes_codec=True),
    Family("whisper", ("WhisperForConditionalGeneration",), encoder_decoder_inputs,
           "encoder + decoder, loss on the target text"),
    Family("granite_speech", ("GraniteSpeechForConditionalGeneration",), qformer_window_inputs,
           "the audio's tokens (a window of 15 encoder frames gives 3) then the prompt, loss on the target",
           feature_extractor=_seamless_extractor),
    Family("seamless_m4t", ("SeamlessM4TForSpeechToText", "SeamlessM4Tv2ForSpeechToText"), encoder_decoder_inputs,
           "speech encoder + text decoder, loss on the target text", feature_extractor=_seamless_extractor),
)


def family_of(model) -> Family:
    """The entry for ``model`` (a PeftModel is matched by the model it wraps)."""
    name = type(_inner_model(model)).__name__
    return next((f for f in FAMILIES if name in f.classes), GENERIC)


def processor_from_parts(parts, model, family: Family | None = None) -> tuple:
    """(processor, note): a tokenizer and a feature extractor found on their own, joined in a processor for
    a family whose builder calls one (the class the checkpoint's files name, when it takes just these two;
    else the family's); the parts as they are for any other family, or when nothing joins them (then
    ``parts.no_full`` says why full_forward cannot run). ``family``: family_of(model), when known already."""
    family = family or family_of(model)
    if (not isinstance(parts, AudioParts) or family.joined_by is None or parts.tokenizer is None
            or parts.feature_extractor is None):
        return parts, ""
    own = family.joined_by.get(type(_inner_model(model)).__name__)
    refused = []
    for name in dict.fromkeys(n for n in (parts.declared, own) if n):
        processor = _join(name, parts)
        if processor is None:
            refused.append(name)
            continue
        why = ("the class its files name" if name == parts.declared
               else f"as the {family.name} family builds its prompt")
        if refused:
            why += f"; {refused[0]}, which its files name, takes more than a tokenizer and a feature extractor"
        return processor, f"; joined in a {name} ({why})"
    tried = f" ({', '.join(refused)} takes more than a tokenizer and a feature extractor)" if refused else ""
    no_full = (f"{parts.found}, and no processor class joins them to put the audio's tokens in the prompt"
               f"{tried}: pass a directory that ships its processor")
    return replace(parts, no_full=no_full), f"; no processor class joins them{tried}"


def _join(name: str, parts: AudioParts):
    """transformers' processor class ``name`` made of the parts, when it takes just a feature extractor and
    a tokenizer (the tokenizer's chat template, which the checkpoint ships beside it, going along); None
    when it takes more, or does not build on them."""
    import inspect

    import transformers
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.ProcessorMixin):
        return None
    attributes = cls.get_attributes() if hasattr(cls, "get_attributes") else getattr(cls, "attributes", ())
    if set(attributes) != {"feature_extractor", "tokenizer"}:
        return None
    kwargs = {}
    template = getattr(parts.tokenizer, "chat_template", None)
    if template and "chat_template" in inspect.signature(cls.__init__).parameters:
        kwargs["chat_template"] = template
    try:
        return cls(feature_extractor=parts.feature_extractor, tokenizer=parts.tokenizer, **kwargs)
    except Exception:  # noqa: BLE001 - a tokenizer without the tokens this class expects, among others
        return None


def prepare_inputs(processor, model, encoder, clip: Clip, prompt: str = DEFAULT_PROMPT,
                   target: str = DEFAULT_TARGET, family: Family | None = None) -> ModelInputs:
    """Build both strategies' inputs from one clip, as the model's family takes them. With parts that
    cannot make the text (no tokenizer, or none joins them), full_forward says why, the same for every
    family."""
    inputs = (family or family_of(model)).build(processor, model, encoder, clip, prompt, target)
    if inputs.full is None and isinstance(processor, AudioParts):
        inputs = replace(inputs, no_full_reason=processor.no_full or processor.no_tokenizer())
    return inputs
