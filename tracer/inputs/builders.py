"""Each family's builder: a clip -> both strategies' inputs (the encoder's, the whole model's with labels),
with where the clip's length goes. inputs/families.py holds the registry that picks one for a model."""
from __future__ import annotations

from dataclasses import replace

from ..load.audio import Clip
from ..errors import TracerError
from .common import IGNORE_INDEX, AudioAccounting, ModelInputs, audio_in_prompt_inputs, audio_kwargs_for, audio_token_id_of, encoder_features, encoder_hidden, encoder_lengths, feature_extractor_of, no_tokenizer_fits, text_vocab_size


def encoder_decoder_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Whisper-style: the encoder on the mel features; full_forward is encoder + decoder with labels on the
    target text (the model shifts them right into the decoder's inputs), as in HF's fine-tuning recipe.
    The prompt does not apply: the decoder's task tokens come with the tokenizer."""
    tower, accounting = encoder_features(processor, encoder, clip)
    features = tower["input_features"]
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return ModelInputs(tower, None, accounting, "none (the processor has no tokenizer for the decoder)", 0, 0,
                           audio_in_lm=False)
    labels = tokenizer(target, return_tensors="pt")["input_ids"]
    config = getattr(model, "config", None)
    start = getattr(config, "decoder_start_token_id", None)
    if start is not None and labels.shape[1] > 1 and int(labels[0, 0]) == start:
        labels = labels[:, 1:]  # the model puts the start token back when it shifts the labels
    limit = getattr(config, "max_target_positions", None)
    if limit is not None and labels.shape[1] > limit:
        raise TracerError(f"--target: {labels.shape[1]} tokens, but the decoder takes at most {limit}: "
                          "use a shorter --target")
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and int(labels.max()) >= vocab:
        raise TracerError(f"the tokenizer gives ids up to {int(labels.max())} but the decoder's vocabulary has "
                          f"{vocab}: this processor does not fit the checkpoint")
    full = {"input_features": features, "labels": labels}
    frames = _encoder_frames(encoder, features.shape[-1])
    return ModelInputs(tower, full, accounting, f"labels on the target text; the decoder cross-attends all "
                       f"{frames} encoder frames (padding included)", 0, labels.shape[1], audio_in_lm=False)


def _encoder_frames(encoder, mel_frames: int) -> str:
    lengths = encoder_lengths(encoder, mel_frames)
    return f"{lengths[0]:,}" if lengths else "its"


def packed_tower_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Qwen2.5-Omni's thinker: its audio encoder takes the clip's frames alone, packed without a batch axis
    (mel x frames), with their count (``feature_lens``) and the count after its convolutions, as the
    model's own ``get_audio_features`` calls it. The whole model takes what the processor makes."""
    import torch
    inputs = audio_in_prompt_inputs(processor, model, encoder, clip, prompt, target)
    features = inputs.tower["input_features"]
    lengths = torch.tensor([inputs.accounting.mel_frames])
    packed = features[0, :, : inputs.accounting.mel_frames]  # the clip's frames, no padding
    after_cnn = torch.tensor([encoder_lengths(encoder, inputs.accounting.mel_frames)[0]])
    return replace(inputs, tower={"input_features": packed, "feature_lens": lengths, "aftercnn_lens": after_cnn})


def unpooled_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Voxtral: the encoder's frames are not pooled: the projector takes them four at a time (its input is
    ``intermediate_size`` wide), so the LM receives 375 tokens for each 30 s window, padding included; the
    surrogate loss pools the encoder frames that hold the clip. The prompt is built here, the audio's
    tokens first, as many as the model takes (its processor needs mistral-common)."""
    tower, accounting = encoder_features(processor, encoder, clip)
    frames = encoder_lengths(encoder, accounting.mel_frames)[0]
    window = encoder_lengths(encoder, tower["input_features"].shape[-1])[0]
    audio_config = model.config.audio_config
    per_token = audio_config.intermediate_size // audio_config.hidden_size
    lm_tokens = window // per_token
    accounting = replace(accounting, encoder_frames=frames, audio_tokens=lm_tokens,
                         length_function=f"{type(encoder).__name__}: {window:,} encoder frames a window, "
                                         f"{per_token} per LM token")
    inputs = ModelInputs(tower, None, accounting, "none (no tokenizer)", 0, 0, tower_frames=frames)
    return _audio_tokens_then_prompt(inputs, processor, model, lm_tokens, prompt, target,
                                     {"input_features": tower["input_features"]})


def _audio_tokens_then_prompt(inputs: ModelInputs, processor, model, lm_tokens: int, prompt: str, target: str,
                              audio_inputs: dict) -> ModelInputs:
    """The prompt built here: ``lm_tokens`` of the model's audio token, the prompt, then the target, for a
    family whose processor cannot be used here (or that has none): the count is the model's, not a
    processor's formula."""
    import torch
    tokenizer = getattr(processor, "tokenizer", None)
    audio_id = audio_token_id_of(model)
    if tokenizer is None or audio_id is None:
        return inputs
    vocab = text_vocab_size(model)
    if vocab is not None and len(tokenizer) > vocab:
        return replace(inputs, no_full_reason=no_tokenizer_fits(vocab, tokenizer))
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    target_ids = tokenizer(" " + target + (tokenizer.eos_token or ""), add_special_tokens=False,
                           return_tensors="pt")["input_ids"]
    head = torch.cat([torch.full((1, lm_tokens), audio_id, dtype=torch.long), prompt_ids], dim=1)
    input_ids = torch.cat([head, target_ids], dim=1)
    labels = torch.cat([torch.full_like(head, IGNORE_INDEX), target_ids], dim=1)
    full = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **audio_inputs, "labels": labels}
    return replace(inputs, full=full, template=f"built here: {lm_tokens} audio tokens, then the prompt",
                   prompt_tokens=head.shape[1], target_tokens=target_ids.shape[1])


def qformer_window_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Granite Speech: a conformer encoder on stacked mels (frames x 160, time first), whose forward takes
    them as ``hidden_states``; the Q-Former projector turns each window of ``window_size`` encoder frames
    into ``window_size // downsample_rate`` LM tokens, the last window padded. The checkpoint's own
    extractor (which needs torchaudio) when it ships one, else SeamlessM4T's (the same 80 mels stacked in
    pairs)."""
    import math

    fe = feature_extractor_of(processor)
    if type(fe).__name__ in ("GraniteSpeechFeatureExtractor", "GraniteLogMel"):  # its own call, no padding options
        features = fe([clip.waveform])["input_features"]
        accounting = _frames_accounting(features.shape[1])
    else:
        tower, accounting = encoder_features(processor, encoder, clip)
        features = tower["input_features"]
    frames = accounting.mel_frames_padded  # the encoder keeps its input's frames; padding included
    config = model.config
    window, per_window = config.window_size, config.window_size // config.downsample_rate
    lm_tokens = math.ceil(frames / window) * per_window
    accounting = replace(accounting, encoder_frames=frames, audio_tokens=lm_tokens,
                         length_function=f"{_projector_class(model)}: ceil(frames / {window}) "
                                         f"windows x {per_window} queries")
    inputs = ModelInputs({"hidden_states": features}, None, accounting, "none (no tokenizer)", 0, 0)
    return _audio_tokens_then_prompt(inputs, processor, model, lm_tokens, prompt, target,
                                     {"input_features": features})


def _projector_class(model) -> str:
    """The class of the module named ``projector``, wherever the layout puts it (transformers 5.6: the top
    level; 5.24: under ``model``)."""
    found = next((m for p, m in model.named_modules() if p.rsplit(".", 1)[-1] == "projector"), None)
    return type(found).__name__ if found is not None else "the projector"


def _frames_accounting(frames: int):
    return AudioAccounting(mel_frames=frames, mel_frames_padded=frames, encoder_frames=None, audio_tokens=None,
                           padded_fraction=0.0, length_function="")


def measured_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Qwen3-ASR, GLM-ASR, MusicFlamingo: families whose LM-token count has no length function on the
    encoder (windowed encoders, frames merged in the projector). The count is measured: the model's own
    ``get_audio_features`` on the clip's features, rows of what it hands the LM. The processor's prompt is
    used when its audio tokens agree with that count; otherwise the prompt is built here with it."""
    import torch
    tower, accounting = encoder_features(processor, encoder, clip)
    audio = audio_kwargs_for(model, tower["input_features"], accounting)
    with torch.no_grad():
        features_out = _inner_model(model).get_audio_features(**audio)
    handed = features_out.pooler_output
    tokens = handed.numel() // handed.shape[-1]
    encoder_frames, tower_frames = accounting.encoder_frames, None
    if encoder_frames is None:  # no length function on the encoder: measured too, on the same pass's output
        out = features_out.last_hidden_state
        if out.dim() == 2:  # packed (Qwen3-ASR): the clip's frames alone, no batch axis
            encoder_frames = out.shape[0]
        elif len(tower) == 1:  # the padded window and no mask: the clip holds its leading share of the frames
            encoder_frames = tower_frames = round(out.shape[1] * accounting.mel_frames / accounting.mel_frames_padded)
    accounting = replace(accounting, encoder_frames=encoder_frames, audio_tokens=tokens,
                         length_function=f"measured: {type(_inner_model(model)).__name__}.get_audio_features "
                                         f"on the clip hands the LM {tokens} rows")
    if getattr(processor, "audio_token", None) is not None:
        via_processor = audio_in_prompt_inputs(processor, model, encoder, clip, prompt, target)
        audio_id = audio_token_id_of(model)
        if via_processor.full is not None and int((via_processor.full["input_ids"] == audio_id).sum()) == tokens:
            full = {**via_processor.full, **audio}
            return replace(via_processor, full=full, accounting=accounting, tower_frames=tower_frames)
    inputs = ModelInputs(tower, None, accounting, "none (no tokenizer)", 0, 0, tower_frames=tower_frames)
    return _audio_tokens_then_prompt(inputs, processor, model, tokens, prompt, target, audio)


def _inner_model(model):
    """The model a PeftModel wraps (its own get_base_model), or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def phi4_inputs(processor, model, encoder, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Phi-4-multimodal: its extractor gives time-first mels (``audio_input_features``) and the LM-token count
    itself (``audio_embed_sizes``, the encoder's 8x time reduction); the encoder nested in the LM's
    embedding takes them as ``hidden_states`` with a ``mask``. The prompt is built here with that count."""
    import torch

    fe = feature_extractor_of(processor)
    feats = fe(clip.waveform, sampling_rate=clip.info.sample_rate, return_tensors="pt")
    features = feats["audio_input_features"]
    sizes = feats["audio_embed_sizes"]
    lm_tokens = int(sizes[0])
    with torch.no_grad():
        out_frames = encoder_hidden(encoder(features, feats.get("audio_attention_mask"))).shape[1]
    accounting = AudioAccounting(mel_frames=features.shape[1], mel_frames_padded=features.shape[1],
                                 encoder_frames=out_frames, audio_tokens=lm_tokens, padded_fraction=0.0,
                                 length_function=f"{type(fe).__name__}._compute_audio_embed_size "
                                                 f"(compression {fe.audio_compression_rate})")
    tower = {"hidden_states": features, "mask": feats.get("audio_attention_mask")}
    inputs = ModelInputs(tower, None, accounting, "none (no tokenizer)", 0, 0, tower_frames=lm_tokens)
    audio = {"audio_input_features": features, "audio_embed_sizes": sizes}
    if feats.get("audio_attention_mask") is not None:
        audio["audio_attention_mask"] = feats["audio_attention_mask"]
    return _audio_tokens_then_prompt(inputs, processor, model, lm_tokens, prompt, target, audio)


def _phi4_extractor():
    from transformers import Phi4MultimodalFeatureExtractor
    return Phi4MultimodalFeatureExtractor()  # 80 mels, time first, as its conformer takes


def codec_inputs(processor, model, codec, clip: Clip, prompt: str, target: str) -> ModelInputs:
    """Kyutai speech-to-text has no audio encoder: its Mimi codec turns the clip into K codes a frame (12.5
    frames a second), and each LM position sums one text token and one frame's codes (its embedding adds
    the offsets). full_forward: the codes, encoded once outside the traced pass (the codec is frozen;
    generate() encodes under no_grad too), with the target's tokens in the text stream from the first frame,
    then text padding; the loss is on the text stream. It takes no prompt; audio_tower does not apply."""
    import torch

    fe = feature_extractor_of(processor)
    feats = fe(clip.waveform, sampling_rate=clip.info.sample_rate, return_tensors="pt")
    config = model.config
    with torch.no_grad():
        codes = codec.encode(feats["input_values"], feats.get("padding_mask")).audio_codes
    codes = codes[:, : config.num_codebooks].transpose(1, 2)  # frames x codebooks
    frames, books = codes.shape[1], codes.shape[2]
    rate = getattr(codec.config, "frame_rate", None)
    accounting = AudioAccounting(mel_frames=frames, mel_frames_padded=frames, encoder_frames=frames,
                                 audio_tokens=frames, padded_fraction=0.0,
                                 length_function=f"{type(codec).__name__}.encode: {rate:g} frames a second, "
                                                 f"{books} codes each (its extractor's silence padding included)")
    inputs = ModelInputs({}, None, accounting, "none (no tokenizer)", 0, 0)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return inputs
    vocab = text_vocab_size(model)
    if vocab is not None and len(tokenizer) > vocab:
        return replace(inputs, no_full_reason=no_tokenizer_fits(vocab, tokenizer))
    target_ids = tokenizer(" " + target, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if target_ids.shape[1] > frames:
        raise TracerError(f"--target: {target_ids.shape[1]} tokens, but the clip gives {frames} codec frames "
                          "(one text token each): use a shorter --target or a longer clip")
    text = torch.full((1, frames), config.pad_token_id, dtype=torch.long)
    text[:, : target_ids.shape[1]] = target_ids
    start = torch.tensor([[[config.bos_token_id] + [config.audio_bos_token_id] * books]])
    input_ids = torch.cat([start, torch.cat([text.unsqueeze(-1), codes], dim=-1)], dim=1)
    labels = torch.cat([torch.tensor([[IGNORE_INDEX]]), text], dim=1)
    full = {"input_ids": input_ids, "attention_mask": torch.ones(input_ids.shape[:2], dtype=torch.long),
            "labels": labels}
    return replace(inputs, full=full, prompt_tokens=1, target_tokens=frames,
                   template=f"built here: a start row, then per codec frame its {books} codes + one text token "
                            f"(the target's {target_ids.shape[1]} from the first frame, then padding); no prompt")


def _kyutai_extractor():
    from transformers import KyutaiSpeechToTextFeatureExtractor
    return KyutaiSpeechToTextFeatureExtractor()  # 24 kHz waveform, as its Mimi codec takes


def _seamless_extractor():
    from transformers import SeamlessM4TFeatureExtractor
    return SeamlessM4TFeatureExtractor()  # 80 mels, stacked in pairs: 160 wide, as its speech encoder takes
