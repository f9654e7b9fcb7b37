"""Faults mid-run: an exception in forward or backward, Ctrl-C, out of memory. Each leaves no hook, the
model's state and modes as they were, no partial output file, and the other strategy's results intact."""
import json

import pytest
import torch
from helpers import hook_counts

import tracer.load.model
from tracer.cli.main import main

FAST = ["--repeats", "1", "--warmup", "0"]


class FailInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom inside backward")


def inject(monkeypatch, fault, where=lambda model: model.lm_head):
    """Load the built-in model as usual, then plant ``fault`` on its lm_head (only full_forward runs it),
    or on the module ``where`` picks."""
    seen = {}
    original = tracer.load.model.load_model

    def load(*args, **kwargs):
        loaded = original(*args, **kwargs)
        model = loaded.model
        seen["model"] = model
        seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["modes"] = [(m, m.training) for m in model.modules()]
        seen["flags"] = [p.requires_grad for p in model.parameters()]
        seen["handle"] = fault(where(model))
        return loaded

    monkeypatch.setattr(tracer.load.model, "load_model", load)
    return seen


def assert_left_as_found(seen):
    model = seen.pop("model")
    seen.pop("handle").remove()
    assert hook_counts(model) == 0
    state = model.state_dict()
    base = {k.replace("base_layer.", ""): v for k, v in state.items() if "lora_" not in k}
    assert all(torch.equal(seen["state"][k], base[k]) for k in seen["state"])
    assert all(m.training == training for m, training in seen["modes"])


def raising(error):
    def fault(module):
        def hook(mod, args):
            raise error
        return module.register_forward_pre_hook(hook)
    return fault


def failing_backward(module):
    return module.register_forward_hook(lambda mod, args, out: FailInBackward.apply(out))


@pytest.mark.parametrize("fault, reason", [
    (raising(RuntimeError("boom inside forward")), "RuntimeError: boom inside forward"),
    (failing_backward, "RuntimeError: boom inside backward"),
    (raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")), "OutOfMemoryError: CUDA out"),
], ids=["forward", "backward", "oom"])
def test_failing_strategy_exit_3_other_intact_outputs_written(monkeypatch, capsys, tmp_path, fault, reason):
    seen = inject(monkeypatch, fault)
    out = tmp_path / "r.json"
    assert main([*FAST, "--json", str(out), "--markdown", str(tmp_path / "r.md")]) == 3
    stdout = capsys.readouterr().out
    assert "[RUN full_forward] FAILED: " + reason in stdout
    data = json.loads(out.read_text())
    assert data["runs"]["audio_tower"]["status"] == "ok"
    assert data["runs"]["audio_tower"]["lora_summary"]["audio_encoder"] == {"ok": 12}
    failed = data["runs"]["full_forward"]
    assert failed["status"] == "failed" and failed["reason"].startswith(reason)
    if "forward" in reason:
        assert failed["failed_in"] == "base_model.model.lm_head"
    assert (tmp_path / "r.md").exists()
    assert_left_as_found(seen)


def test_keyboard_interrupt_mid_run_writes_nothing_and_unhooks(monkeypatch, capsys, tmp_path):
    seen = inject(monkeypatch, raising(KeyboardInterrupt()))
    assert main([*FAST, "--json", str(tmp_path / "r.json"), "--chrome-trace", str(tmp_path / "t.json")]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert list(tmp_path.iterdir()) == []
    assert_left_as_found(seen)


def test_unexpected_error_is_one_line_exit_1_with_debug_hint(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(tracer.load.model, "load_model", broken)
    assert main(["--static-only"]) == 1
    err = capsys.readouterr().err
    assert err == "error: unexpected ZeroDivisionError: division by zero (rerun with --debug for the traceback)\n"
    with pytest.raises(ZeroDivisionError):
        main(["--static-only", "--debug"])


def test_both_strategies_failing_say_why_instead_of_empty_tables(monkeypatch, capsys, tmp_path):
    seen = inject(monkeypatch, raising(RuntimeError("encoder broke")), where=lambda model: model.model.audio_tower)
    assert main([*FAST, "--json", str(tmp_path / "r.json")]) == 3
    stdout = capsys.readouterr().out
    assert "[RUN audio_tower] FAILED: RuntimeError: encoder broke" in stdout
    assert "[COMPARISON] needs both strategies to succeed: audio_tower failed, full_forward failed" in stdout
    assert ("[LORA DIAGNOSIS] nothing to diagnose: no strategy finished a traced backward "
            "(audio_tower failed, full_forward failed)") in stdout
    assert "[CONFIRMATION] nothing to confirm: no strategy ran to the end (audio_tower failed, full_forward failed)" \
        in stdout
    assert "claim  " not in stdout  # no bare table header
    assert_left_as_found(seen)
