"""Helpers the test modules share (not a test module): the built-in model with the shipped clip's inputs,
the hooks on a model."""
import os

import models

from tracer.load.audio import load_clip
from tracer.inputs.families import prepare_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def builtin_paths(model) -> tuple:
    """(audio encoder, the LM's layer list) of the built-in model, as the installed transformers lays it out:
    model.audio_tower and model.language_model.layers (5.24); audio_tower and language_model.model.layers
    (5.6, whose language_model is a Qwen2ForCausalLM at the top level)."""
    from tracer.static.discovery import static_report
    report = static_report(model)
    return report.audio_encoder.path, report.language_model.layers_path


def tiny_inputs():
    loaded = models.builtin_loaded()
    encoder = dict(loaded.model.named_modules())[builtin_paths(loaded.model)[0]]
    clip = load_clip(os.path.join(ROOT, "samples", "sample.wav"), 16000)
    return loaded, prepare_inputs(loaded.processor, loaded.model, encoder, clip)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def hook_counts(model):
    counts = sum(len(getattr(m, d)) for m in model.modules() for d in HOOK_DICTS)
    counts += sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters()
                  if getattr(p, "_post_accumulate_grad_hooks", None))
    return counts


FAST = ["--repeats", "1", "--warmup", "0", "--quiet"]  # one timed pass: the tests read facts, not times


def trace_json(args, tmp_path, capsys) -> dict:
    """bin/trace ARGS in this process with --json: exit 0 asserted, the record returned."""
    import json

    from tracer.cli.main import main
    out = tmp_path / "report.json"
    capsys.readouterr()  # the saves' progress bars
    code = main([*args, "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out.read_text())


def statuses(data) -> dict:
    return {name: run["status"] for name, run in data["runs"].items()}


def assert_both_ran_and_confirmed(data) -> None:
    """Both strategies ran, no claim of the static report is refuted, and full_forward's LM sequence length
    (audio tokens + prompt) is what the LM consumed."""
    assert statuses(data) == {"audio_tower": "ok", "full_forward": "ok"}
    assert [v for v in data["confirmation"] if v["verdict"] == "refuted"] == []
    sequence = [v for v in data["confirmation"] if v["claim"].startswith("LM sequence")
                and v["strategy"] == "full_forward"]
    assert [v["verdict"] for v in sequence] == ["confirmed"]


def set_processor_class(directory, value) -> None:
    """The tokenizer config's processor_class set to ``value`` (None: removed)."""
    import json
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("processor_class", None)
    if value is not None:
        config["processor_class"] = value
    path.write_text(json.dumps(config))
