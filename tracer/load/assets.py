"""Where the shipped resources are: the built-in tiny model's directory, the sample clip, the 7B config.

A leaf (it imports nothing of the tracer), so the model loading, the named models and the CLI all take these paths from
here without importing each other. A wheel carries the files as package data in ``tracer/_samples/``
(setup.py's build_py copies them there from the checkout's top-level ``samples/``, their one source); a
checkout or an editable install has no ``_samples/`` and reads ``samples/`` beside the package.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _samples_dir() -> Path:
    shipped = files("tracer") / "_samples"
    if isinstance(shipped, Path) and shipped.is_dir():  # a real directory: from_pretrained needs one
        return shipped.resolve()
    return Path(__file__).resolve().parents[2] / "samples"


SAMPLES_DIR = _samples_dir()
BUILTIN_MODEL_DIR = SAMPLES_DIR / "tiny-qwen2-audio"
BUILTIN_CLIP = SAMPLES_DIR / "sample.wav"
QWEN2_AUDIO_7B_CONFIG = SAMPLES_DIR / "qwen2-audio-7b.json"  # --config's example: the real 7B, on meta
