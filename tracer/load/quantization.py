"""Quantized bases (bitsandbytes 4-bit and 8-bit, as QLoRA loads them): how many values a weight holds, the
bytes it really takes, and per component whether it is quantized, in what format and compute dtype.

Read from the parameters' classes and their quant states by name, so nothing here imports bitsandbytes (a
model without it never has these classes)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

FOUR_BIT = "Params4bit"  # bitsandbytes.nn.Params4bit: two 4-bit values packed in each byte
EIGHT_BIT = "Int8Params"  # bitsandbytes.nn.Int8Params: one int8 value a byte, a float scale per row (SCB)


@dataclass
class ComponentQuantization:
    """One component's weights: ``weight_bytes`` counts every parameter of it (quantized or not) in the bytes it
    takes, quant states (4-bit absmax, 8-bit row scales) included; the rest describe its quantized layers."""
    quantized: bool = False
    formats: list = field(default_factory=list)  # "nf4", "fp4", "int8"; with double quantization "nf4+dq"
    compute_dtype: str | None = None  # what a 4-bit layer dequantizes to for its matmul
    quantized_layers: int = 0
    quantized_values: int = 0  # the values those layers hold (not their packed storage)
    weight_bytes: int = 0


def is_quantized_param(param) -> bool:
    return type(param).__name__ in (FOUR_BIT, EIGHT_BIT)


def values(param) -> int:
    """The values a parameter holds. A quantized Params4bit stores two a byte (numel() is half of them, or
    less with a wider quant storage); its quant state keeps the real shape. What model.num_parameters() counts."""
    if type(param).__name__ != FOUR_BIT:
        return param.numel()
    state = getattr(param, "quant_state", None)
    if state is not None:
        return math.prod(state.shape)
    if getattr(param, "bnb_quantized", False):  # packed, state lost: transformers' own rule
        return param.numel() * 2 * param.element_size()
    return param.numel()  # not quantized yet (it quantizes when moved to its device)


def state_bytes(param) -> int:
    """Bytes a quantized weight keeps beside its packed data: 4-bit absmax (and a nested state's), 8-bit SCB."""
    tensors = []
    state = getattr(param, "quant_state", None)
    if state is not None:
        tensors += [state.absmax, getattr(state, "offset", None)]
        nested = getattr(state, "state2", None)
        if nested is not None:
            tensors += [nested.absmax, nested.code]
    if type(param).__name__ == EIGHT_BIT:
        tensors.append(getattr(param, "SCB", None))
    import torch
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def weight_bytes(param) -> int:
    """What a parameter takes in memory: its data as stored, plus its quant state."""
    return param.numel() * param.element_size() + state_bytes(param)


def is_quantized(model) -> bool:
    """Any 4-bit or 8-bit bitsandbytes weight in the model."""
    return any(is_quantized_param(p) for p in model.parameters())


def layer_format(module) -> str | None:
    """'nf4' / 'fp4' (+dq with double quantization) for a 4-bit layer, 'int8' for an 8-bit one, else None."""
    weight = getattr(module, "weight", None)
    kind = type(weight).__name__
    if kind == EIGHT_BIT:
        return "int8"
    if kind != FOUR_BIT:
        return None
    state = getattr(weight, "quant_state", None)
    name = getattr(state, "quant_type", None) or getattr(weight, "quant_type", None) or "4-bit"
    return f"{name}+dq" if getattr(state, "nested", False) else name


def by_component(model, component_of: dict, components: tuple) -> dict:
    """component -> ComponentQuantization, every weight counted once (tied ones with their first owner)."""
    out = {c: ComponentQuantization() for c in components}
    modules = dict(model.named_modules())
    for path, param in model.named_parameters():
        module_path = path.rpartition(".")[0]
        record = out[component_of.get(module_path, "other")]
        record.weight_bytes += weight_bytes(param)
        fmt = layer_format(modules.get(module_path)) if is_quantized_param(param) else None
        if fmt is None:
            continue
        record.quantized = True
        record.quantized_layers += 1
        record.quantized_values += values(param)
        if fmt not in record.formats:
            record.formats.append(fmt)
        compute = getattr(modules[module_path], "compute_dtype", None)
        if compute is not None and record.compute_dtype is None:
            record.compute_dtype = str(compute).replace("torch.", "")
    return out


def checkpointing(model) -> str | None:
    """'reentrant' / 'non-reentrant' when transformers' gradient checkpointing is on in some module, else None.
    prepare_model_for_kbit_training turns it on with no use_reentrant, which torch takes as reentrant."""
    for module in model.modules():
        function = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and function is not None:
            return "non-reentrant" if getattr(function, "keywords", {}).get("use_reentrant") is False else "reentrant"
    return None


def upcast_base(model) -> tuple | None:
    """(checkpoint dtype, frozen float32 bytes) when the frozen weights of a full-precision model are float32
    though its config says float16/bfloat16: what prepare_model_for_kbit_training does to a base that is not
    4-/8-bit (it upcasts every half-precision weight). None otherwise."""
    import torch
    config = getattr(model, "config", None)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if str(dtype).replace("torch.", "") not in ("float16", "bfloat16") or is_quantized(model):
        return None
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    upcast = sum(p.numel() * p.element_size() for p in frozen if p.dtype == torch.float32)
    total = sum(p.numel() * p.element_size() for p in frozen)
    return (str(dtype).replace("torch.", ""), upcast) if frozen and upcast * 2 > total else None
