"""A real broken setup for every LoRA status, built with peft's own mechanisms, and grad norms vs autograd."""
import re

import models
import pytest
import torch
from peft import LoraConfig, get_peft_model
from helpers import tiny_inputs

from tracer.diagnose.lora_status import dead_groups_of
from tracer.static.discovery import static_report
from tracer.api.tracer import Tracer
from tracer.lora.attach import attach_lora, requested_gaps, suggest_targets
from tracer.run.strategies import RunOptions, run_strategies

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ENC = "model.audio_tower.layers.0.self_attn.q_proj"
LM = "model.language_model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def base():
    return tiny_inputs()


def peft_tiny(targets=QKVO):
    loaded, inputs = tiny_inputs()
    return get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets)), inputs


def trace(model, step):
    with Tracer(model) as tr:
        step()
    run = tr.result()
    return {r["path"].removeprefix("base_model.model."): r for r in run["lora"]}, run


def plain_then_traced(model, inputs):
    """Gradient norms of a plain untraced backward, then the traced diagnosis of the same step."""
    model(**inputs.full).loss.backward()
    plain = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    lora, _ = trace(model, lambda: model(**inputs.full).loss.backward())
    return plain, lora


def audio_then_lm(model, inputs, detach=False, no_grad=False):
    """A hand-written step: encoder, projector, LM, head (the two broken variants users write)."""
    inner = model.base_model.model.model
    with torch.set_grad_enabled(not no_grad):
        audio = inner.audio_tower(**inputs.tower).last_hidden_state
    if detach:
        audio = audio.detach()
    hidden = inner.language_model(inputs_embeds=inner.multi_modal_projector(audio)).last_hidden_state
    model.base_model.model.lm_head(hidden).float().square().mean().backward()


def test_fresh_adapter_audio_tower_then_ok_after_one_step():
    model, inputs = peft_tiny()
    report = static_report(model)
    runs = run_strategies(model, report, inputs, RunOptions(1, 0), torch.device("cpu"), which="audio_tower")
    lora = {r.path.removeprefix("base_model.model."): r for r in runs["audio_tower"].lora}
    assert {r.status for p, r in lora.items() if "language_model" in p} == {"not_executed"}
    tower = [r for p, r in lora.items() if "audio_tower" in p]
    assert len(tower) == 6 and {r.status for r in tower} == {"zero_init"}
    assert all(r.grad_norm_A == 0.0 and r.grad_norm_B > 0 and r.lora_B_zero for r in tower)
    assert runs["audio_tower"].lora_summary == {"audio_encoder": {"zero_init": 6},
                                                   "language_model": {"not_executed": 8}}
    groups = dead_groups_of(runs["audio_tower"])
    assert groups[0]["pattern"] == "base_model.model.model.language_model.layers.0-1.self_attn.{q,k,v,o}_proj"
    assert groups[0]["count"] == 8
    # one optimizer step moves lora_B off zero: now every tower layer is ok
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    encoder = model.base_model.model.model.audio_tower
    encoder(**inputs.tower).last_hidden_state.square().mean().backward()
    optimizer.step()
    model.zero_grad()
    lora, _ = trace(model, lambda: encoder(**inputs.tower).last_hidden_state.square().mean().backward())
    assert {r["status"] for p, r in lora.items() if "audio_tower" in p} == {"ok"}


def test_o_proj_requested_matches_nothing_in_encoder_out_proj_suggested():
    loaded, _ = tiny_inputs()
    report = static_report(loaded.model)
    _, setup = attach_lora(loaded.model, report, targets="q_proj,k_proj,v_proj,o_proj", r=4)
    gaps = requested_gaps(report, setup.target_modules)
    assert {"name": "o_proj", "component": "audio_encoder", "use_instead": ["out_proj"]} in gaps
    suggestion = suggest_targets(report)
    assert suggestion["list"] == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    # the regex attaches to the encoder alone, through peft itself
    fresh = tiny_inputs()[0].model
    wrapped = get_peft_model(fresh, LoraConfig(r=2, target_modules=suggestion["regex"]))
    paths = [n for n, _ in wrapped.named_modules() if n.endswith(".lora_A")]
    assert len(paths) == 12 and all(".audio_tower." in p for p in paths)


def test_grad_norms_equal_plain_autograd():
    model, inputs = peft_tiny()
    with torch.no_grad():  # move lora_B off zero so both A and B have real gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    plain, lora = plain_then_traced(model, inputs)
    for path, r in lora.items():
        key = f"base_model.model.{path}"
        assert r["status"] == "ok"
        assert r["grad_norm_A"] == pytest.approx(plain[f"{key}.lora_A.default.weight"], rel=1e-6)
        assert r["grad_norm_B"] == pytest.approx(plain[f"{key}.lora_B.default.weight"], rel=1e-6)


def test_frozen():
    model, inputs = peft_tiny()
    layer = dict(model.named_modules())[f"base_model.model.{ENC}"]
    layer.lora_A["default"].weight.requires_grad_(False)
    layer.lora_B["default"].weight.requires_grad_(False)
    lora, _ = trace(model, lambda: model(**inputs.full).loss.backward())
    assert lora[ENC]["status"] == "frozen"
    assert lora[LM]["status"] == "zero_init"


def test_no_grad_mode_under_torch_no_grad():
    model, inputs = peft_tiny()
    lora, _ = trace(model, lambda: audio_then_lm(model, inputs, no_grad=True))
    assert lora[ENC]["status"] == "no_grad_mode" and "torch.no_grad" in lora[ENC]["cause"]
    assert lora[ENC]["grad_enabled"] is False
    assert lora[LM]["status"] == "zero_init"


def test_no_grad_mode_under_reentrant_checkpointing():
    model = get_peft_model(models.text_only_lm(tied=False), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    base = model.base_model.model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    # the peft#1142 setup: transformers 5 hooks the embeddings so their output needs grad; undo that
    base.disable_input_require_grads()
    assert not base.model.embed_tokens._forward_hooks
    model.train()
    ids = torch.randint(0, 100, (1, 8))
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):  # the symptom users see
        lora, _ = trace(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    layer = lora["model.layers.0.self_attn.q_proj"]
    assert layer["status"] == "no_grad_mode" and "a reentrant checkpoint (CheckpointFunction)" in layer["cause"]
    assert "use_reentrant" in layer["hint"]
    assert lora["lm_head"]["status"] == "zero_init"


def test_off_loss_path_detached():
    model, inputs = peft_tiny()
    lora, _ = trace(model, lambda: audio_then_lm(model, inputs, detach=True))
    assert lora[ENC]["status"] == "off_loss_path" and lora[ENC]["grad_arrived"] is False
    assert lora[LM]["status"] == "zero_init"


def test_disabled_by_disable_adapter_and_merge():
    model, inputs = peft_tiny()

    def disabled_step():
        with model.disable_adapter():
            model(**inputs.full)

    lora, _ = trace(model, disabled_step)
    assert {r["status"] for r in lora.values()} == {"disabled"}
    assert "disable_adapter" in lora[ENC]["cause"]
    model.merge_adapter()
    lora, _ = trace(model, lambda: model(**inputs.full))
    assert lora[ENC]["status"] == "disabled" and "merged" in lora[ENC]["cause"]
    model.unmerge_adapter()


def test_zero_grad_from_zero_weighted_loss():
    model, inputs = peft_tiny()
    lora, _ = trace(model, lambda: (0.0 * model(**inputs.full).loss).backward())
    assert {r["status"] for r in lora.values()} == {"zero_grad"}


def test_nonfinite():
    model, inputs = peft_tiny()
    lora, _ = trace(model, lambda: (model(**inputs.full).loss * float("nan")).backward())
    assert {r["status"] for r in lora.values()} == {"nonfinite"}


def test_library_use_on_users_own_peft_model_reports_components():
    model, inputs = peft_tiny(["q_proj"])
    _, run = trace(model, lambda: model(**inputs.full).loss.backward())
    assert run["lora_summary"] == {"audio_encoder": {"zero_init": 2}, "language_model": {"zero_init": 2}}
    assert all(re.match(r"base_model\.model\.model\.", r["path"]) for r in run["lora"])


def test_dora_magnitude_gradient_reported():
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    plain, lora = plain_then_traced(model, inputs)
    for path, r in lora.items():
        key = f"base_model.model.{path}.lora_magnitude_vector.default.weight"
        assert r["grad_norm_magnitude"] == pytest.approx(plain[key], rel=1e-6)


def test_modules_to_save_copies_are_diagnosed():
    """PEFT trains a copy of each modules_to_save module: it must be the copy that runs and gets gradients."""
    from tracer.run.strategies import RunOptions, run_strategies
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"],
                                                    modules_to_save=["multi_modal_projector"]))
    runs = run_strategies(model, static_report(model), inputs, RunOptions(1, 0), torch.device("cpu"))
    full = {m["path"]: m for m in runs["full_forward"].saved_modules}
    tower = {m["path"]: m for m in runs["audio_tower"].saved_modules}
    path = "base_model.model.model.multi_modal_projector"
    assert full[path]["status"] == "ok" and full[path]["grad_norm"] > 0 and not full[path]["original_ran"]
    assert tower[path]["status"] == "not_executed"  # the tower strategy never reaches the projector
    # with the adapters disabled the frozen original runs instead of the trained copy
    with model.disable_adapter(), Tracer(model) as tr:
        model(**inputs.full)  # nothing trainable runs: no backward to take
    saved = {m["path"]: m for m in tr.result()["saved_modules"]}
    assert saved[path]["status"] == "original_ran"
    model.zero_grad(set_to_none=True)
    for p in model.base_model.model.model.multi_modal_projector.modules_to_save["default"].parameters():
        p.requires_grad_(False)
    with Tracer(model) as tr:
        model(**inputs.full).loss.backward()
    assert {m["path"]: m for m in tr.result()["saved_modules"]}[path]["status"] == "frozen"


def test_one_side_of_tied_weights_changed_by_peft_is_reported():
    """lm_head is tied to embed_tokens: a modules_to_save copy of lm_head (or LoRA on it) trains one side only."""
    from tracer.lora.attach import broken_ties
    base = models.text_only_lm(tied=True)
    report = static_report(base)
    assert report.shared_parameters == [["lm_head.weight", "model.embed_tokens.weight"]]
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert [t.to_dict() for t in broken_ties(wrapped, report)] == [
        {"module": "lm_head", "change": "modules_to_save copy", "tied_to": "model.embed_tokens"}]
    untouched = get_peft_model(models.text_only_lm(tied=True), LoraConfig(r=2, target_modules=["q_proj"]))
    assert broken_ties(untouched, report) == []
