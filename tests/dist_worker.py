"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_distributed.py: a PEFT LoRA model traced
with DDP and with FSDP2, each rank on its half of one global batch; rank 1 slowed on purpose in one module.
Each rank writes what it saw to OUT_DIR/{mode}-{rank}.json; rank 0 adds the merged view."""
import functools
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tracer.api.tracer import Tracer  # noqa: E402

SLOWED = "base_model.model.model.layers.1.mlp"  # rank 1 sleeps here
# large against a loaded machine's noise (a whole stage's forward took 25 ms on rank 0 under load): the tests
# compare the ranks with margins of half of it
SLEEP_S = 0.25


def build_model(modules_to_save=None):
    """The same tiny Qwen2 + LoRA on every rank (and in the single-process reference): seed 0, lora_B
    random so lora_A gets a gradient too. ``modules_to_save``: PEFT's trainable copies (the copy computes what
    the original does: every norm stays the same)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                      modules_to_save=modules_to_save)
    return get_peft_model(Qwen2ForCausalLM(config), lora)


def global_batch():
    torch.manual_seed(1)
    return torch.randint(0, 100, (4, 8))


def loss_of(model, input_ids):
    # a mean over equal-sized shards: the ranks' average is the global batch's mean
    return model(input_ids=input_ids).logits.float().square().mean()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def run(mode: str, out_dir: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        traced = DistributedDataParallel(model)
        slowed = dict(traced.named_modules())["module." + SLOWED]
    elif mode == "fsdp1":
        slowed = dict(model.named_modules())[SLOWED]  # the same module object once wrapped
        traced = fsdp1(model)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        traced = model
        slowed = dict(traced.named_modules())[SLOWED]
    hooks_before = _hooks(traced)
    rows = global_batch().chunk(world)[rank]
    with Tracer(traced) as tracer:
        if rank == 1:  # registered after the tracer's: the sleep falls inside the module's timed window
            slowed.register_forward_pre_hook(lambda *args: time.sleep(SLEEP_S))
        loss_of(traced, rows).backward()
    run_record = tracer.result()
    merged = tracer.merged(run_record)
    tracer.write_chrome_traces(os.path.join(out_dir, f"{mode}-traces"))
    out = {"mode": mode, "rank": run_record["rank"], "world_size": run_record["world_size"],
           "backend": run_record["backend"], "hooks_left": _hooks(traced) - hooks_before - (rank == 1),
           "lora": [{k: r[k] for k in ("path", "adapter", "status", "grad_norm_A", "grad_norm_B")}
                    for r in run_record["lora"]],
           "saved_bytes": {m["path"]: m["saved_bytes"] for m in run_record["modules"]},
           "merged": merged}
    with open(os.path.join(out_dir, f"{mode}-{rank}.json"), "w") as f:
        json.dump(out, f)


def fsdp1(model, use_orig_params: bool = True, units=None):
    """FSDP1 as accelerate applies it to a PEFT model: one unit per decoder layer and the root,
    use_orig_params=True (a unit's parameters are then free to differ in requires_grad)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    units = units or functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={Qwen2DecoderLayer})
    return FullyShardedDataParallel(model, auto_wrap_policy=units, device_id=torch.device("cpu"),
                                    use_orig_params=use_orig_params)


def fsdp1_step(out_dir: str) -> None:
    """FSDP1 with an AdamW step on the original parameters inside the traced block (the optimizer watched),
    then use_orig_params=False refused in one line."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = fsdp1(build_model())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    with Tracer(model, optimizer=optimizer) as tracer:
        loss_of(model, global_batch().chunk(world)[rank]).backward()
        optimizer.step()
        optimizer.zero_grad()
    out = {"rank": rank, "lora": lora_rows(tracer.result(), ("update_ratio_A", "update_ratio_B", "optimizer_steps"))}
    # use_orig_params=False: a unit's parameters must agree on requires_grad, so each LoRA Linear is a unit
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy
    lora_units = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: isinstance(m, torch.nn.Linear)
                                   and m.weight.requires_grad)
    flat = fsdp1(build_model(), use_orig_params=False, units=lora_units)
    try:
        Tracer(flat).__enter__()
    except Exception as e:  # noqa: BLE001 - what the user would read
        out["refused"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, f"fsdp1_step-{rank}.json"), "w") as f:
        json.dump(out, f)


def lora_rows(run_record: dict, extra: tuple = ()) -> list:
    return [{k: r[k] for k in ("path", "adapter", "status", "grad_norm_A", "grad_norm_B", *extra)}
            for r in run_record["lora"]]


def fsdp_step(out_dir: str) -> None:
    """FSDP2 with an AdamW step inside the traced block (the optimizer watched): gradient norms and update
    ratios from sharded parameters, every rank on its half of the batch."""
    from torch.distributed.fsdp import fully_shard
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    with Tracer(model, optimizer=optimizer) as tracer:
        loss_of(model, global_batch().chunk(world)[rank]).backward()
        optimizer.step()
        optimizer.zero_grad()
    run_record = tracer.result()
    out = {"rank": rank, "lora": [{k: r[k] for k in ("path", "adapter", "status", "grad_norm_A", "grad_norm_B",
                                                      "update_ratio_A", "update_ratio_B", "optimizer_steps")}
                                  for r in run_record["lora"]]}
    with open(os.path.join(out_dir, f"fsdp_step-{rank}.json"), "w") as f:
        json.dump(out, f)


LR = 1e-3


def trainer(out_dir: str) -> None:
    """The HF Trainer under torchrun (DDP through accelerate) with TracerCallback: one merged report, from
    rank 0 alone."""
    from transformers import Trainer, TrainingArguments

    from tracer.api.callback import TracerCallback

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = global_batch()[i % 4]
            return {"input_ids": ids, "labels": ids}

    callback = TracerCallback(steps=(1,), output_dir=os.path.join(out_dir, "trainer-traces"))
    args = TrainingArguments(output_dir=os.path.join(out_dir, "trainer"), per_device_train_batch_size=2,
                             max_steps=2, learning_rate=LR, report_to=[], use_cpu=True, ddp_backend="gloo",
                             save_strategy="no", logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=build_model(), args=args, train_dataset=Batches(), callbacks=[callback]).train()
    with open(os.path.join(out_dir, f"trainer-{dist.get_rank()}.json"), "w") as f:
        json.dump({"rank": dist.get_rank(), "has_merged": "merged" in callback.results.get(1, {}),
                   "traced_rank": callback.results.get(1, {}).get("rank")}, f)


def zero(stage: int, out_dir: str) -> None:
    """DeepSpeed ZeRO-1/2/3 (CPU, gloo), the LM head also in modules_to_save: under ZeRO-3 parameters are
    empty outside their module's forward; under every stage .grad is None after engine.backward (the reduced
    gradient sits in DeepSpeed's partitioned buffers). The norms come through DeepSpeed's safe_get_full_grad."""
    import deepspeed
    rank, world = dist.get_rank(), dist.get_world_size()
    deepspeed.init_distributed(dist_backend="gloo")  # the process group exists: DeepSpeed takes it
    model = build_model(modules_to_save=["lm_head"])
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    with Tracer(engine.module) as tracer:
        engine.backward(loss_of(engine, global_batch().chunk(world)[rank]))
    run_record = tracer.result()
    lora_b = [p for n, p in engine.module.named_parameters() if "lora_B" in n]
    out = {"rank": rank, "lora": lora_rows(run_record), "saved_modules": run_record["saved_modules"],
           "empty_outside_forward": all(p.numel() == 0 for p in lora_b),
           "grad_is_none": all(p.grad is None for p in lora_b)}
    engine.destroy()
    with open(os.path.join(out_dir, f"zero{stage}-{rank}.json"), "w") as f:
        json.dump(out, f)


MODES = {"fsdp_step": fsdp_step, "fsdp1_step": fsdp1_step, "trainer": trainer,
         **{f"zero{stage}": functools.partial(zero, stage) for stage in (1, 2, 3)}}


def main() -> None:
    dist.init_process_group("gloo")
    try:
        for mode in sys.argv[2:]:
            if mode in MODES:
                MODES[mode](sys.argv[1])
            else:
                run(mode, sys.argv[1])
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
