"""TracerCallback in a real transformers.Trainer: the built-in tiny Qwen2-Audio with LoRA, a few clips'
worth of batches, gradient accumulation 2, CPU, offline."""
import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from helpers import hook_counts
from helpers import tiny_inputs
from transformers import Trainer, TrainingArguments

from tracer.api.callback import TracerCallback

LOGGED: list = []  # the callback's log records during the `trained` fixture's run


class Clips(torch.utils.data.Dataset):
    """full_forward inputs of a few real clips, one example per item (batch size 1: no padding needed)."""

    def __init__(self, fulls: list):
        self.items = [{k: v[0] for k, v in full.items()} for full in fulls]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def clips_made_here(directory, loaded) -> list:
    """Three clips cut from the shipped recording (different lengths, so different numbers of audio
    tokens), written as files and read back as the tool reads any clip."""
    import soundfile as sf
    from helpers import ROOT

    from tracer.load.audio import load_clip
    from tracer.inputs.families import prepare_inputs
    audio, rate = sf.read(f"{ROOT}/samples/sample.wav", dtype="float32")
    encoder = loaded.model.model.audio_tower
    fulls = []
    for i, (start, stop) in enumerate(((0.0, 1.6), (1.0, 3.0), (1.8, 4.2))):
        path = directory / f"clip{i}.wav"
        sf.write(path, audio[int(start * rate): int(stop * rate)], rate)
        fulls.append(prepare_inputs(loaded.processor, loaded.model, encoder, load_clip(str(path), 16000)).full)
    return fulls


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    loaded, _ = tiny_inputs()
    fulls = clips_made_here(tmp_path_factory.mktemp("clips"), loaded)
    assert len({f["input_ids"].shape[1] for f in fulls}) == 3  # really different clips
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    target = model.base_model.model.model.audio_tower.layers[0].self_attn.q_proj.lora_B["default"].weight
    accumulated = []  # what plain autograd accumulated, seen by an independent hook of the test's own
    handle = target.register_post_accumulate_grad_hook(lambda p: accumulated.append(float(p.grad.norm())))
    out = tmp_path_factory.mktemp("trainer")
    callback = TracerCallback(steps=(1, 2), output_dir=str(out / "traces"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                             max_steps=3, learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Clips(fulls * 3), callbacks=[callback])
    logger, handler = logging.getLogger("tracer.callback"), logging.Handler()
    handler.emit = LOGGED.append
    logger.addHandler(handler)
    try:
        trainer.train()
    finally:
        logger.removeHandler(handler)
    handle.remove()
    return model, trainer, callback, accumulated, out


def test_the_listed_steps_are_traced_with_the_accumulated_norms(trained):
    model, _, callback, accumulated, _ = trained
    assert sorted(callback.results) == [1, 2]
    for step in (1, 2):
        rows = {r["path"]: r for r in callback.results[step]["lora"]}
        row = rows["base_model.model.model.audio_tower.layers.0.self_attn.q_proj"]
        # micro-batches 2 and 4 end the accumulation of steps 1 and 2
        assert row["grad_norm_B"] == pytest.approx(accumulated[2 * step - 1], rel=1e-5)
        assert row["in_optimizer"] and row["stepped"] and row["optimizer_steps"] == 1
        assert {r["status"] for r in rows.values()} == {"ok"}


def test_no_hook_outlives_the_traced_steps(trained):
    model, trainer, _, _, _ = trained
    assert hook_counts(model) == 0
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks


def test_results_are_written_per_step(trained):
    import json
    _, _, callback, _, out = trained
    written = sorted(p.name for p in (out / "traces").iterdir())
    assert written == ["trace-step1.json", "trace-step1.md", "trace-step2.json", "trace-step2.md"]
    md = (out / "traces" / "trace-step2.md").read_text()
    assert md.startswith("# tracer: training step 2\n\n## Step 2: LEARNING: every LoRA layer that runs gets a "
                         "gradient (4 of 4 under step 2)")
    assert "statuses: audio_encoder: 2 ok, language_model: 2 ok" in md
    import re
    assert re.search(r"\nmodel\.audio_tower\.layers\.0\.self_attn\.q_proj +ok +", md)
    data = json.loads((out / "traces" / "trace-step2.json").read_text())
    assert data["lora_summary"] == callback.results[2]["lora_summary"]


def test_each_traced_step_speaks_at_warning_level(trained):
    """What reaches the console: a WARNING block per traced step, the verdict first."""
    blocks = [r.getMessage() for r in LOGGED if r.levelname == "WARNING"]
    assert len(blocks) == 2 and blocks[0].startswith("\n[STEP 1] LEARNING: every LoRA layer")


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_a_crashing_step_is_explained_and_leaves_no_hook(tmp_path, caplog):
    """Reentrant checkpointing enabled after get_peft_model, no enable_input_require_grads (peft#1142): the
    first backward raises. The callback explains it at WARNING before the error, and no hook stays."""
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    base = model.base_model.model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    base.disable_input_require_grads()
    callback = TracerCallback(steps=(1,), output_dir=str(tmp_path / "traces"))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Clips([inputs.full]), callbacks=[callback])
    with caplog.at_level("WARNING", logger="tracer.callback"), \
            pytest.raises(RuntimeError, match="does not require grad"):
        trainer.train()
    assert hook_counts(model) == 0 and tracer_hooks(model) == []
    run = callback.results[1]
    assert "no grad_fn" in run["fault"]
    statuses = {r["path"].removeprefix("base_model.model."): r for r in run["lora"]}
    layer = statuses["model.language_model.layers.0.self_attn.q_proj"]
    assert layer["status"] == "no_grad_mode" and "reentrant checkpoint" in layer["cause"]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "NOT LEARNING" in logged and "reentrant checkpoint" in logged and "use_reentrant" in logged
    assert "this step cannot succeed" in logged
    assert (tmp_path / "traces" / "trace-step1.md").read_text().count("reentrant checkpoint") >= 1


def test_trl_sft_trainer_step_is_traced(tmp_path):
    """TRL's SFTTrainer subclasses Trainer: the callback works there too (pre-tokenized audio batches, its
    dataset preparation skipped, a collator that keeps input_features)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    dataset = Dataset.from_list([{k: v[0].tolist() for k, v in inputs.full.items()}] * 4)

    def collate(rows):
        return {k: torch.tensor([row[k] for row in rows]) for k in rows[0]}
    callback = TracerCallback(steps=(2,))
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                         max_steps=2, learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                         logging_strategy="no", remove_unused_columns=False, disable_tqdm=True,
                         dataset_kwargs={"skip_prepare_dataset": True})
    trl.SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                   processing_class=loaded.processor.tokenizer, callbacks=[callback]).train()
    assert sorted(callback.results) == [2]
    assert {r["status"] for r in callback.results[2]["lora"]} == {"ok"}
    assert tracer_hooks(model) == []  # TRL adds hooks of its own (enable_input_require_grads): not ours


def tracer_hooks(model) -> list:
    """Hooks on the model whose function comes from this package."""
    from helpers import HOOK_DICTS
    found = []
    for module in model.modules():
        hooks = [h for d in HOOK_DICTS for h in (getattr(module, d, None) or {}).values()]
        hooks += [h for p in module.parameters(recurse=False) for h in (p._post_accumulate_grad_hooks or {}).values()]
        found += [h for h in hooks if getattr(getattr(h, "func", h), "__module__", "").startswith("tracer.")]
    return found


def test_tracer_hooks_helper_sees_ours():
    from tracer.api.tracer import Tracer
    loaded, _ = tiny_inputs()
    with Tracer(loaded.model):
        assert len(tracer_hooks(loaded.model)) > 100
    assert tracer_hooks(loaded.model) == []
