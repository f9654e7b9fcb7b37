"""The hook engine on real models with real backward passes: facts right, run unchanged, nothing left."""
import gc
import weakref

import models
import pytest
import torch
import torch.nn as nn

from helpers import HOOK_DICTS, hook_counts

from tracer.api.tracer import Tracer



def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            [m.training for m in model.modules()])


def assert_unchanged(model, before):
    state, flags, modes = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert flags == [(n, p.requires_grad) for n, p in model.named_parameters()]
    assert modes == [m.training for m in model.modules()]
    assert hook_counts(model) == 0


@pytest.fixture(scope="module")
def tiny_run():
    """One traced forward+backward of the full tiny Qwen2-Audio on the shipped clip."""
    from helpers import tiny_inputs
    loaded, inputs = tiny_inputs()
    model = loaded.model
    before = snapshot(model)
    with Tracer(model) as tr:
        model(**inputs.full).loss.backward()
    model.zero_grad(set_to_none=True)
    return model, inputs, tr, tr.result(), before


def by_path(run):
    return {m["path"]: m for m in run["modules"]}


def test_every_executed_module_has_shapes(tiny_run):
    model, inputs, _, run, _ = tiny_run
    mods = by_path(run)
    seq = inputs.full["input_ids"].shape[1]
    assert mods["model.audio_tower.conv1"]["inputs"] == ["1x128x3000 float32"]
    assert mods["model.audio_tower.conv2"]["outputs"] == ["1x64x1500 float32"]
    assert mods["model.audio_tower"]["outputs"] == ["1x750x64 float32"]
    assert mods["model.language_model.layers.1"]["outputs"] == [f"1x{seq}x64 float32"]
    assert mods["lm_head"]["outputs"] == [f"1x{seq}x262 float32"]
    for m in run["modules"]:
        if m["executed"]:
            assert m["calls"] >= 1 and m["outputs"], m["path"]
    assert len(run["modules"]) == len(list(model.named_modules()))


def test_never_called_lists_embed_positions_not_the_containers(tiny_run):
    _, _, _, run, _ = tiny_run
    assert run["never_called"] == ["model.audio_tower.embed_positions"]  # its weight is read directly
    containers = {m["path"] for m in run["modules"] if m["container"]}
    assert containers == {"model.audio_tower.layers", "model.language_model.layers"}
    assert not any(by_path(run)[p]["executed"] for p in containers)  # not called, yet not "never called"


def test_never_called_on_a_peft_model_leaves_out_peft_dicts_and_bypassed_wrappers():
    """On a real PEFT model with only the audio tower called: PEFT's per-layer dicts (lora_A, lora_B,
    lora_dropout, lora_embedding_A/B, lora_magnitude_vector) are containers, the wrappers above the tower
    were bypassed; what is left never ran: embed_positions, and the LM the tower does not reach."""
    from tracer.static.discovery import static_report
    from tracer.collect.hooks import _CONTAINERS
    from tracer.lora.attach import attach_lora
    model = models.builtin_model()
    peft_model, _ = attach_lora(model, static_report(model))
    tower = peft_model.base_model.model.model.audio_tower
    with Tracer(peft_model) as tr:
        tower(torch.randn(1, 128, 3000)).last_hidden_state.pow(2).mean().backward()
    never = tr.result()["never_called"]
    modules = dict(peft_model.named_modules())
    assert "base_model.model.model.audio_tower.embed_positions" in never
    assert not [p for p in never if isinstance(modules[p], _CONTAINERS)]
    assert not [p for p in never if p.rpartition(".")[2] in ("lora_A", "lora_B", "lora_dropout", "lora_embedding_A",
                                                             "lora_embedding_B", "lora_magnitude_vector")]
    assert not {"", "base_model", "base_model.model", "base_model.model.model"} & set(never)
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default" in never
    assert not [p for p in never if ".audio_tower." in p and not p.endswith("embed_positions")]


def test_children_nested_inside_parents(tiny_run):
    _, _, tr, run, _ = tiny_run
    calls = tr.calls()
    spans = {(c.path, c.call_index): (c.start_ns, c.end_ns) for c in calls}
    for c in calls:
        if c.path:
            parent = c.path.rpartition(".")[0]
            if (parent, 0) in spans and parent != "model.language_model":  # embed_tokens runs outside its parent
                ps, pe = spans[(parent, 0)]
                if parent.startswith("model.audio_tower") or ".layers." in c.path:
                    assert ps <= c.start_ns <= c.end_ns <= pe, c.path
        assert c.self_ns <= c.end_ns - c.start_ns
    mods = by_path(run)
    assert mods["model.audio_tower"]["forward_ms"] >= sum(
        mods[f"model.audio_tower.layers.{i}"]["forward_ms"] for i in range(2))
    assert run["total_backward_ms"] > 0 and mods["model.audio_tower.layers.0"]["backward_ms"] > 0


def test_model_unchanged_and_no_hooks_left(tiny_run):
    model, _, _, _, before = tiny_run
    assert_unchanged(model, before)


def test_gradients_bitwise_equal_with_and_without_tracer():
    from helpers import tiny_inputs
    loaded, inputs = tiny_inputs()
    model = loaded.model
    model(**inputs.full).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with Tracer(model):
        model(**inputs.full).loss.backward()
    traced = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == traced.keys() and len(plain) > 40
    assert all(torch.equal(plain[n], traced[n]) for n in plain)


def test_toy_inplace_called_twice_kwargs_and_modeloutput():
    model = models.Toy()
    x = torch.randn(3, 8)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with Tracer(model) as tr:
        model(x).sum().backward()
    run = by_path(tr.result())
    assert all(torch.equal(plain[n], p.grad) for n, p in model.named_parameters() if n in plain)
    assert len(plain) == 8  # everything but unused.0
    assert run["shared"]["calls"] == 2
    assert run["tail"]["inputs"] == ["3x8 float32"]  # a kwargs-only call
    assert run["tail"]["outputs"] == ["3x8 float32"]  # found inside the ModelOutput
    assert run["unused"]["executed"] is False and run["unused.0"]["executed"] is False
    assert run["first"]["backward_ms"] is not None  # still traced under the in-place ReLU


def test_grad_output_norm_matches_autograd():
    model = models.Toy()
    x = torch.randn(3, 8, requires_grad=True)
    kept = {}

    def keep(module, args, out):
        out.retain_grad()
        kept["y"] = out

    handle = model.second.register_forward_hook(keep)
    model(x).sum().backward()
    handle.remove()
    expected = kept["y"].grad.norm().item()
    with Tracer(model, grad_norms=True) as tr:  # opt-in: one reduction per output gradient
        model(x).sum().backward()
    assert by_path(tr.result())["second"]["grad_output_norm"] == pytest.approx(expected, rel=1e-6)


def test_saved_bytes_counts_activations_not_weights():
    lin = nn.Linear(16, 4)
    x = torch.randn(5, 16, requires_grad=True)
    with Tracer(lin) as tr:
        lin(x)
    assert by_path(tr.result())[""]["saved_bytes"] == x.numel() * 4


def test_exception_in_forward_leaves_no_hook_and_names_module():
    model = models.Toy()
    model.fail = True
    before = snapshot(model)
    with pytest.raises(ValueError, match="boom"):
        with Tracer(model) as tr:
            model(torch.randn(2, 8))
    assert_unchanged(model, before)
    assert tr.failed_in == ""  # the root module's own forward raised


def test_keyboard_interrupt_leaves_no_hook():
    model = models.Toy()
    before = snapshot(model)

    def interrupt(module, args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with Tracer(model):
            h = model.second.register_forward_pre_hook(interrupt)
            try:
                model(torch.randn(2, 8))
            finally:
                h.remove()
    assert_unchanged(model, before)


def test_no_activation_kept_after_exit():
    model = models.Toy()
    x = torch.randn(4, 8, requires_grad=True)
    with Tracer(model) as tr:
        out = model(x)
        ref = weakref.ref(out)
        out.sum().backward()
        del out
    gc.collect()
    assert ref() is None
    assert tr.result()["modules"]


def test_no_grad_run_has_no_backward():
    model = models.Toy()
    with torch.no_grad(), Tracer(model) as tr:
        model(torch.randn(2, 8))
    run = tr.result()
    assert all(m["grad_enabled"] is False for m in run["modules"] if m["executed"])
    assert all(m["backward_ms"] is None and m["grad_output_norm"] is None for m in run["modules"])
    assert run["total_backward_ms"] is None


def test_entering_twice_is_an_error():
    tr = Tracer(models.Toy())
    with tr:
        with pytest.raises(RuntimeError, match="already active"):
            tr.__enter__()


def test_gradient_checkpointing_recompute_tagged_not_counted():
    model = models.text_only_lm()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 100, (1, 12))
    with Tracer(model) as tr:
        model(input_ids=ids, labels=ids).loss.backward()
    run = by_path(tr.result())
    # transformers re-runs the layer's forward body in backward: its children fire again, tagged
    assert run["model.layers.0"]["calls"] == 1
    assert run["model.layers.0.mlp"]["calls"] == 1 and run["model.layers.0.mlp"]["recomputed_calls"] == 1


def test_accelerate_offloaded_submodule_traces(tmp_path):
    from accelerate import cpu_offload
    model = models.text_only_lm(tied=False)
    ids = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"))
    with torch.no_grad(), Tracer(model) as tr:
        logits = model(input_ids=ids).logits
    assert torch.allclose(logits, expected)
    run = by_path(tr.result())
    assert run["model.layers.1"]["outputs"][0] == "1x6x32 float32"
    assert run["model.layers.1.mlp.down_proj"]["calls"] == 1
    assert hook_counts(model) == sum(len(getattr(m, "_forward_hooks")) for m in model.modules())  # accelerate's own


def test_hook_module_imports_neither_diagnosis_nor_discovery(root):
    import subprocess
    import sys
    code = ("import sys, torch\nfrom tracer.api.tracer import Tracer\nm = torch.nn.Linear(2, 2)\n"
            "with Tracer(m) as tr:\n    m(torch.ones(1, 2)).sum().backward()\ntr.calls(); tr.modules()\n"
            "print(sorted(n for n in sys.modules if n in ('tracer.diagnose.lora_status', 'tracer.static.discovery')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_hook_path_gives_the_same_facts(tiny_run, monkeypatch):
    """Where a torch lacks the private hook dict, outputs are hooked through Tensor.register_hook: the same
    backward facts (which modules a gradient reached), and no hook left behind."""
    import tracer.collect.hooks as hooks
    model, inputs, _, fast, _ = tiny_run
    monkeypatch.setattr(hooks, "_HOOK_DICT", False)
    with Tracer(model, grad_norms=True) as tr:
        model(**inputs.full).loss.backward()
    model.zero_grad(set_to_none=True)
    public = tr.result()
    reached = lambda run: {m["path"] for m in run["modules"] if m["backward_ms"] is not None}  # noqa: E731
    assert reached(public) == reached(fast) and len(reached(public)) > 50
    assert hook_counts(model) == 0
