"""Shared test helper: the built-in model with the shipped clip's inputs (not a test module)."""
import os

import models

from tracer.audio import load_clip
from tracer.inputs import prepare_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def builtin_paths(model) -> tuple:
    """(audio encoder, the LM's layer list) of the built-in model, as the installed transformers lays it out:
    model.audio_tower and model.language_model.layers (5.24); audio_tower and language_model.model.layers
    (5.6, whose language_model is a Qwen2ForCausalLM at the top level)."""
    from tracer.discovery import static_report
    report = static_report(model)
    return report.audio_encoder.path, report.language_model.layers_path


def tiny_inputs():
    loaded = models.builtin_loaded()
    encoder = dict(loaded.model.named_modules())[builtin_paths(loaded.model)[0]]
    clip = load_clip(os.path.join(ROOT, "samples", "sample.wav"), 16000)
    return loaded, prepare_inputs(loaded.processor, loaded.model, encoder, clip)
