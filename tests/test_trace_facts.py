"""The report's facts stay whole while its timed traced pass carries timing only (issue 25): per-module
output-gradient norms and saved bytes, the LoRA statuses and norms, and a bypassed layer's base weight all
equal what one traced pass carrying every fact finds. Output-gradient norms are opt-in in the library."""
import models
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import tiny_inputs
from peft import LoraConfig, get_peft_model

from tracer.api.tracer import Tracer
from tracer.static.discovery import static_report
from tracer.run.strategies import RunOptions, make_step, run_strategy

CPU = torch.device("cpu")
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def lora_tiny():
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=QKVO))
    with torch.no_grad():  # the LM's lora_B off zero: "ok" layers beside the encoder's "zero_init" ones
        for name, p in model.named_parameters():
            if "lora_B" in name and ".language_model." in name:
                p.normal_(0, 0.1)
    return model, inputs, static_report(model)


def full_facts(model, step, report, **kwargs) -> dict:
    """One traced pass carrying every fact, as the strategies' traced pass did before issue 25."""
    model.zero_grad(set_to_none=True)
    with Tracer(model, grad_norms=True, saved_tensors=True, memory=False, component_of=report.component_of,
                **kwargs) as tr:
        step().backward()
    run = tr.result()
    model.zero_grad(set_to_none=True)
    return run


def lora_facts(records) -> dict:
    return {(r["path"], r["adapter"]): r for r in records}


@pytest.mark.parametrize("steps", [0, 1])
@pytest.mark.parametrize("name", ["audio_tower", "full_forward"])
def test_a_strategy_run_has_every_fact_of_a_full_traced_pass(lora_tiny, name, steps):
    model, inputs, report = lora_tiny
    options = RunOptions(repeats=1, warmup=0, steps=steps)
    reference = full_facts(model, make_step(name, model, report, inputs, options, CPU), report)
    run = run_strategy(name, model, report, inputs, options, CPU)
    expected = {m["path"]: m for m in reference["modules"]}
    assert len(run.modules) == len(expected)
    norms = 0
    for m in run.modules:
        ref = expected[m.path]
        assert m.executed == ref["executed"] and m.saved_bytes == ref["saved_bytes"], m.path
        if ref["grad_output_norm"] is None:
            assert m.grad_output_norm is None, m.path
        else:
            norms += 1
            assert m.grad_output_norm == pytest.approx(ref["grad_output_norm"], rel=1e-5, abs=1e-12), m.path
    assert norms > 20 and sum(m.saved_bytes for m in run.modules) > 0
    for stage, record in run.stages.items():  # stage saved bytes: the modules' own, summed
        assert record.saved_bytes == sum(m.saved_bytes for m in run.modules
                                         if m.executed and report.component_of.get(m.path, "other") == stage)
    got, want = lora_facts(r.to_dict() for r in run.lora), lora_facts(reference["lora"])
    assert got.keys() == want.keys() and len(got) > 0
    for key, r in got.items():
        ref = want[key]
        assert (r["executed"], r["grad_enabled"], r["grad_arrived"]) == \
            (ref["executed"], ref["grad_enabled"], ref["grad_arrived"]), key
        for side in ("grad_norm_A", "grad_norm_B"):  # NB: pytest >= 9.2 refuses approx(None)
            assert r[side] == (None if ref[side] is None else pytest.approx(ref[side], rel=1e-5, abs=1e-12)), \
                (key, side)
        if steps == 0:  # with a step the optimizer's facts join the status
            assert (r["status"], r["cause"]) == (ref["status"], ref["cause"]), key
    statuses = {r["status"] for r in got.values()}
    assert statuses >= ({"ok"} if steps else {"ok", "zero_init"}) or name == "audio_tower"


class FusedLossLM(nn.Module):
    """What Liger / cut-cross-entropy do, as a model's own forward: the LoRA-wrapped head never called, its
    base weight read directly."""

    def __init__(self):
        super().__init__()
        self.peft = get_peft_model(models.text_only_lm(tied=False),
                                   LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))

    def forward(self, input_ids, labels):
        from transformers.modeling_outputs import CausalLMOutput
        base = self.peft.base_model.model
        hidden = base.model(input_ids=input_ids).last_hidden_state
        logits = F.linear(hidden, base.lm_head.get_base_layer().weight)
        return CausalLMOutput(loss=F.cross_entropy(logits[0, :-1], labels[0, 1:]))


def test_a_strategy_run_still_names_a_bypassed_layer():
    """The base weight autograd saves is seen by the pass that follows saved tensors (trl#4612)."""
    from types import SimpleNamespace
    model = FusedLossLM()
    ids = torch.randint(0, 100, (1, 8))
    report = static_report(model)
    run = run_strategy("full_forward", model, report, SimpleNamespace(full={"input_ids": ids, "labels": ids}),
                       RunOptions(repeats=1, warmup=0), CPU)
    lora = {r.path.rpartition("base_model.model.")[2]: r for r in run.lora}
    assert lora["lm_head"].status == "bypassed" and "fused" in lora["lm_head"].cause
    assert lora["model.layers.0.self_attn.q_proj"].status == "zero_init"


def test_statuses_do_not_depend_on_output_gradient_norms():
    """grad_arrived (off_loss_path vs the rest) is a fact of its own, not read from a norm."""
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=QKVO))
    inner = model.base_model.model.model

    def detached_step():  # the encoder's output detached before the LM: its layers are off the loss path
        audio = inner.audio_tower(**inputs.tower).last_hidden_state.detach()
        hidden = inner.language_model(inputs_embeds=inner.multi_modal_projector(audio)).last_hidden_state
        return model.base_model.model.lm_head(hidden).float().square().mean()

    runs = []
    for norms in (False, True):
        model.zero_grad(set_to_none=True)
        with Tracer(model, grad_norms=norms) as tr:
            detached_step().backward()
        runs.append(tr.result())
    plain, normed = (lora_facts(run["lora"]) for run in runs)
    assert plain == normed
    assert {r["grad_arrived"] for r in plain.values()} == {True, False}
    assert all(m["grad_output_norm"] is None for m in runs[0]["modules"])
    assert any(m["grad_output_norm"] for m in runs[1]["modules"])


def test_the_default_trace_leaves_norms_out_and_opt_in_measures_them():
    model = models.Toy()
    x = torch.randn(3, 8, requires_grad=True)
    with Tracer(model) as tr:
        model(x).sum().backward()
    assert all(m["grad_output_norm"] is None for m in tr.result()["modules"])
    assert any(m["backward_ms"] is not None for m in tr.result()["modules"])


def test_a_callers_saved_tensor_hooks_still_run_inside_the_tracer():
    """Saved-tensor hooks nest with only the innermost applied: the Tracer's passes each tensor on to the
    pair it shadows, so a caller's offloading (save_on_cpu) or counting still happens, and the gradients
    are the same."""
    lin = nn.Sequential(nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 4))
    x = torch.randn(5, 16, requires_grad=True)
    packed, unpacked = [], []

    def pack(t):
        packed.append(t.shape)
        return ("mine", t)

    def unpack(p):
        assert p[0] == "mine"
        unpacked.append(p[1].shape)
        return p[1]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        lin(x).sum().backward()
    plain = (list(packed), list(unpacked), x.grad.clone())
    packed.clear(), unpacked.clear()
    x.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), Tracer(lin) as tr:
        lin(x).sum().backward()
    assert (packed, unpacked) == plain[:2] and torch.equal(x.grad, plain[2])
    assert {m["path"]: m["saved_bytes"] for m in tr.result()["modules"]}["0"] == x.numel() * 4
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None  # nothing of ours left


def test_backward_windows_still_cover_every_parameters_gradient(lora_tiny):
    """Parameters are hooked only where a call took no input that needs grad: elsewhere the input gradient
    closes the window, and autograd accumulates the parameters' gradients before it (they are checked here
    by hooks of the test's own, on the Tracer's clock)."""
    import time

    from tracer.rollup.calls import backward_windows, call_records
    model, inputs, report = lora_tiny
    model.zero_grad(set_to_none=True)
    owner = {id(p): path for path, m in model.named_modules() for p in m.parameters(recurse=False)
             if p.requires_grad}
    arrived, handles = {}, []
    tr = Tracer(model, component_of=report.component_of)
    for p in model.parameters():
        if id(p) in owner:
            handles.append(p.register_post_accumulate_grad_hook(
                lambda p: arrived.__setitem__(owner[id(p)], time.perf_counter_ns() - tr._origin)))
    try:
        with tr:
            model(**inputs.full).loss.backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    collected = tr.collected()
    _, bw_end = backward_windows(collected, call_records(collected))
    end = dict(zip(collected.paths, bw_end))
    assert len(arrived) > 20
    for path, t in arrived.items():
        assert end[path] is not None and end[path] >= t, path


def test_the_callback_passes_the_opt_in_on():
    from types import SimpleNamespace

    from tracer.api.callback import TracerCallback
    model = models.Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, expected in (({}, False), ({"grad_norms": True}, True)):
        callback = TracerCallback(steps=(1,), **kwargs)
        callback.on_step_begin(None, SimpleNamespace(global_step=0), None, model=model, optimizer=optimizer)
        try:
            assert callback._tracer.grad_norms is expected
        finally:
            callback.close()
