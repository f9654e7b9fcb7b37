"""Both strategies on the tiny model and the shipped clip: what runs where, rollups, isolation of failures."""
import json

import models
import pytest
import torch
from helpers import hook_counts
from helpers import tiny_inputs

from tracer.cli.main import main
from tracer.static.discovery import static_report
from tracer.inputs.common import AudioAccounting, ModelInputs
from tracer.run.strategies import RunOptions, compare, run_strategies, tower_loss

CPU = torch.device("cpu")
FAST = RunOptions(repeats=1, warmup=0)


@pytest.fixture(scope="module")
def both():
    loaded, inputs = tiny_inputs()
    report = static_report(loaded.model)
    runs = run_strategies(loaded.model, report, inputs, FAST, CPU)
    return loaded.model, report, inputs, runs


def executed(run):
    return run.executed_paths()


def test_encoder_in_both_language_model_only_in_full_forward(both):
    _, _, _, runs = both
    tower, full = executed(runs["audio_tower"]), executed(runs["full_forward"])
    for i in range(2):
        assert f"model.audio_tower.layers.{i}.self_attn.q_proj" in tower & full
        assert f"model.language_model.layers.{i}.mlp.down_proj" in full - tower
    assert not any(p.startswith("model.language_model") for p in tower)
    assert "lm_head" in full - tower


def test_stage_params_add_up_to_executed_modules(both):
    model, _, _, runs = both
    own = {p: sum(x.numel() for x in m.parameters(recurse=False)) for p, m in model.named_modules()}
    for run in runs.values():
        assert sum(s.params for s in run.stages.values()) == sum(own[p] for p in executed(run))
        assert run.params_executed == sum(own[p] for p in executed(run))
    tower = runs["audio_tower"].stages
    # the tower runs everything but embed_positions, which is read through .weight (never called)
    assert tower["audio_encoder"].params == 199_936 - 1500 * 64
    assert tower["language_model"].params == 0
    assert runs["full_forward"].stages["head"].params == 262 * 64


def test_run_record_shape_and_comparison(both):
    _, report, inputs, runs = both
    for run in runs.values():
        assert run.status == "ok"
        assert set(run.to_dict()["latency_ms"]) == {"median", "min", "max", "runs"} and run.latency_ms.runs == 1
        assert run.peak_memory_bytes is not None
        # the overhead ratio is the traced pass (forward + backward) over the untraced medians, no other term
        assert run.traced_over_untraced == run.traced_ms / (run.latency_ms.median + run.backward_ms.median)
    comparison = compare(runs, report)
    assert comparison.only_in_full_forward == ("lm_head", "model.language_model", "model.multi_modal_projector")
    assert "model.language_model.layers.0-1 ×2" in comparison.only_in_full_forward_layers
    tower, full = runs["audio_tower"], runs["full_forward"]
    assert comparison.latency_ratio_full_over_tower == full.latency_ms.median / tower.latency_ms.median
    assert comparison.memory_ratio_full_over_tower == full.peak_memory_bytes / tower.peak_memory_bytes


def test_tower_loss_matches_its_definition(both):
    hidden = torch.randn(1, 750, 64)
    assert torch.equal(tower_loss(hidden, 105, "pooled_l2"), hidden[:, :105].mean(1).square().sum())
    assert torch.equal(tower_loss(hidden, 105, "pooled_mean"), hidden[:, :105].mean(1).mean())


def test_text_only_model_audio_tower_not_applicable():
    model = models.text_only_lm()
    report = static_report(model)
    ids = torch.randint(0, 100, (1, 10))
    inputs = ModelInputs(tower={}, full={"input_ids": ids, "labels": ids},
                         accounting=AudioAccounting(0, 0, None, None, 0.0, "none"), template="none",
                         prompt_tokens=0, target_tokens=10)
    runs = run_strategies(model, report, inputs, FAST, CPU)
    assert runs["audio_tower"].status == "not_applicable"
    assert "no audio encoder" in runs["audio_tower"].reason
    assert runs["full_forward"].status == "ok"


@pytest.mark.parametrize("error", [RuntimeError("model broke"), torch.OutOfMemoryError("CUDA out of memory")])
def test_failure_in_one_strategy_leaves_the_other_intact(error):
    loaded, inputs = tiny_inputs()
    model = loaded.model
    report = static_report(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def explode(module, args):
        raise error

    handle = model.lm_head.register_forward_pre_hook(explode)
    try:
        runs = run_strategies(model, report, inputs, FAST, CPU)
    finally:
        handle.remove()
    assert runs["audio_tower"].status == "ok" and runs["audio_tower"].modules_executed == 27
    failed = runs["full_forward"]
    assert failed.status == "failed" and type(error).__name__ in failed.reason
    assert hook_counts(model) == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_cli_full_run_json_has_runs_and_comparison(capsys, tmp_path):
    out = tmp_path / "run.json"
    code = main(["--repeats", "1", "--warmup", "0", "--no-lora", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "[RUN audio_tower]" in stdout and "[RUN full_forward]" in stdout and "[COMPARISON]" in stdout
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"audio_tower", "full_forward"}
    assert data["runs"]["full_forward"]["modules_executed"] == 62
    assert data["comparison"]["only_in_full_forward"] == ["lm_head", "model.language_model",
                                                          "model.multi_modal_projector"]
    assert data["clip"]["audio_tokens"] == 105


def test_cli_one_strategy_and_bad_repeats(capsys):
    assert main(["--strategy", "audio_tower", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "[RUN audio_tower]" in out and "[RUN full_forward]" not in out
    assert main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err == "error: --repeats 0: must be at least 1\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["--strategy", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --strategy: invalid choice: 'nope'") and err.count("\n") == 1


def test_memory_from_a_separate_pass_lands_on_calls_and_modules():
    """On CUDA per-call allocator bytes come from a pass of their own; merging them back must give each call
    its own numbers, and each module its first call's delta and its largest peak."""
    import torch.nn as nn

    from tracer.api.tracer import Tracer
    from tracer.run.strategies import _with_memory, _with_module_memory

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice()
    with Tracer(model, memory=False) as tr:
        model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    memory = {key: {"memory_delta_bytes": delta, "peak_bytes": peak, "saved_bytes": saved}
              for key, delta, peak, saved in ((("lin", 0, False), 100, 300, 32), (("lin", 1, False), 50, 700, 32),
                                              (("", 0, False), 150, 900, 0))}
    calls = _with_memory(tr.calls(), memory)
    assert [(c.path, c.memory_delta_bytes, c.peak_bytes, c.saved_bytes) for c in calls] == [
        ("", 150, 900, 0), ("lin", 100, 300, 32), ("lin", 50, 700, 32)]
    modules = tuple(tr.modules())
    assert all(m.memory_delta_bytes is None for m in modules)
    by = {m.path: m for m in _with_module_memory(modules, calls, {"lin": 2.5, "": None})}
    assert (by["lin"].memory_delta_bytes, by["lin"].peak_bytes, by["lin"].saved_bytes) == (100, 700, 64)
    assert (by[""].memory_delta_bytes, by[""].peak_bytes, by[""].saved_bytes) == (150, 900, 0)
    assert (by["lin"].grad_output_norm, by[""].grad_output_norm) == (2.5, None)
