"""A traced pass's facts judged: which ``modules_to_save`` copies trained, every LoRA layer's status, the
notes no single layer carries. Reads ``.grad``, so it runs after backward and before ``zero_grad``."""
from __future__ import annotations

from dataclasses import replace

from ..collect.collected import Collected, autograd_off, grads_arrived
from .lora_status import diagnose, lora_layers, saved_modules, summarize
from .run_notes import run_notes


def judged(facts, collected: Collected, model=None, component_of: dict | None = None):
    """``facts`` (``rollup.calls.RunFacts``) with the diagnosis of ``model``'s LoRA layers and the run's notes."""
    if model is not None:
        saved = saved_modules(model, facts.modules)
        if saved:
            facts = replace(facts, saved_modules=tuple(saved))
        if lora_layers(model):
            if component_of is None:
                from ..static.discovery import static_report
                component_of = static_report(model).component_of
            lora = diagnose(model, list(facts.modules), list(facts.calls), component_of, steps=collected.steps,
                            labels_masked=collected.labels_all_masked, autograd_off=autograd_off(collected),
                            weights_saved=collected.weights_saved, grads_arrived=grads_arrived(collected))
            facts = replace(facts, lora=tuple(lora), lora_summary=summarize(lora))
    return replace(facts, notes=tuple(run_notes(collected, facts, model, component_of)))
