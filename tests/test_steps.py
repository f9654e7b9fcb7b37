"""Tracer(model, optimizer=opt): what the optimizer step did to each LoRA layer, on real broken set-ups."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from helpers import tiny_inputs

from tracer.api.tracer import Tracer


@pytest.fixture
def peft_tiny():
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    return model, inputs


def traced_step(model, batch, optimizer, step=True):
    with Tracer(model, optimizer=optimizer) as tr:
        model(**batch).loss.backward()
        if step:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # as a training loop does: the tracer read them already
    return {r["path"].removeprefix("base_model.model."): r for r in tr.result()["lora"]}


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_a_real_step_makes_every_layer_ok_with_update_ratios_by_hand(peft_tiny):
    model, inputs = peft_tiny
    layer = model.base_model.model.model.audio_tower.layers[0].self_attn.q_proj
    a_old, b_old = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    lora = traced_step(model, inputs.full, torch.optim.AdamW(trainable(model), lr=1e-3))
    assert {r["status"] for r in lora.values()} == {"ok"}  # zero_init no longer: a step was taken
    row = lora["model.audio_tower.layers.0.self_attn.q_proj"]
    assert row["in_optimizer"] and row["stepped"] and row["lr"] == 1e-3 and row["optimizer_steps"] == 1
    a_new, b_new = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    assert row["update_ratio_A"] == pytest.approx(float((a_new - a_old).norm() / a_old.norm()), rel=1e-4)
    assert float(b_old.abs().max()) == 0.0  # fresh: B is measured against ||A|| x scale (8 / 4)
    assert row["update_ratio_B"] == pytest.approx(float((b_new - b_old).norm() / (a_old.norm() * 2.0)), rel=1e-4)
    assert row["grad_norm_B"] > 0 and row["grad_norm_A"] == 0.0  # what the step saw, after zero_grad


def test_lora_params_missing_from_the_optimizer(peft_tiny):
    model, inputs = peft_tiny
    only_a = [p for n, p in model.named_parameters() if "lora_A" in n]  # a filtered list that forgot lora_B
    lora = traced_step(model, inputs.full, torch.optim.SGD(only_a, lr=0.1))
    assert {r["status"] for r in lora.values()} == {"not_in_optimizer"}
    assert not any(r["in_optimizer"] for r in lora.values())


def test_learning_rate_zero_is_not_updated(peft_tiny):
    model, inputs = peft_tiny
    lora = traced_step(model, inputs.full, torch.optim.SGD(trainable(model), lr=0.0))
    assert {r["status"] for r in lora.values()} == {"not_updated"}
    assert all("learning rate is 0" in r["cause"] and r["stepped"] is False for r in lora.values())


def test_a_skipped_step_is_not_updated(peft_tiny):
    """What a GradScaler does on overflow: step() is not called, the weights stay as they were."""
    model, inputs = peft_tiny
    lora = traced_step(model, inputs.full, torch.optim.AdamW(trainable(model), lr=1e-3), step=False)
    assert {r["status"] for r in lora.values()} == {"not_updated"}
    assert all("never stepped" in r["cause"] and r["optimizer_steps"] == 0 for r in lora.values())


def test_every_label_masked_is_loss_masked(peft_tiny):
    model, inputs = peft_tiny
    batch = dict(inputs.full, labels=torch.full_like(inputs.full["labels"], -100))
    with Tracer(model) as tr:
        loss = model(**batch).loss
        loss.backward()
    assert torch.isnan(loss)  # the mean over zero target tokens
    lora = tr.result()["lora"]
    assert {r["status"] for r in lora} == {"loss_masked"}
    assert all("every label is -100" in r["cause"] for r in lora)


def test_no_optimizer_keeps_zero_init_and_no_step_fields(peft_tiny):
    model, inputs = peft_tiny
    with Tracer(model) as tr:
        model(**inputs.full).loss.backward()
    lora = tr.result()["lora"]
    assert {r["status"] for r in lora} == {"zero_init"}
    assert all(r["in_optimizer"] is None and r["stepped"] is None for r in lora)


def test_optimizer_hooks_do_not_outlive_the_block(peft_tiny):
    model, inputs = peft_tiny
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-3)
    traced_step(model, inputs.full, optimizer)
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_accumulated_norms_are_read_before_clipping(peft_tiny):
    """Two micro-batches, then clip_grad_norm_ to almost nothing, then the step: the norm reported is the
    accumulated gradient's, as plain autograd accumulates it, not the clipped one."""
    model, inputs = peft_tiny
    target = model.base_model.model.model.audio_tower.layers[1].self_attn.q_proj.lora_B["default"].weight
    for _ in range(2):
        model(**inputs.full).loss.backward()
    plain = float(target.grad.norm())
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    with Tracer(model, optimizer=optimizer) as tr:
        for _ in range(2):
            model(**inputs.full).loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable(model), max_norm=1e-6)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    row = next(r for r in tr.result()["lora"] if r["path"].endswith("audio_tower.layers.1.self_attn.q_proj"))
    assert row["grad_norm_B"] == pytest.approx(plain, rel=1e-5) and plain > 1e-5  # clipped, it would be < 1e-6
    assert row["status"] == "ok"


def test_three_steps_every_executed_layer_ok_with_a_trajectory_and_the_adapter_put_back(root):
    import models

    from tracer import TraceOptions, trace_clip
    model = models.builtin_model()
    report = trace_clip(f"{root}/samples/sample.wav", model, options=TraceOptions(repeats=1, warmup=0, steps=3))
    full = report.runs["full_forward"]
    assert {r.status for r in full.lora} == {"ok"}
    assert all(len(points) == 3 for points in full.lora_trajectory.values())
    assert [p["step"] for p in next(iter(full.lora_trajectory.values()))] == [1, 2, 3]
    tower = report.runs["audio_tower"]
    assert {r.status for r in tower.lora if r.executed} == {"ok"}
    # each strategy started from the fresh adapter, and the caller gets it back as it was
    first_b = [p[0]["update_ratio_B"] for p in full.lora_trajectory.values()]
    assert all(r is not None and r > 0 for r in first_b)
    peft_model = report.model
    assert all(not bool(p.detach().any()) for n, p in peft_model.named_parameters() if "lora_B" in n)
    assert report.lora_diagnosis.trajectory_flags == {"audio_tower": [], "full_forward": []}


def test_steps_zero_is_the_fresh_adapter(root):
    from tracer import TraceOptions, trace_clip
    report = trace_clip(f"{root}/samples/sample.wav", options=TraceOptions(repeats=1, warmup=0, steps=0))
    assert report.runs["full_forward"].lora_summary == {"audio_encoder": {"zero_init": 12},
                                                        "language_model": {"zero_init": 6}}
    assert report.runs["full_forward"].lora_trajectory is None


def test_trajectory_flags():
    from tracer.diagnose.lora_status import trajectory_flags
    from tracer.records.diagnosis import LayerKey

    def point(a, b, ra=0.01, rb=0.01):
        return {"grad_norm_A": a, "grad_norm_B": b, "update_ratio_A": ra, "update_ratio_B": rb}
    trajectory = {
        LayerKey("dies", "default"): [point(1.0, 1.0), point(0.5, 0.0)],
        LayerKey("explodes", "default"): [point(1.0, 1.0), point(1.0, 5000.0)],
        LayerKey("nan", "default"): [point(1.0, float("nan"))],
        LayerKey("still", "default"): [point(1.0, 1.0, 0.0, 0.0), point(1.0, 1.0, 0.0, 0.0)],
        LayerKey("fine", "default"): [point(1.0, 1.0), point(1.2, 0.9)],
        LayerKey("unreached", "default"): [point(None, None, 0.0, 0.0)],
    }
    flags = {(f["path"], f["flag"], f["side"]) for f in trajectory_flags(trajectory)}
    assert flags == {("dies", "dies", "B"), ("explodes", "explodes", "B"), ("nan", "explodes", "B"),
                     ("still", "never_moves", None)}


def test_embedding_adapters_are_diagnosed_and_a_freezing_loop_that_misses_them_shows(root):
    """An Embedding's LoRA lives in lora_embedding_A/B, not lora_A/B: it is diagnosed like the others, and
    a freezing loop that only re-enables '.lora_A.'/'.lora_B.' names leaves it frozen (unsloth#9331)."""
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    for name, param in model.named_parameters():  # the loop users write
        param.requires_grad = ".lora_A." in name or ".lora_B." in name
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-3)
    lora = traced_step(model, inputs.full, optimizer)
    embed = lora["model.language_model.embed_tokens"]
    assert embed["status"] == "frozen" and "requires_grad=False" in embed["cause"]
    assert {r["status"] for p, r in lora.items() if p.endswith("q_proj")} == {"ok"}
    # unfrozen, it trains like the rest
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    lora = traced_step(model, inputs.full, torch.optim.AdamW(trainable(model), lr=1e-3))
    embed = lora["model.language_model.embed_tokens"]
    # peft starts an Embedding's lora_embedding_A at zero (the reverse of Linear): A gets the gradient
    assert embed["status"] == "ok" and embed["stepped"] and embed["grad_norm_A"] > 0


def test_a_grad_scaler_skipping_an_overflowed_step_is_not_updated(peft_tiny):
    """A real torch.amp.GradScaler: an inf in the loss overflows the gradients, scaler.step() skips the
    optimizer's step, the LoRA weights stay put."""
    model, inputs = peft_tiny
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with Tracer(model, optimizer=optimizer) as tr:
        loss = model(**inputs.full).loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    assert scaler.get_scale() < 65536.0  # it backed off: the step was skipped
    lora = tr.result()["lora"]
    # the cause the user must fix is the inf, so that is the status; the record shows no step was taken
    assert {r["status"] for r in lora} == {"nonfinite"}
    assert all(r["optimizer_steps"] == 0 and r["stepped"] is False for r in lora)
