#!/usr/bin/env python3
"""Regenerate samples/tiny-qwen2-audio/: the built-in model's config and offline processor.

The weights are never saved: tracer builds them from this config with a fixed seed.
The config keeps 128 mel bins and 1500 source positions so the real 3000-frame encoder
path runs; everything else is shrunk so a CPU forward+backward takes about a second.

    python3 samples/make_tiny_model.py
"""
from pathlib import Path

from tokenizers.pre_tokenizers import ByteLevel
from transformers import (Qwen2AudioConfig, Qwen2AudioProcessor, Qwen2Tokenizer,
                          WhisperFeatureExtractor)

OUT = Path(__file__).resolve().parent / "tiny-qwen2-audio"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def make_tokenizer() -> Qwen2Tokenizer:
    # Byte-level BPE with no merges: every byte is a token, so any text encodes offline.
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def make_config(tokenizer: Qwen2Tokenizer) -> Qwen2AudioConfig:
    return Qwen2AudioConfig(
        audio_config=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=128, num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         vocab_size=len(tokenizer), max_position_embeddings=2048,
                         rms_norm_eps=1e-6),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )


def main() -> None:
    tokenizer = make_tokenizer()
    config = make_config(tokenizer)
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.save_pretrained(OUT)
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                                    tokenizer=tokenizer)
    processor.save_pretrained(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
