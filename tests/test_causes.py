"""The ways users lose their LoRA gradients in public bug threads (../shared/CAUSES.md), each reproduced on a
tiny real model and named: the status, a cause that says where, and a fix that, applied, makes it learn."""
import functools

import models
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from helpers import builtin_paths, tiny_inputs

from tracer.api.tracer import Tracer

LEARNING = {"ok", "zero_init"}


@functools.cache
def builtin_layers() -> tuple:
    """(its audio tower, the tower's first q_proj, the LM's first q_proj) in the built-in model as the installed
    transformers lays it out (helpers.builtin_paths)."""
    tower, lm_layers = builtin_paths(models.builtin_model())
    return tower, f"{tower}.layers.0.self_attn.q_proj", f"{lm_layers}.0.self_attn.q_proj"


def traced(model, step, **kwargs):
    with Tracer(model, **kwargs) as tr:
        step()
    run = tr.result()
    return {r["path"].removeprefix("base_model.model."): r for r in run.get("lora", ())}, run


def text_lm(targets, **config):
    return get_peft_model(models.text_only_lm(tied=False), LoraConfig(r=4, target_modules=targets, **config))


def test_compiled_model_is_traced_eagerly_with_the_eager_statuses_and_a_note():
    """peft#1725, pytorch#117758: hooks added after compiling never fire in compiled code."""
    model = text_lm(["q_proj", "v_proj"])
    ids = torch.randint(0, 100, (1, 8))
    eager, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="eager")
    compiled(input_ids=ids, labels=ids).loss.backward()  # compiled once, before the tracer comes
    model.zero_grad(set_to_none=True)
    lora, run = traced(compiled, lambda: compiled(input_ids=ids, labels=ids).loss.backward())
    assert {p: r["status"] for p, r in lora.items()} == {p: r["status"] for p, r in eager.items()}
    assert len(lora) == 4 and {r["status"] for r in lora.values()} == {"zero_init"}
    assert any("compiled" in n and "eager times" in n for n in run["notes"])
    assert run["modules"][0]["path"] == ""  # paths are the eager model's, no _orig_mod
    assert torch._dynamo.eval_frame._stance.stance == "default"  # the caller's stance is back


def _fused_loss(model, ids):
    """What Liger / cut-cross-entropy do: the head's weight read directly, the LoRA-wrapped lm_head never called."""
    base = model.base_model.model
    hidden = base.model(input_ids=ids).last_hidden_state
    logits = F.linear(hidden, base.lm_head.get_base_layer().weight)
    return F.cross_entropy(logits[0, :-1], ids[0, 1:])


def test_fused_loss_reading_lm_head_weight_is_bypassed_and_the_fix_works():
    """trl#4612, trl PR#5977, unsloth PR#9331."""
    model = text_lm(["q_proj", "lm_head"])
    ids = torch.randint(0, 100, (1, 8))
    lora, _ = traced(model, lambda: _fused_loss(model, ids).backward())
    head = lora["lm_head"]
    assert head["status"] == "bypassed" and "fused" in head["cause"] and "lm_head" in head["hint"]
    assert lora["model.layers.0.self_attn.q_proj"]["status"] == "zero_init"
    # the fix: the plain loss (fused loss off) calls the LoRA-wrapped head
    model.zero_grad(set_to_none=True)
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert lora["lm_head"]["status"] in LEARNING


def test_one_fully_masked_sample_is_named_and_counts_per_sample():
    """trl#6668, trl PR#6320, unsloth#1128: one sample's answer truncated away; the batch still learns."""
    model = text_lm(["q_proj"])
    ids = torch.randint(0, 100, (3, 8))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1] = -100
    lora, run = traced(model, lambda: model(input_ids=ids, labels=labels).loss.backward())
    assert run["labels"] == {"supervised_tokens": [3, 0, 3], "masked_samples": [1]}
    assert [n for n in run["notes"] if "every label -100" in n] == [n for n in run["notes"] if n.startswith("sample 1 of 3")]
    assert {r["status"] for r in lora.values()} == {"zero_init"}  # the others still supervise: not loss_masked
    model.zero_grad(set_to_none=True)
    lora, run = traced(model, lambda: model(input_ids=ids, labels=torch.full_like(ids, -100)).loss.backward())
    assert run["labels"]["masked_samples"] == [0, 1, 2] and {r["status"] for r in lora.values()} == {"loss_masked"}


def test_a_component_that_runs_with_no_lora_says_it_will_not_adapt():
    """ms-swift#1747: Qwen2-Audio LoRA on the LLM only leaves the audio encoder as it was."""
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    _, run = traced(model, lambda: model(**inputs.full).loss.backward())
    notes = [n for n in run["notes"] if "will not adapt" in n]
    assert [n.split(" ran ")[0] for n in notes] == ["audio_encoder", "projector"]
    assert "out_proj" in notes[0] and "fc1" in notes[0] and builtin_layers()[0] in notes[0]
    # trained fully instead (modules_to_save): the projector is no longer named
    loaded, _ = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                                    modules_to_save=["multi_modal_projector"]))
    _, run = traced(model, lambda: model(**inputs.full).loss.backward())
    assert [n.split(" ran ")[0] for n in run["notes"] if "will not adapt" in n] == ["audio_encoder"]


def _dora_step(param_groups, steps=1):
    model = text_lm(["q_proj"], use_dora=True)
    ids = torch.randint(0, 100, (1, 8))
    groups = param_groups(model)
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    with Tracer(model, optimizer=optimizer) as tr:
        for _ in range(steps):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return {r["path"].removeprefix("base_model.model."): r for r in tr.result()["lora"]}


def _split(model, magnitude_lr=None, with_magnitude=True):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ab = [p for n, p in named if "magnitude" not in n]
    mag = [p for n, p in named if "magnitude" in n]
    groups = [{"params": ab}]
    if with_magnitude:
        groups.append({"params": mag, **({} if magnitude_lr is None else {"lr": magnitude_lr})})
    return groups


def test_dora_magnitude_that_never_moves_is_not_updated():
    """torchtune#2250: LoRA and DoRA runs come out identical."""
    layer = "model.layers.0.self_attn.q_proj"
    missing = _dora_step(lambda m: _split(m, with_magnitude=False))[layer]
    assert missing["status"] == "not_updated" and "magnitude" in missing["cause"] and "no param group" in missing["cause"]
    frozen_lr = _dora_step(lambda m: _split(m, magnitude_lr=0.0))[layer]
    assert frozen_lr["status"] == "not_updated" and "magnitude" in frozen_lr["cause"] and "0" in frozen_lr["cause"]
    assert _dora_step(lambda m: _split(m))[layer]["status"] == "ok"  # the fix: the magnitude in a group with an lr


def test_no_grad_in_a_towers_own_forward_names_that_forward():
    loaded, inputs = tiny_inputs()
    tower_path, enc, lm = builtin_layers()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"]))
    tower = model.base_model.model.get_submodule(tower_path)
    original = type(tower)
    # LLaVA#1537's pattern: the tower class's forward decorated @torch.no_grad()
    tower.__class__ = type("NoGradTower", (original,), {"forward": torch.no_grad()(original.forward)})
    lora, _ = traced(model, lambda: model(**inputs.full).loss.backward())
    layer = lora[enc]
    assert layer["status"] == "no_grad_mode"
    assert f"{tower_path}'s forward switched autograd off (torch.no_grad()" in layer["cause"]
    assert f"before calling {tower_path}.layers.0" in layer["cause"] and "torch.no_grad()" in layer["hint"]
    assert lora[lm]["status"] == "zero_init"
    tower.__class__ = original  # the fix: no decorator
    model.zero_grad(set_to_none=True)
    lora, _ = traced(model, lambda: model(**inputs.full).loss.backward())
    assert lora[enc]["status"] in LEARNING


def _own_reentrant_checkpointing(model, reentrant: bool):
    """The user's (or Unsloth's) own checkpoint function, not transformers' partial."""
    base = model.base_model.model
    base.gradient_checkpointing_enable()
    base.disable_input_require_grads()  # peft#1142: the embeddings' output needs no grad
    for layer in base.model.layers:
        layer._gradient_checkpointing_func = (
            lambda fn, *args: torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=reentrant))
    model.train()


def _checkpoint_where() -> str:
    """Where transformers calls a layer's checkpoint function: inside the layer's forward (5.24 wraps each
    GradientCheckpointingLayer's forward), or in its __call__ (5.6), before the layer's forward opens: then
    the checkpoint is met in the model's forward and runs the layer itself."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    if "__call__" in vars(GradientCheckpointingLayer):
        return "model's forward ran model.layers.0 "
    return "model.layers.0's forward ran model.layers.0.self_attn"


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_users_own_reentrant_checkpoint_is_named_and_non_reentrant_fixes_it():
    """peft#1142, unsloth#5039: a reentrant checkpoint whose inputs need no grad runs under no_grad."""
    model = text_lm(["q_proj", "lm_head"])  # (the head's LoRA keeps the loss differentiable)
    ids = torch.randint(0, 100, (1, 8))
    _own_reentrant_checkpointing(model, reentrant=True)
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    layer = lora["model.layers.0.self_attn.q_proj"]
    assert layer["status"] == "no_grad_mode"
    assert f"a reentrant checkpoint (CheckpointFunction) in {_checkpoint_where()}" in layer["cause"]
    assert "use_reentrant=False" in layer["hint"]
    model.zero_grad(set_to_none=True)
    _own_reentrant_checkpointing(model, reentrant=False)  # the fix
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert lora["model.layers.0.self_attn.q_proj"]["status"] in LEARNING


def test_frozen_by_a_freezing_loop_and_the_hint_unfreezes_it():
    """The freezing loop after get_peft_model; model.train() would unfreeze nothing."""
    model = text_lm(["q_proj"])
    ids = torch.randint(0, 100, (1, 8))
    for param in model.parameters():  # "freeze everything but the head", written after get_peft_model
        param.requires_grad_(False)
    model.train()  # what the old hint said: changes nothing
    model.base_model.model.lm_head.weight.requires_grad_(True)
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    layer = lora["model.layers.0.self_attn.q_proj"]
    assert layer["status"] == "frozen" and "freezing loop" in layer["cause"] and "model.train()" not in layer["hint"]
    for name, param in model.named_parameters():  # the hint: requires_grad_(True) on the 'lora_' parameters
        if "lora_" in name:
            param.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert layer["path"] and lora["model.layers.0.self_attn.q_proj"]["status"] in LEARNING


def test_half_precision_trainable_weights_are_noted():
    """peft troubleshooting ('Attempting to unscale FP16 gradients'), peft#236, #350."""
    model = text_lm(["q_proj"])
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.half()
    ids = torch.randint(0, 100, (1, 8))
    _, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    notes = [n for n in run["notes"] if "float16" in n]
    assert len(notes) == 1 and notes[0].startswith("4 trainable parameter tensors in float16")
    assert "unscale FP16" in notes[0]
    model = text_lm(["q_proj"])  # fp32 adapters (peft's default): nothing to say
    _, run = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert not [n for n in run["notes"] if "float16" in n]


def test_adapter_loaded_without_is_trainable_is_frozen_and_is_trainable_fixes_it(tmp_path):
    """peft#282, trl#6700: PeftModel.from_pretrained loads an adapter frozen by default."""
    from peft import PeftModel
    text_lm(["q_proj"]).save_pretrained(tmp_path)
    ids = torch.randint(0, 100, (1, 8))
    for trainable, expected in ((False, {"frozen"}), (True, LEARNING)):
        model = PeftModel.from_pretrained(models.text_only_lm(tied=False), tmp_path, is_trainable=trainable)
        model.base_model.model.lm_head.weight.requires_grad_(True)  # (something to backward through)
        lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
        assert {r["status"] for r in lora.values()} <= expected, trainable


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_kbit_preparation_after_the_adapter_freezes_it():
    """trl PR#4081, peft PR#760: prepare_model_for_kbit_training applied after get_peft_model freezes LoRA."""
    from peft import prepare_model_for_kbit_training
    ids = torch.randint(0, 100, (1, 8))
    model = prepare_model_for_kbit_training(text_lm(["q_proj", "lm_head"]), use_gradient_checkpointing=False)
    model.base_model.model.model.norm.weight.requires_grad_(True)  # (something to backward through)
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} == {"frozen"}
    assert "prepare_model_for_kbit_training" in lora["lm_head"]["cause"]
    # the fix: prepare the base first, then attach the adapter
    base = prepare_model_for_kbit_training(models.text_only_lm(tied=False), use_gradient_checkpointing=False)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    lora, _ = traced(model, lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert {r["status"] for r in lora.values()} <= LEARNING
