"""Convert a CTranslate2 Whisper model (the faster-whisper format) to a Hugging Face checkpoint.

A CTranslate2 model directory holds ``model.bin`` (all weights in one binary file),
``config.json`` (suppress ids, alignment heads) and usually ``tokenizer.json``.
``convert`` turns it into a ``WhisperForConditionalGeneration`` directory that
``from_pretrained`` loads, with a matching ``WhisperProcessor`` and generation config.

The ``model.bin`` layout (little-endian; see CTranslate2's ``models/model.cc``):
uint32 format version, string spec name, uint32 spec revision, uint32 variable count,
then per variable: string name, uint8 rank, ``rank`` uint32 dims, uint8 dtype id,
uint32 byte count, raw data; then uint32 alias count and (alias, target) string pairs.
A string is a uint16 byte length followed by the bytes, which end with a NUL.
"""

import json
import os
import shutil
import struct
import tempfile

import numpy as np
import torch

# CTranslate2's DataType enum.  bfloat16 has no numpy dtype: it is read as uint16
# and widened to float32 (exact) in read_ct2_model.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BFLOAT16 = 5
# Versions 4..6 share this byte layout (dtype ids, aliases); older ones store item
# sizes instead of dtype ids and newer ones are unknown.
_FORMAT_VERSIONS = (4, 5, 6)
_SPEC = "WhisperSpec"
_REVISION = 3
# CTranslate2's Activation enum -> transformers ACT2FN name.
_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 4: "quick_gelu"}


class _Reader:
    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, code):
        try:
            (value,) = struct.unpack_from("<" + code, self.data, self.pos)
        except struct.error:
            raise ValueError(f"{self.path}: truncated at byte {self.pos}") from None
        self.pos += struct.calcsize("<" + code)
        return value

    def string(self):
        n = self.take("H")
        raw = bytes(self.data[self.pos:self.pos + n])
        if len(raw) != n:
            raise ValueError(f"{self.path}: truncated at byte {self.pos}")
        self.pos += n
        # CTranslate2 counts and writes a trailing NUL; tolerate a writer that does not.
        return raw.decode("utf-8").rstrip("\0")


def read_ct2_model(path):
    """Read a CTranslate2 ``model.bin``: ``(spec_name, revision, {name: numpy array})``.

    Arrays keep their stored dtype (float16 for faster-whisper models) and are
    read-only views of the file's bytes, except bfloat16, returned as float32.
    Aliases (e.g. the output projection tied to the embeddings) appear as extra
    names bound to the same array object.  Raises ``ValueError`` for anything but
    a revision-3 ``WhisperSpec`` in a known format version.
    """
    with open(path, "rb") as f:
        data = f.read()
    r = _Reader(memoryview(data), path)
    version = r.take("I")
    if version not in _FORMAT_VERSIONS:
        raise ValueError(f"{path}: unsupported CTranslate2 format version {version} "
                         f"(supported: {', '.join(map(str, _FORMAT_VERSIONS))})")
    spec = r.string()
    revision = r.take("I")
    if spec != _SPEC:
        raise ValueError(f"{path}: spec is {spec!r}, expected {_SPEC!r} (not a CTranslate2 Whisper model)")
    if revision != _REVISION:
        raise ValueError(f"{path}: {spec} revision {revision} is not supported (expected {_REVISION})")

    variables = {}
    for _ in range(r.take("I")):
        name = r.string()
        rank = r.take("B")
        shape = tuple(r.take("I") for _ in range(rank))
        dtype_id = r.take("B")
        nbytes = r.take("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_DTYPES[dtype_id])
        if nbytes != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or r.pos + nbytes > len(data):
            raise ValueError(f"{path}: variable {name!r} has {nbytes} bytes, which does not fit shape {shape}")
        array = np.frombuffer(data, dtype, nbytes // dtype.itemsize, r.pos).reshape(shape)
        if dtype_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
        r.pos += nbytes

    # Format >= 3 always writes the alias table (possibly empty); tolerate its absence at EOF.
    if r.pos < len(data):
        for _ in range(r.take("I")):
            alias, target = r.string(), r.string()
            if target not in variables:
                raise ValueError(f"{path}: alias {alias!r} points to missing variable {target!r}")
            variables[alias] = variables[target]
    if r.pos != len(data):
        raise ValueError(f"{path}: {len(data) - r.pos} unexpected trailing bytes")
    return spec, revision, variables


def _hf_state_dict(v):
    """Map CTranslate2 variable names to WhisperForConditionalGeneration ones, as float32.

    float32 because the checkpoint is for CPU tracing: PyTorch's CPU kernels are
    fastest and most complete in float32, float16 -> float32 is exact, and tiny.en
    is only 150 MB even so.
    """
    out = {}

    def put(name, array):
        out[name] = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy

    def linear(hf, ct2, bias=True):
        put(f"{hf}.weight", v[f"{ct2}/weight"])
        if bias:
            put(f"{hf}.bias", v[f"{ct2}/bias"])

    def norm(hf, ct2):
        put(f"{hf}.weight", v[f"{ct2}/gamma"])
        put(f"{hf}.bias", v[f"{ct2}/beta"])

    def split(hf, ct2, parts):
        # CTranslate2 fuses projections along the output dim; k has no bias in
        # Whisper (CTranslate2 stores zeros there), so its bias is dropped.
        weights = np.split(v[f"{ct2}/weight"], len(parts))
        biases = np.split(v[f"{ct2}/bias"], len(parts))
        for part, w, b in zip(parts, weights, biases):
            put(f"{hf}.{part}_proj.weight", w)
            if part != "k":
                put(f"{hf}.{part}_proj.bias", b)

    for side in ("encoder", "decoder"):
        pre = f"model.{side}"
        put(f"{pre}.embed_positions.weight", v[f"{side}/position_encodings/encodings"])
        norm(f"{pre}.layer_norm", f"{side}/layer_norm")
        for i in range(_num_layers(v, side)):
            hf, ct2 = f"{pre}.layers.{i}", f"{side}/layer_{i}"
            split(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", "qkv")
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            if side == "decoder":  # cross-attention: linear_0 = q, linear_1 = k|v, linear_2 = out
                split(f"{hf}.encoder_attn", f"{ct2}/attention/linear_0", "q")
                split(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", "kv")
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.decoder.embed_tokens.weight", v["decoder/embeddings/weight"])
    # Tied in every Whisper (an alias in model.bin); keep whatever is stored.
    put("proj_out.weight", v.get("decoder/projection/weight", v["decoder/embeddings/weight"]))
    return out


def _num_layers(v, side):
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def _whisper_config(v, token_ids, ct2_config):
    from transformers import WhisperConfig

    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    activation = int(v.get("decoder/activation", 3))  # the encoder's is implied (always GELU)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown CTranslate2 activation id {activation}")
    projection = v.get("decoder/projection/weight")
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=_num_layers(v, "encoder"),
        decoder_layers=_num_layers(v, "decoder"),
        # Head counts are not recoverable from shapes; CTranslate2 stores them as scalars.
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        activation_function=_ACTIVATIONS[activation],
        decoder_start_token_id=token_ids["<|startoftranscript|>"],
        bos_token_id=token_ids["<|startoftranscript|>"],
        eos_token_id=token_ids["<|endoftext|>"],
        pad_token_id=token_ids["<|endoftext|>"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        tie_word_embeddings=projection is None or projection is v["decoder/embeddings/weight"],
        dtype="float32",
    )


def _generation_config(config, token_ids, ct2_config):
    from transformers import GenerationConfig

    # As in transformers' own Whisper converter: multilingual vocabularies have 51865+ tokens.
    # English-only models get no lang_to_id/task_to_id, so generate() starts with
    # <|startoftranscript|><|notimestamps|> and never forces language or task tokens.
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        no_timestamps_token_id=token_ids["<|notimestamps|>"],
        prev_sot_token_id=token_ids["<|startofprev|>"],
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if "alignment_heads" in ct2_config:
        gen.alignment_heads = [list(map(int, pair)) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        # Language tokens sit between <|startoftranscript|> and <|translate|>.
        first, last = token_ids["<|startoftranscript|>"] + 1, token_ids["<|translate|>"]
        gen.lang_to_id = {t: i for t, i in token_ids.items() if first <= i < last}
        gen.task_to_id = {"transcribe": token_ids["<|transcribe|>"], "translate": token_ids["<|translate|>"]}
    return gen


def _tokenizer(model_dir, vocab_size):
    """WhisperTokenizer from the model's tokenizer.json, plus the timestamp tokens.

    tokenizer.json stops after <|notimestamps|>; the timestamp tokens <|0.00|>..<|30.00|>
    that fill the rest of the vocabulary are only in vocabulary.txt, so they are
    added (as non-special tokens, like openai/whisper-*) to make every id decodable.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tokenizer_file = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise ValueError(f"{model_dir}: no tokenizer.json (needed to build the HF tokenizer)")
    with open(tokenizer_file, encoding="utf-8") as f:
        special = [t["content"] for t in sorted(json.load(f)["added_tokens"], key=lambda t: t["id"]) if t["special"]]
    # Pad token, max length and the extra special tokens (<|endoftext|> .. <|notimestamps|>,
    # in id order) as in openai/whisper-*'s tokenizer_config.json: HF's Whisper decoding
    # finds the first timestamp id as the last special id + 1.
    tok = WhisperTokenizer(tokenizer_file=tokenizer_file, pad_token="<|endoftext|>", model_max_length=1024,
                           extra_special_tokens=special)

    vocab_file = os.path.join(model_dir, "vocabulary.txt")
    if os.path.isfile(vocab_file):
        with open(vocab_file, encoding="utf-8") as f:
            words = f.read().split("\n")[:vocab_size]
        # Sanity: tokenizer.json and the model's own vocabulary must agree on every id.
        if tok.convert_ids_to_tokens(list(range(len(tok)))) != words[:len(tok)]:
            raise ValueError(f"{model_dir}: tokenizer.json and vocabulary.txt disagree on token ids")
        extra = words[len(tok):]
    else:
        extra = ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(tok))]
    tok.add_tokens([AddedToken(w, lstrip=False, rstrip=False, normalized=False, special=False) for w in extra])
    if len(tok) != vocab_size:
        raise ValueError(f"{model_dir}: tokenizer has {len(tok)} tokens, the model {vocab_size}")
    return tok


def convert(model_dir, out_dir):
    """Convert the CTranslate2 Whisper directory ``model_dir`` into an HF checkpoint at ``out_dir``.

    Writes float32 safetensors weights, config.json, generation_config.json and the
    WhisperProcessor files.  Everything is built in a temporary sibling directory and
    moved into place with ``os.replace``, so a failure leaves no partial output.
    ``out_dir`` must not exist yet.  Returns its absolute path.
    """
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise FileExistsError(f"{out_dir} already exists")
    _, _, v = read_ct2_model(os.path.join(model_dir, "model.bin"))
    if any(name.endswith("_scale") for name in v):
        raise ValueError(f"{model_dir}: quantized (int8) weights are not supported; convert an unquantized model")
    config_file = os.path.join(model_dir, "config.json")
    ct2_config = {}
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            ct2_config = json.load(f)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        vocab_size = int(v["decoder/embeddings/weight"].shape[0])
        tokenizer = _tokenizer(model_dir, vocab_size)
        token_ids = tokenizer.get_vocab()
        config = _whisper_config(v, token_ids, ct2_config)

        # Meta-device init skips the random initialisation; assign=True adopts our tensors
        # and strict=True fails loudly on any name or shape the mapping got wrong.
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        model.load_state_dict(_hf_state_dict(v), strict=True, assign=True)
        if config.tie_word_embeddings:
            model.tie_weights()
        model.generation_config = _generation_config(config, token_ids, ct2_config)

        target = os.path.join(work, "out")
        model.save_pretrained(target)
        feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(target)

        os.replace(target, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
