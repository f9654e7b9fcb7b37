"""Tensor memory on CPU: live storage bytes, counted once, split by kind, per module and per strategy."""
import gc

import models
import torch
from peft import LoraConfig, get_peft_model
from helpers import tiny_inputs

from tracer.static.discovery import static_report
from tracer.run.strategies import RunOptions, run_strategy
from tracer.collect.tensor_memory import TensorMemory

CPU = torch.device("cpu")


def test_storages_are_counted_once_and_freed():
    before = torch.randn(50, 20)
    with TensorMemory(CPU) as tm:
        a = torch.ones(1000)
        assert (tm.current, tm.peak) == (4000, 4000)
        views = [a.view(10, 100), a[::2], a.unsqueeze(0)]  # share a's storage
        a.add_(1)  # in place
        before.t()  # a view of a tensor made outside: not ours
        assert tm.current == 4000
        del a, views
        gc.collect()
        assert tm.current == 0
        b = torch.empty(250)
        assert (tm.current, tm.peak) == (1000, 4000)
        del b


def test_gradients_and_activations_are_told_apart():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    x = torch.randn(8, 100)
    with TensorMemory(CPU, net) as tm:
        out = net(x).square().sum()
        after_forward = tm.live_by_kind()
        out.backward()
        del out
    grads = sum(p.grad.numel() * p.grad.element_size() for p in net.parameters())
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    assert tm.parameters == weights
    assert tm.current == grads  # all that is left: the gradients
    split = tm.peak_by_kind
    assert sum(split.values()) == tm.peak
    # saved for backward: the ReLU's output (8x200, also the last Linear's input) and that Linear's output
    assert after_forward["activations"] == 8 * 200 * 4 + 8 * 10 * 4
    assert after_forward["gradients"] == 0 and tm.live_by_kind()["gradients"] == grads


def test_frozen_lora_base_weights_are_fine():
    """PyTorch's own MemTracker fails here (it hooks every parameter, frozen ones too)."""
    loaded, inputs = tiny_inputs()
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"]))
    with TensorMemory(CPU, model) as tm:
        model(**inputs.full).loss.backward()
    lora_grads = sum(p.grad.numel() * 4 for p in model.parameters() if p.grad is not None)
    assert lora_grads > 0 and tm.current >= lora_grads
    assert tm.parameters == sum(p.numel() * 4 for p in model.parameters())  # lm_head is not tied here


def test_strategy_memory_on_cpu_is_tensor_bytes_and_repeatable():
    loaded, inputs = tiny_inputs()
    model = loaded.model
    report = static_report(model)
    runs = [run_strategy("audio_tower", model, report, inputs, RunOptions(repeats=1, warmup=0), CPU) for _ in range(2)]
    first, second = runs
    assert first.memory_kind == "live tensor bytes"
    assert first.peak_memory_bytes == second.peak_memory_bytes > 1500 * 64 * 4
    split = first.memory_split
    assert split["activations"] + split["gradients"] + split["temporaries"] == first.peak_memory_bytes
    assert split["parameters"] == sum(p.numel() * 4 for p in model.parameters())
    fc1 = first.module("model.audio_tower.layers.0.fc1")
    assert fc1.memory_delta_bytes >= 1500 * 128 * 4  # its output lives on after it returns
    assert fc1.peak_bytes >= fc1.memory_delta_bytes
    assert first.module("model.audio_tower").peak_bytes >= fc1.peak_bytes


def test_builtin_model_is_unchanged_by_tracking():
    model = models.builtin_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with TensorMemory(CPU, model):
        model.model.audio_tower(torch.zeros(1, 128, 3000))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters() if p._post_accumulate_grad_hooks)


def test_builtin_strategies_memory_is_saved_bytes_plus_weights_and_every_module_has_it(root):
    """Issue 16's bar: full_forward peaks above audio_tower, each of the order of what autograd saves plus
    the weights, and every executed module carries a memory figure on CPU."""
    from tracer import TraceOptions, trace_clip
    report = trace_clip(f"{root}/samples/sample.wav", options=TraceOptions(repeats=1, warmup=0))
    tower, full = report.runs["audio_tower"], report.runs["full_forward"]
    assert full.peak_memory_bytes > tower.peak_memory_bytes
    for run in (tower, full):
        saved = sum(m.saved_bytes for m in run.modules)
        order = saved + run.memory_split["parameters"]
        assert 0.5 * order < run.peak_memory_bytes < 2 * order
        executed = [m for m in run.modules if m.executed]
        assert all(m.memory_delta_bytes is not None and m.peak_bytes is not None for m in executed)


def test_a_bare_cpu_device_compares_equal_to_tensors_devices():
    # torch.device("cuda") != torch.device("cuda:0"): the tracker normalises the device it is given
    tm = TensorMemory("cpu")
    assert torch.ones(1).device == tm.device
