"""Where a PEFT model keeps its LoRA layers and their A/B parameters (shared by the diagnosis and the
optimizer watcher; imports nothing heavy)."""
from __future__ import annotations

import sys


def lora_layers(model) -> list[tuple[str, object]]:
    """(path, layer) for every PEFT LoRA layer; empty when peft was never imported (it cannot be in use)."""
    if "peft" not in sys.modules:
        return []
    from peft.tuners.lora import LoraLayer
    return [(path, m) for path, m in model.named_modules() if isinstance(m, LoraLayer)]


def lora_params(layer) -> list[tuple[str, object, object]]:
    """(adapter, A, B) of every adapter of a LoRA layer: Linear/Conv adapters are modules ``lora_A``/``lora_B``,
    an Embedding's are parameters ``lora_embedding_A``/``lora_embedding_B`` (missed by freezing loops and
    tools that look only for the first, unsloth#9331)."""
    out = [(name, layer.lora_A[name].weight, layer.lora_B[name].weight) for name in layer.lora_A.keys()]
    embedding_a = getattr(layer, "lora_embedding_A", None) or {}
    out += [(name, embedding_a[name], layer.lora_embedding_B[name]) for name in embedding_a.keys()]
    return out
