"""TracerCallback in ms-swift's own trainer (swift.trainers.Seq2SeqTrainer: SwiftMixin over HF's
Seq2SeqTrainer), given the parts `swift sft` gives it: swift's processor/template for qwen2_audio, its collator,
its training arguments (gradient checkpointing on, reentrant: swift's defaults). The model is the built-in tiny
Qwen2-Audio with a peft LoRA; the data the clip's full_forward inputs. CPU, offline, nothing saved.

Skipped unless ms-swift is installed (`SWIFT=1 ci/compat.sh 5.19`; docs/compat.md). Found with ms-swift 4.6.0:
its trainer passes `callbacks=` to HF's __init__ itself (built from `args.callbacks`, names in
`swift.callbacks.callbacks_map`), so `Seq2SeqTrainer(..., callbacks=[TracerCallback()])` is a TypeError
("got multiple values for keyword argument 'callbacks'"). Ours goes in by `trainer.add_callback(...)`, or by
a name registered in `callbacks_map` and listed in `args.callbacks`: both are tested."""
import importlib.metadata
import os

import pytest
import torch
from helpers import ROOT
from helpers import tiny_inputs
from peft import LoraConfig
from peft import get_peft_model

from tracer.api.callback import TracerCallback

try:
    importlib.metadata.version("ms-swift")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("ms-swift is not installed (SWIFT=1 ci/compat.sh 5.19 installs it)", allow_module_level=True)

AUDIO_KEYS = ("input_features", "feature_attention_mask")  # swift's collator concatenates these: batch dim kept


class Clips(torch.utils.data.Dataset):
    """full_forward inputs, one example per item, laid out as swift's Qwen2AudioTemplate.encode returns them."""

    def __init__(self, fulls: list):
        self.items = [{k: (v if k in AUDIO_KEYS else v[0]) for k, v in full.items()} for full in fulls]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


@pytest.fixture
def swift_patches_undone():
    """ms-swift patches the process: importing swift.trainers replaces transformers.trainer's default callbacks
    (DefaultFlowCallbackNew reads `args.max_epochs`, which a plain TrainingArguments lacks: a plain Trainer
    later in the session fails at its epoch end), and SwiftMixin._fix_gradient_checkpointing replaces
    torch.utils.checkpoint.checkpoint (forcing its use_reentrant). swift is imported here, never at
    collection, and all of it is put back after each test."""
    import torch.utils.checkpoint as cp
    import transformers.trainer as hf
    saved = {name: getattr(hf, name) for name in ("DEFAULT_CALLBACKS", "DEFAULT_PROGRESS_CALLBACK", "PrinterCallback")}
    original = cp.checkpoint
    import swift.trainers  # noqa: F401
    yield
    for name, value in saved.items():
        setattr(hf, name, value)
    cp.checkpoint = original
    if hasattr(cp, "_old_checkpoint"):
        del cp._old_checkpoint


def swift_parts(tmp_path, **overrides):
    """The model (peft LoRA on the built-in tiny Qwen2-Audio, with swift's model_meta/model_info as its loader
    attaches them), swift's template, its training arguments, the dataset, and the LoRA weights."""
    from swift.model import get_processor
    from swift.template import get_template
    from swift.trainers import Seq2SeqTrainingArguments
    loaded, inputs = tiny_inputs()
    processor = get_processor(os.path.join(ROOT, "samples", "tiny-qwen2-audio"), model_type="qwen2_audio")
    template = get_template(processor, template_type="qwen2_audio")
    template.set_mode("train")
    loaded.model.model_meta, loaded.model.model_info = processor.model_meta, processor.model_info
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                    max_steps=2, learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                    logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
                    remove_unused_columns=False)
    settings.update(overrides)
    args = Seq2SeqTrainingArguments(**settings)
    lora = {name.removesuffix(".weight"): p for name, p in model.named_parameters()
            if ".lora_A." in name or ".lora_B." in name}
    return model, template, args, Clips([inputs.full] * 4), lora


def check_traced_step(model, callback, norms):
    """Step 1 traced: every LoRA layer ok, stepped once, its gradient norms what autograd accumulated (read by
    the test's own post-accumulate hooks: micro-batch 2 ends step 1); no hook of ours left on the model."""
    from test_callback import tracer_hooks
    assert sorted(callback.results) == [1]
    rows = callback.results[1]["lora"]
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "ok", row
        assert row["in_optimizer"] and row["stepped"] and row["optimizer_steps"] == 1
        prefix = row["path"]
        for side in ("A", "B"):
            name = f"{prefix}.lora_{side}.default"
            assert len(norms[name]) == 4  # 2 steps x 2 micro-batches
            assert row[f"grad_norm_{side}"] == pytest.approx(norms[name][1], rel=1e-5, abs=1e-12)
    assert any(row["grad_norm_B"] > 0 for row in rows)
    assert tracer_hooks(model) == []  # swift adds hooks of its own (its template's post_encode hook): not ours


def independent_norms(lora: dict):
    norms = {name: [] for name in lora}
    handles = [p.register_post_accumulate_grad_hook(lambda p, name=name: norms[name].append(float(p.grad.norm())))
               for name, p in lora.items()]
    return norms, handles


def test_callback_added_to_swift_seq2seq_trainer(tmp_path, swift_patches_undone):
    from swift.trainers import Seq2SeqTrainer
    model, template, args, dataset, lora = swift_parts(tmp_path)
    callback = TracerCallback(steps=(1,))
    with pytest.raises(TypeError, match="multiple values for keyword argument 'callbacks'"):
        Seq2SeqTrainer(model=model, args=args, template=template, train_dataset=dataset, callbacks=[callback])
    trainer = Seq2SeqTrainer(model=model, args=args, template=template, train_dataset=dataset)
    trainer.add_callback(callback)
    assert args.gradient_checkpointing  # swift's default, kept
    norms, handles = independent_norms(lora)
    try:
        trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    check_traced_step(model, callback, norms)
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks


def test_callback_by_name_in_swift_callbacks_map(tmp_path, swift_patches_undone, monkeypatch):
    """How `swift sft --callbacks tracer` would reach it (an --external_plugins file registering the name)."""
    from swift.callbacks import callbacks_map
    from swift.trainers import Seq2SeqTrainer
    made = []

    def factory(args, trainer):
        made.append(TracerCallback(steps=(1,)))
        return made[-1]
    monkeypatch.setitem(callbacks_map, "tracer", factory)
    model, template, args, dataset, lora = swift_parts(tmp_path, callbacks=["tracer"])
    trainer = Seq2SeqTrainer(model=model, args=args, template=template, train_dataset=dataset)
    norms, handles = independent_norms(lora)
    try:
        trainer.train()
    finally:
        for handle in handles:
            handle.remove()
    assert len(made) == 1
    check_traced_step(model, made[0], norms)
