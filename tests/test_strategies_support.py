"""Shared test helper: the built-in model with the shipped clip's inputs (not a test module)."""
import os

import models

from tracer.audio import load_clip
from tracer.families import prepare_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_inputs():
    loaded = models.builtin_loaded()
    encoder = dict(loaded.model.named_modules())["model.audio_tower"]
    clip = load_clip(os.path.join(ROOT, "samples", "sample.wav"), 16000)
    return loaded, prepare_inputs(loaded.processor, loaded.model, encoder, clip)
