"""Model inputs from a clip: features through the model's own processor, audio-token accounting, prompt + labels."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..load.audio import Clip
from ..errors import TracerError

DEFAULT_PROMPT = "Transcribe the audio."
DEFAULT_TARGET = "The tracer runs a real audio clip through the encoder and the language model."
IGNORE_INDEX = -100
BUILTIN_TEMPLATE = "<|audio_bos|><|AUDIO|><|audio_eos|>{prompt}"


@dataclass(frozen=True)
class AudioAccounting:
    """Mel frames -> encoder frames -> audio tokens, by the model's own length function."""
    mel_frames: int  # frames holding the clip
    mel_frames_padded: int  # what the encoder is fed (3000 for Qwen2-Audio)
    encoder_frames: int | None
    audio_tokens: int | None
    padded_fraction: float
    length_function: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelInputs:
    tower: dict  # kwargs for the audio encoder alone
    full: dict | None  # kwargs for the whole model, labels included; None when it takes no text
    accounting: AudioAccounting
    template: str
    prompt_tokens: int  # LM positions before the target (the audio's tokens among them when audio_in_lm)
    target_tokens: int  # LM positions the loss is on
    audio_in_lm: bool = True  # False for encoder-decoder models: the decoder cross-attends the encoder
    no_full_reason: str = "the processor builds no text input for this model"  # when full is None
    tower_frames: int | None = None  # leading frames of the encoder's output that hold the clip (None: all)


def feature_extractor_of(processor):
    """A processor's audio part (``audio_processor`` for Phi-4's and Granite's), or the extractor itself."""
    for name in ("feature_extractor", "audio_processor"):
        part = getattr(processor, name, None)
        if part is not None:
            return part
    return processor


def encoder_features(processor, encoder, clip: Clip):
    """The encoder's inputs for the clip, through the processor's feature extractor, and the accounting of
    frames. Whisper-style extractors pad to their window (30 s, 3000 frames); a mask goes along under the
    name the encoder's forward takes (``input_features_mask`` for AudioFlamingo3)."""
    fe = feature_extractor_of(processor)
    fixed_window = getattr(fe, "n_samples", None) is not None  # Whisper-style: pad to the window
    feats = fe(clip.waveform, sampling_rate=clip.info.sample_rate, return_attention_mask=True,
               padding="max_length" if fixed_window else True, return_tensors="pt")
    features, mask = feats["input_features"], feats["attention_mask"]
    # NB: frames from the mask: features are (batch, mels, frames) for Whisper-style extractors but
    # (batch, frames, stacked mels) for SeamlessM4T's
    accounting = _account(encoder, int(mask.sum()), mask.shape[-1])
    if accounting.audio_tokens is not None and accounting.audio_tokens < 1:
        raise TracerError(f"{clip.info.path}: {clip.info.used_duration_s * 1000:.0f} ms is shorter than one "
                          f"encoder frame ({accounting.mel_frames} mel frames give no audio token)")
    tower = {"input_features": features}
    mask_name = next((n for n in MASK_NAMES if n in _parameters(encoder)), None)
    if mask_name is not None:
        tower[mask_name] = mask
    return tower, accounting


MASK_NAMES = ("input_features_mask", "feature_attention_mask")  # masks an encoder needs along its features


def encoder_hidden(output):
    """The encoder's last hidden state: a ModelOutput's, or the tensor itself (Phi-4's conformer)."""
    import torch
    return output if isinstance(output, torch.Tensor) else output.last_hidden_state


def audio_kwargs_for(model, features, accounting: AudioAccounting) -> dict:
    """The clip's features and mask as the whole model's forward names them: its mask name may differ from
    the encoder's (or from what a substitute processor calls it), or the encoder may take none."""
    import torch
    audio = {"input_features": features}
    name = next((n for n in MASK_NAMES if n in _parameters(model)), None)
    if name is not None:  # one clip: its frames, then the padding
        audio[name] = (torch.arange(accounting.mel_frames_padded) < accounting.mel_frames).long()[None]
    return audio


def _parameters(module) -> set:
    import inspect
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def audio_in_prompt_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Decoder-only audio LMs (Qwen2-Audio, AudioFlamingo3 and their kin): the processor puts the audio's
    tokens in the prompt (its own audio token, its own chat template); the loss is on the target after it.
    What the model gets is what the processor made, less what its forward does not take."""
    import torch
    tower, accounting = encoder_features(processor, encoder, clip)
    tokenizer = getattr(processor, "tokenizer", None)
    audio_token = getattr(processor, "audio_token", None)
    if tokenizer is None or audio_token is None:
        return ModelInputs(tower, None, accounting, "none (the processor takes no text)", 0, 0)
    vocab = text_vocab_size(model)
    if vocab is not None and len(tokenizer) > vocab:
        reason = no_tokenizer_fits(vocab, tokenizer)
        return ModelInputs(tower, None, accounting, "none (no tokenizer fits)", 0, 0, no_full_reason=reason)

    messages = [{"role": "user", "content": [{"type": "audio", "audio": clip.info.path},
                                             {"type": "text", "text": prompt}]}]
    text, template, why_not_its_own = None, "", ""
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        template = "the checkpoint's chat template"
        if audio_token not in text:  # written for another audio token: the processor would expand nothing
            text, why_not_its_own = None, f" (the checkpoint's chat template puts no {audio_token} in the prompt)"
    if text is None:
        pattern = BUILTIN_TEMPLATE if audio_token == "<|AUDIO|>" else audio_token + "{prompt}"
        text = pattern.format(prompt=prompt)
        template = "built-in template " + pattern + why_not_its_own
    end = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    encoded = processor(text=text, audio=clip.waveform, sampling_rate=clip.info.sample_rate, return_tensors="pt")
    target_ids = tokenizer(target + end, add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([encoded["input_ids"], target_ids], dim=1)
    labels = torch.cat([torch.full_like(encoded["input_ids"], IGNORE_INDEX), target_ids], dim=1)
    takes = _parameters(model)
    full = {k: v for k, v in encoded.items() if k in takes and k not in ("input_ids", "attention_mask", "labels")}
    if not any(n in full for n in MASK_NAMES):  # a substitute processor names its mask otherwise
        full.update(audio_kwargs_for(model, encoded["input_features"], accounting))
    full.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
    _remap_audio_token(processor, model, full)
    return ModelInputs(tower, full, accounting, template, encoded["input_ids"].shape[1], target_ids.shape[1])


def no_tokenizer_fits(vocab: int, tokenizer) -> str:
    return (f"no tokenizer fits its {vocab:,}-token vocabulary (this one has {len(tokenizer):,}): "
            "the checkpoint ships none; pass a directory that has its tokenizer")


def text_vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "vocab_size", None)


def encoder_lengths(encoder, mel_frames: int) -> tuple[int, int] | None:
    """(frames after the encoder's convolutions, frames after any pooling) for ``mel_frames`` input frames,
    by the encoder's own length function; None when it has none."""
    import torch
    length_fn = getattr(encoder, "_get_feat_extract_output_lengths", None)
    if length_fn is None:
        return None
    out = length_fn(torch.tensor([mel_frames]))
    if isinstance(out, tuple):  # Qwen2-Audio: (after conv, after pooling)
        return int(out[0]), int(out[1])
    return int(out), int(out)


def _account(encoder, mel_frames: int, padded: int) -> AudioAccounting:
    lengths = encoder_lengths(encoder, mel_frames)
    encoder_frames, tokens = lengths if lengths else (None, None)
    name = (f"{type(encoder).__name__}._get_feat_extract_output_lengths" if lengths
            else "none (no _get_feat_extract_output_lengths on the encoder)")
    return AudioAccounting(mel_frames=mel_frames, mel_frames_padded=padded, encoder_frames=encoder_frames,
                           audio_tokens=tokens, padded_fraction=round(1 - mel_frames / padded, 6),
                           length_function=name)


def audio_token_id_of(model) -> int | None:
    """The id the model replaces with audio features (``audio_token_index`` in older configs; Phi-4 keeps it
    in its audio config)."""
    config = getattr(model, "config", None)
    audio_config = getattr(config, "audio_config", None)
    return (getattr(config, "audio_token_id", None) or getattr(config, "audio_token_index", None)
            or getattr(audio_config, "audio_token_id", None))


def _remap_audio_token(processor, model, full: dict) -> None:
    """A fallback processor may use another id for <|AUDIO|> than the model's config."""
    wanted = audio_token_id_of(model)
    have = getattr(processor, "audio_token_id", None)
    if wanted is not None and have is not None and wanted != have:
        ids = full["input_ids"]
        ids[ids == have] = wanted


def prepare_text_inputs(tokenizer, prompt: str = DEFAULT_PROMPT, target: str = DEFAULT_TARGET) -> ModelInputs:
    """A model with no audio path: full_forward runs on the prompt and target text alone."""
    import torch
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    target_ids = tokenizer(" " + target, add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([prompt_ids, target_ids], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids], dim=1)
    full = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    accounting = AudioAccounting(0, 0, None, None, 0.0, "none (the model has no audio encoder)")
    return ModelInputs({}, full, accounting, "plain text (no audio path)", prompt_ids.shape[1], target_ids.shape[1])
