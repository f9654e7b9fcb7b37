"""Tiny real transformers models for tests: the layouts the tracer must handle."""
import torch
import torch.nn as nn
from transformers import (
    Qwen2AudioConfig,
    Qwen2AudioEncoder,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperConfig,
    WhisperForConditionalGeneration,
)
from transformers.models.qwen2_audio.modeling_qwen2_audio import (
    Qwen2AudioMultiModalProjector,
)

from tracer.load.model import BUILTIN_MODEL_DIR, load_builtin


def builtin_model():
    """The CLI's default model: real Qwen2AudioForConditionalGeneration, seed 0, float32 on CPU."""
    return load_builtin(torch.device("cpu"), torch.float32).model


def builtin_loaded():
    return load_builtin(torch.device("cpu"), torch.float32)


class LegacyQwen2Audio(nn.Module):
    """The transformers 4.x layout: tower, projector and a *ForCausalLM at the top level."""

    def __init__(self):
        super().__init__()
        config = Qwen2AudioConfig.from_pretrained(BUILTIN_MODEL_DIR)
        self.config = config
        self.audio_tower = Qwen2AudioEncoder(config.audio_config)
        self.multi_modal_projector = Qwen2AudioMultiModalProjector(config)
        self.language_model = Qwen2ForCausalLM(config.text_config)


def text_only_lm(tied=True):
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=100, tie_word_embeddings=tied)
    return Qwen2ForCausalLM(config)


def whisper():
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                           num_mel_bins=80, max_source_positions=1500, max_target_positions=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    return WhisperForConditionalGeneration(config)


class KwargsOnly(nn.Module):
    """Takes its input as a keyword only and returns a ModelOutput (a dict)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, *, hidden):
        from transformers.modeling_outputs import BaseModelOutput
        return BaseModelOutput(last_hidden_state=self.proj(hidden))


class Toy(nn.Module):
    """The hook engine's edge cases in one small model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)  # in-place on the output of a hooked module
        self.shared = nn.Linear(8, 8)  # called twice
        self.second = nn.Linear(8, 8)
        self.unused = nn.ModuleList([nn.Linear(8, 8)])  # registered, never called
        self.tail = KwargsOnly()
        self.fail = False

    def forward(self, x):
        h = self.act(self.first(x))
        h = self.shared(self.shared(h))
        y = self.second(h)
        y += h  # in-place add on a hooked module's output
        if self.fail:
            raise ValueError("boom inside forward")
        return self.tail(hidden=y).last_hidden_state


def whisper_with_processor():
    """A tiny Whisper whose vocabulary is the built-in tokenizer's, with a WhisperProcessor (80 mels): the
    encoder-decoder layout end to end (the decoder's loss on a target text)."""
    from transformers import AutoProcessor, WhisperFeatureExtractor, WhisperProcessor
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           vocab_size=len(tokenizer), num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=128, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                           decoder_start_token_id=eos)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    return WhisperForConditionalGeneration(config).eval(), processor


def upstream_qwen2_audio():
    """Qwen2-Audio as transformers' own test suite configures it (tests/models/qwen2_audio): an encoder of
    30 positions (60 mel frames, 80 mels) and a 99-token vocabulary; no processor ships with it."""
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        text_config={"model_type": "qwen2", "intermediate_size": 36, "hidden_size": 32, "max_position_embeddings": 52,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 99},
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": 16, "encoder_attention_heads": 4,
                      "encoder_ffn_dim": 16, "encoder_layers": 2, "num_mel_bins": 80, "max_source_positions": 30},
        audio_token_index=0)
    from transformers import Qwen2AudioForConditionalGeneration
    return Qwen2AudioForConditionalGeneration(config).eval()


def audioflamingo3_with_processor():
    """A tiny AudioFlamingo3 (Whisper-style encoder with a mask, Qwen2 LM, the processor's own <sound>
    token) whose vocabulary is the built-in tokenizer's plus <sound>."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        AutoProcessor,
        WhisperFeatureExtractor,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<sound>"]})
    torch.manual_seed(0)
    config = AudioFlamingo3Config(
        audio_config={"num_mel_bins": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                      "hidden_size": 32, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer)},
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"))
    processor = AudioFlamingo3Processor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    return AudioFlamingo3ForConditionalGeneration(config).eval(), processor


def qwen2_5_omni_thinker():
    """Qwen2.5-Omni's thinker as transformers' test suite sizes it (tests/models/qwen2_5_omni), with the
    built-in tokenizer's vocabulary and audio tokens, 128 mels so the built-in extractor fits; no processor."""
    from transformers import (
        AutoProcessor,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")}
    torch.manual_seed(0)
    config = Qwen2_5OmniThinkerConfig(
        audio_config={"d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 32, "encoder_layers": 2,
                      "num_mel_bins": 128, "max_source_positions": 1500, "n_window": 100, "output_dim": 32},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 4, "patch_size": 14,
                       "spatial_merge_size": 1, "temporal_patch_size": 2, "out_hidden_size": 32, "intermediate_size": 32},
        text_config={"rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                     "tie_word_embeddings": False},
        audio_token_index=ids["<|AUDIO|>"], audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"], image_token_index=1, video_token_index=2, vision_start_token_id=3,
        vision_end_token_id=4, user_token_id=5)
    return Qwen2_5OmniThinkerForConditionalGeneration(config).eval()


def voxtral():
    """A tiny Voxtral (Whisper-style encoder, frames not pooled, projector taking 4 at a time, Llama LM) with
    the built-in tokenizer's vocabulary and <|AUDIO|> as its audio token; no processor (Voxtral's needs
    mistral-common)."""
    from transformers import (
        AutoProcessor,
        VoxtralConfig,
        VoxtralForConditionalGeneration,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    torch.manual_seed(0)
    config = VoxtralConfig(
        audio_config={"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_mel_bins": 128, "max_source_positions": 1500, "vocab_size": 100},
        text_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                     "max_position_embeddings": 1024, "head_dim": 8},
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    return VoxtralForConditionalGeneration(config).eval()


def seamless_m4t_speech_to_text():
    """A tiny SeamlessM4T speech-to-text model (w2v-BERT speech encoder on 160-wide stacked mels, text
    decoder) with the built-in tokenizer's vocabulary; no processor (its tokenizer needs sentencepiece)."""
    from transformers import (
        AutoProcessor,
        SeamlessM4TConfig,
        SeamlessM4TForSpeechToText,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    config = SeamlessM4TConfig(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, encoder_layers=2,
                               decoder_layers=2, speech_encoder_layers=2, speech_encoder_attention_heads=4,
                               speech_encoder_intermediate_size=64, encoder_ffn_dim=64, decoder_ffn_dim=64,
                               pad_token_id=eos, decoder_start_token_id=eos, eos_token_id=eos, bos_token_id=eos,
                               max_position_embeddings=256)
    return SeamlessM4TForSpeechToText(config).eval()


def granite_speech():
    """A tiny Granite Speech (conformer encoder on 160-wide stacked mels, Q-Former projector taking windows of
    15 frames to 3 queries, Granite LM), shaped as the upstream test's, with the built-in tokenizer's
    vocabulary and <|AUDIO|> as its audio token; no processor (Granite's needs torchaudio)."""
    from transformers import (
        AutoProcessor,
        GraniteSpeechConfig,
        GraniteSpeechForConditionalGeneration,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    torch.manual_seed(0)
    config = GraniteSpeechConfig(
        encoder_config={"input_dim": 160, "num_layers": 2, "hidden_dim": 32, "feedforward_mult": 2,
                        "num_heads": 4, "dim_head": 8, "output_dim": 16, "context_size": 200, "max_pos_emb": 512},
        projector_config={"model_type": "blip_2_qformer", "hidden_size": 32, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "intermediate_size": 64, "encoder_hidden_size": 32},
        text_config={"model_type": "granite", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer)},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    return GraniteSpeechForConditionalGeneration(config).eval()


def _builtin_tokenizer_lm(model_type: str) -> tuple:
    """A tiny LM config with the built-in tokenizer's vocabulary, and that tokenizer's <|AUDIO|> id."""
    from transformers import AutoProcessor
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    lm = {"model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer), "head_dim": 8}
    return lm, tokenizer.convert_tokens_to_ids("<|AUDIO|>")


def _tiny_audio_lm(family: str, lm_type: str, audio_config: dict):
    """``{family}ForConditionalGeneration`` with the given small audio encoder, a tiny LM with the built-in
    tokenizer's vocabulary and its <|AUDIO|> as the audio token; seed 0, no processor."""
    import transformers
    lm, audio_id = _builtin_tokenizer_lm(lm_type)
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(audio_config=audio_config, text_config=lm,
                                                        audio_token_id=audio_id)
    return getattr(transformers, f"{family}ForConditionalGeneration")(config).eval()


def qwen3_asr():
    """A tiny Qwen3-ASR: a windowed Whisper-style encoder that packs the clip's frames, a Qwen3 LM."""
    return _tiny_audio_lm("Qwen3ASR", "qwen3", {"num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 4,
                                                "encoder_ffn_dim": 64, "d_model": 32, "output_dim": 32,
                                                "downsample_hidden_size": 16})


def glm_asr():
    """A tiny GLM-ASR: a rotary Whisper-style encoder; the projector merges 4 frames a token."""
    return _tiny_audio_lm("GlmAsr", "llama", {"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2,
                                              "num_attention_heads": 4, "num_mel_bins": 128})


def musicflamingo():
    """A tiny MusicFlamingo: AudioFlamingo3's encoder with rotary time embeddings, a Qwen2 LM."""
    return _tiny_audio_lm("MusicFlamingo", "qwen2", {"model_type": "audioflamingo3_encoder", "hidden_size": 16,
                                                     "intermediate_size": 64, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "num_mel_bins": 128})


def phi4_multimodal():
    """A tiny Phi-4-multimodal (conformer audio encoder nested in the LM's embedding at audio_embed.encoder,
    speech projections beside it, a small image tower) with the built-in tokenizer's vocabulary and
    <|AUDIO|> as its audio token; no processor."""
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM
    lm, audio_id = _builtin_tokenizer_lm("phi4_multimodal")
    eos = audio_id - 1
    torch.manual_seed(0)
    config = Phi4MultimodalConfig(
        vocab_size=lm["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        max_position_embeddings=1024, original_max_position_embeddings=1024,
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "crop_size": 28, "patch_size": 14, "image_token_id": audio_id - 2},
        audio_config={"hidden_size": 32, "intermediate_size": 64, "num_blocks": 2, "num_attention_heads": 4,
                      "ext_pw_out_channel": 32, "depthwise_separable_out_channel": 32, "nemo_conv_channels": 32,
                      "audio_token_id": audio_id})
    return Phi4MultimodalForCausalLM(config).eval()


def kyutai_stt():
    """A tiny Kyutai speech-to-text (upstream test's shape: 8 codebooks, a small Mimi codec at 12.5 frames a
    second) with the built-in tokenizer's vocabulary; no processor."""
    from transformers import (
        AutoProcessor,
        KyutaiSpeechToTextConfig,
        KyutaiSpeechToTextForConditionalGeneration,
    )
    tokenizer = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR).tokenizer
    vocab, books = len(tokenizer), 8
    torch.manual_seed(0)
    config = KyutaiSpeechToTextConfig(
        codebook_vocab_size=2049, vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, sliding_window=512, ffn_dim=38, rms_norm_eps=1e-6, num_codebooks=books,
        audio_bos_token_id=2048, audio_pad_token_id=vocab + books * 2049, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        codec_config={"model_type": "mimi", "num_quantizers": books, "audio_channels": 1, "hidden_size": 16,
                      "num_filters": 8, "num_residual_layers": 1, "codebook_size": 16,
                      "vector_quantization_hidden_dimension": 16, "upsample_groups": 16, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_key_value_heads": 2, "sliding_window": 4, "codebook_dim": 16,
                      "use_cache": False})
    return KyutaiSpeechToTextForConditionalGeneration(config).eval()


# Every family's tiny checkpoint, as the CLI tests save and trace it
CHECKPOINTS = {  # family -> builder of (model, processor or None: none ships)
    "qwen2_audio": lambda: (builtin_model(), None),
    "whisper": whisper_with_processor,
    "audioflamingo3": audioflamingo3_with_processor,
    "musicflamingo": lambda: (musicflamingo(), None),
    "qwen2_5_omni_thinker": lambda: (qwen2_5_omni_thinker(), None),
    "voxtral": lambda: (voxtral(), None),
    "granite_speech": lambda: (granite_speech(), None),
    "qwen3_asr": lambda: (qwen3_asr(), None),
    "glm_asr": lambda: (glm_asr(), None),
    "phi4_multimodal": lambda: (phi4_multimodal(), None),
    "seamless_m4t_speech_to_text": lambda: (seamless_m4t_speech_to_text(), None),
    "kyutai_stt": lambda: (kyutai_stt(), None),
}
EXTRA_ARGS = {"kyutai_stt": ["--target", "the encoder and the language model"]}  # one text token a codec frame
