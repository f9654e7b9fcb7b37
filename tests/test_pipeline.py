"""trace_clip(): the library call behind bin/trace gives the same record as --json, takes model objects,
and tells an observer about each part in order."""
import json

import models
import pytest
import torch

from tracer import TraceOptions, TracerError, trace_clip
from tracer.cli.main import main

FAST = TraceOptions(repeats=1, warmup=0)
VARYING = ("_ms", "ratio", "traced_over", "timing_noisy", "peak_memory", "peak_bytes", "memory_delta")


def same_apart_from_times(a, b, where="") -> None:
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if isinstance(key, str) and any(v in key for v in VARYING):
                continue
            same_apart_from_times(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_apart_from_times(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), where
    else:
        assert a == b, where


def test_trace_clip_is_what_the_cli_writes(capsys, root, tmp_path, monkeypatch):
    monkeypatch.chdir(root)
    out = tmp_path / "cli.json"
    assert main(["samples/sample.wav", "--repeats", "1", "--warmup", "0", "--json", str(out), "--quiet"]) == 0
    capsys.readouterr()
    cli = json.loads(out.read_text())
    report = trace_clip("samples/sample.wav", options=FAST)
    # through JSON, as the CLI writes it (tuples become lists)
    same_apart_from_times(cli, json.loads(json.dumps(report.to_dict(), default=str)))
    assert cli["runs"]["full_forward"]["lora_summary"] == {"audio_encoder": {"ok": 12},
                                                          "language_model": {"ok": 6}}
    assert not report.failed and report.notes[0].startswith("built-in tiny Qwen2-Audio with RANDOM weights")


def test_trace_clip_takes_a_model_object_and_reports_in_order(root):
    events = []
    model = models.builtin_model()
    report = trace_clip(f"{root}/samples/sample.wav", model, options=TraceOptions(repeats=1, warmup=0,
                                                                                  strategy="audio_tower"),
                        observer=lambda event, rep, detail: events.append((event, detail)))
    assert [e for e, _ in events] == ["static", "note", "clip", "lora", "run", "done"]
    assert events[1][1].startswith("this model has no processor")  # an object comes without one
    assert report.source == "object" and report.model_name == "Qwen2AudioForConditionalGeneration"
    assert list(report.runs) == ["audio_tower"] and report.runs["audio_tower"].status == "ok"
    assert report.model.base_model.model is model  # the PEFT wrapper around the object given
    assert report.to_dict()["lora_setup"]["layers"] == 12 + 6


def test_trace_clip_static_only_runs_nothing():
    report = trace_clip(options=TraceOptions(static_only=True))
    payload = report.to_dict()
    assert "runs" not in payload and "clip" not in payload
    assert payload["static"]["strategy"]["chosen"] == "audio_tower"


def test_trace_clip_bad_options_are_one_line_errors():
    from tracer import TracerError
    with pytest.raises(TracerError, match=r"--repeats 0: must be at least 1"):
        trace_clip(options=TraceOptions(repeats=0))
    with pytest.raises(TracerError, match="exclude each other"):
        trace_clip(None, torch.nn.Linear(2, 2), config="x.json")


def test_trace_clip_leaves_process_warning_filters_alone():
    import warnings
    before = list(warnings.filters)
    trace_clip(options=TraceOptions(static_only=True))
    assert warnings.filters == before


def test_static_only_survives_a_clip_the_model_cannot_take(root):
    """A model whose processor cannot handle the clip: with --static-only the structure is still reported and
    written, and the clip section says why there are no inputs."""
    loaded = models.builtin_loaded()
    model, processor = loaded.model, loaded.processor
    # a chat template with two places for one clip: the processor refuses it
    processor.chat_template = "{% for m in messages %}<|AUDIO|><|AUDIO|>{{ m['content'][1]['text'] }}{% endfor %}"
    report = trace_clip(f"{root}/samples/sample.wav", model, processor=processor, options=TraceOptions(static_only=True))
    assert report.clip is None
    assert report.clip_error.startswith("ValueError: The total number of <|AUDIO|> tokens in the prompts")
    payload = report.to_dict()
    assert payload["static"]["audio_encoder"]["path"] == "model.audio_tower" and payload["clip_error"] == report.clip_error
    with pytest.raises(ValueError):  # without --static-only the same failure stops the run
        trace_clip(f"{root}/samples/sample.wav", model, processor=processor, options=FAST)


def _lora_norms(report, strategy="audio_tower"):
    return [(r.path, r.grad_norm_A, r.grad_norm_B) for r in report.runs[strategy].lora]


def test_a_checkpoint_traces_to_the_same_lora_norms_and_leaves_the_callers_rng_alone(root, tmp_path):
    """The LoRA init is seeded (not drawn from wherever the caller's stream happens to be), from forked
    generators: two runs agree exactly, and the caller's random stream is where it was."""
    loaded = models.builtin_loaded()
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    options = TraceOptions(repeats=1, warmup=0, strategy="audio_tower")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = trace_clip(f"{root}/samples/sample.wav", str(tmp_path), options=options)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(7)  # the caller draws: the next trace must not care
    second = trace_clip(f"{root}/samples/sample.wav", str(tmp_path), options=options)
    assert first.source == "dir" and _lora_norms(first) == _lora_norms(second)
    assert any(b for _, _, b in _lora_norms(first))  # real gradients, not all None


def test_building_the_builtin_model_and_attaching_lora_leave_the_callers_rng_alone():
    from tracer.static.discovery import static_report
    from tracer.lora.attach import attach_lora
    state = torch.random.get_rng_state()
    model = models.builtin_model()
    wrapped, _ = attach_lora(model, static_report(model))
    assert torch.equal(torch.random.get_rng_state(), state)
    a = next(p for n, p in wrapped.named_parameters() if n.endswith("lora_A.default.weight"))
    again = attach_lora(models.builtin_model(), static_report(model))[0]
    torch.testing.assert_close(a, next(p for n, p in again.named_parameters() if n.endswith("lora_A.default.weight")),
                               rtol=0, atol=0)


def test_a_file_that_is_no_audio_fails_before_the_model_loads(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio\n" * 40)
    events = []
    with pytest.raises(TracerError, match="notes.wav: not a readable audio file"):
        trace_clip(str(tmp_path / "notes.wav"), observer=lambda event, *_: events.append(event))
    assert events == []  # not even the static report: the model was never loaded


def test_an_observer_subclass_hears_each_event_in_order(root):
    from tracer import Observer

    class Heard(Observer):
        def __init__(self):
            self.events = []

        def on_note(self, report, text):
            self.events.append(("note", text[:8]))

        def on_static(self, report):
            self.events.append(("static", report.static.model_class))

        def on_clip(self, report):
            self.events.append(("clip", report.clip is not None))

        def on_lora(self, report):
            self.events.append(("lora", report.lora_setup.layers))

        def on_run(self, report, strategy):
            self.events.append(("run", strategy, report.runs[strategy].status))

        def on_done(self, report):
            self.events.append(("done", list(report.runs)))

    heard = Heard()
    trace_clip(f"{root}/samples/sample.wav", options=TraceOptions(repeats=1, warmup=0, steps=0), observer=heard)
    assert heard.events == [("note", "built-in"), ("static", "Qwen2AudioForConditionalGeneration"), ("clip", True),
                            ("lora", 18), ("run", "audio_tower", "ok"), ("run", "full_forward", "ok"),
                            ("done", ["audio_tower", "full_forward"])]


def test_observers_of_every_form():
    from tracer.run.observer import Observer, _Calls, as_observer
    calls = []
    adapted = as_observer(lambda *a: calls.append(a))
    assert isinstance(adapted, _Calls)
    adapted.on_progress("building")
    adapted.on_run("R", "audio_tower")
    assert calls == [("progress", None, "building"), ("run", "R", "audio_tower")]
    # the seven methods without the base class
    quiet = type("Quiet", (), {m: (lambda self, *a: None) for m in dir(Observer) if m.startswith("on_")})()
    assert as_observer(quiet) is quiet and type(as_observer(None)) is Observer
    with pytest.raises(TypeError, match="an Observer or a callable"):
        as_observer(42)
