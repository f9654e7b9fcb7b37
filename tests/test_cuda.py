"""The CUDA paths (events, allocator memory per module, peak per strategy). Skipped without a GPU; run on
a lent device with bench/gpu_check.sh."""
import pytest
import torch
from peft import LoraConfig, get_peft_model

from tracer.api.tracer import Tracer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_tiny():
    from helpers import tiny_inputs
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).cuda()
    batch = {k: v.cuda() for k, v in inputs.full.items()}
    return model, batch


def test_memory_per_module_on_cuda(cuda_tiny):
    model, batch = cuda_tiny
    with Tracer(model) as tr:
        model(**batch).loss.backward()
    mods = {m["path"]: m for m in tr.result()["modules"]}
    fc1 = mods["base_model.model.model.audio_tower.layers.0.fc1"]
    # fc1's output (1x1500x128 float32 = 768,000 bytes) is allocated while it runs and lives after it
    assert fc1["memory_delta_bytes"] >= 1500 * 128 * 4
    assert fc1["peak_bytes"] >= fc1["memory_delta_bytes"]
    layer = mods["base_model.model.model.audio_tower.layers.0"]
    assert layer["peak_bytes"] >= fc1["peak_bytes"]  # a parent's peak covers its children's
    model.zero_grad(set_to_none=True)


def test_memory_off_leaves_fields_empty(cuda_tiny):
    model, batch = cuda_tiny
    with Tracer(model, memory=False) as tr:
        model(**batch).loss.backward()
    mods = {m["path"]: m for m in tr.result()["modules"]}
    assert mods["base_model.model.model.audio_tower.layers.0.fc1"]["peak_bytes"] is None
    model.zero_grad(set_to_none=True)


def test_event_times_nest_and_sum(cuda_tiny):
    model, batch = cuda_tiny
    with Tracer(model) as tr:
        model(**batch).loss.backward()
    run = tr.result()
    mods = {m["path"]: m for m in run["modules"]}
    assert run["clock"] == "cuda events"
    enc, layer = mods["base_model.model.model.audio_tower"], mods["base_model.model.model.audio_tower.layers.0"]
    assert 0 < layer["forward_ms"] <= enc["forward_ms"]
    self_sum = sum(m["self_forward_ms"] for m in run["modules"] if m["executed"])
    assert self_sum == pytest.approx(run["total_forward_ms"], rel=1e-3)
    model.zero_grad(set_to_none=True)


def test_lora_grad_norms_match_autograd_on_cuda(cuda_tiny):
    model, batch = cuda_tiny
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    plain = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with Tracer(model):
        model(**batch).loss.backward()
    traced = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == traced.keys() and plain
    for name in plain:
        assert traced[name] == pytest.approx(plain[name], rel=1e-4, abs=1e-7)
    model.zero_grad(set_to_none=True)


def test_strategy_peak_counts_gradients_of_a_fully_trainable_model():
    """Every parameter trainable: the peak of full_forward must include the gradients (about the size of the
    weights), not only what is allocated on top of the previous pass's gradients."""
    from helpers import tiny_inputs

    from tracer.static.discovery import static_report
    from tracer.run.strategies import RunOptions, run_strategy
    loaded, inputs = tiny_inputs()
    model = loaded.model.cuda()
    for p in model.parameters():
        p.requires_grad_(True)
    report = static_report(model)
    run = run_strategy("full_forward", model, report, inputs, RunOptions(repeats=1, warmup=1), torch.device("cuda"))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert run.peak_memory_bytes >= weights



def test_strategy_memory_comes_from_its_own_pass(cuda_tiny):
    """The timed traced pass reads no allocator stats; module and call rows still carry memory."""
    from helpers import tiny_inputs

    from tracer.static.discovery import static_report
    from tracer.run.strategies import RunOptions, run_strategy
    model, _ = cuda_tiny
    _, inputs = tiny_inputs()
    report = static_report(model)
    run = run_strategy("full_forward", model, report, inputs, RunOptions(repeats=1, warmup=0, keep_calls=True),
                       torch.device("cuda"))
    fc1 = run.module("base_model.model.model.audio_tower.layers.0.fc1")
    assert fc1.memory_delta_bytes >= 1500 * 128 * 4 and fc1.peak_bytes >= fc1.memory_delta_bytes
    assert all(c.peak_bytes is not None for c in run.calls)


def test_trace_clip_on_cuda_with_a_step_and_the_memory_split(root):
    """The whole pipeline on the GPU: bf16, one AdamW step, allocator peak and tensor split, every LoRA
    layer that runs 'ok'."""
    from tracer import TraceOptions, trace_clip
    report = trace_clip(f"{root}/samples/sample.wav", options=TraceOptions(repeats=1, warmup=0, device="cuda"))
    full = report.runs["full_forward"]
    assert full.ok and full.memory_kind == "cuda max_memory_allocated" and full.peak_memory_bytes > 0
    assert set(full.memory_split) == {"parameters", "activations", "gradients", "temporaries"}
    assert {r.status for r in full.lora} == {"ok"} and full.lora_trajectory
    assert report.model_info["dtype"] == "bfloat16"
