"""One-line notes on a traced pass that no single LoRA layer's status carries: a compiled model traced
eagerly, samples whose labels are all -100, trainable weights in half precision, a component that ran with
nothing in it to train, what prepare_model_for_kbit_training left on a model (CAUSES.md row 7). ``Tracer.result()["notes"]``; printed under the LoRA diagnosis."""
from __future__ import annotations

import torch

from ..records.vocab import strip_peft_prefix
from ..load.quantization import checkpointing, is_quantized, upcast_base

_MAX_SAMPLE_NOTES = 5  # one note per fully masked sample, up to this many
_ADAPTABLE = ("audio_encoder", "projector", "language_model")  # components users expect a fine-tune to adapt


def run_notes(collected, facts, model=None, component_of: dict | None = None) -> list[str]:
    """``collected``: collect.collected.Collected; ``facts``: its rollup.calls.RunFacts (with the LoRA diagnosis when any)."""
    notes = []
    if collected.compiled:
        notes.append("the model is compiled (torch.compile): it was traced eagerly (compiler stance force_eager "
                     "inside the block), so its times are eager times, not the compiled model's; statuses are "
                     "the eager model's")
    notes += _masked_sample_notes(facts.labels)
    if model is not None:
        notes += _half_precision_notes(model)
        notes += _kbit_notes(model)
        if facts.lora and component_of is not None:
            notes += _untrained_component_notes(model, facts, component_of)
    return notes


def _masked_sample_notes(labels: dict | None) -> list[str]:
    if not labels or not labels["masked_samples"]:
        return []
    total, masked = len(labels["supervised_tokens"]), labels["masked_samples"]
    notes = [f"sample {i} of {total} has every label -100: it supervises nothing (completion-only masking "
             "plus truncation cut its answer, or the response template did not match: trl#6668); drop such "
             "samples or raise max_length" for i in masked[:_MAX_SAMPLE_NOTES]]
    if len(masked) > _MAX_SAMPLE_NOTES:
        notes.append(f"... and {len(masked) - _MAX_SAMPLE_NOTES} more samples with every label -100")
    return notes


def _half_precision_notes(model) -> list[str]:
    by_dtype: dict = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            by_dtype.setdefault(param.dtype, []).append(name)
    notes = []
    for dtype, names in by_dtype.items():
        which = f"{len(names)} trainable parameter tensor{'s' if len(names) > 1 else ''} in " \
                f"{str(dtype).replace('torch.', '')} (e.g. {strip_peft_prefix(names[0])})"
        if dtype == torch.float16:
            notes.append(f"{which}: torch's GradScaler refuses to unscale them ('Attempting to unscale FP16 "
                         "gradients') and fp16 updates underflow (peft troubleshooting, peft#236); keep trainable "
                         "parameters in float32 (peft's autocast_adapter_dtype=True, "
                         "peft.helpers.cast_mixed_precision_params) and run the forward under autocast")
        else:
            notes.append(f"{which}: an update smaller than about 1/256 of a weight rounds away (8-bit mantissa), "
                         "so small learning rates do nothing; keep trainable parameters in float32 and run the "
                         "forward under autocast")
    return notes


def _untrained_component_notes(model, facts, component_of: dict) -> list[str]:
    """A component that ran with no LoRA layer and nothing trainable will not adapt (ms-swift#1747: a
    Qwen2-Audio LoRA trains the LLM alone by default; LLaMA-Factory#5996)."""
    ran = {component_of.get(m.path, "other") for m in facts.modules if m.executed}
    with_lora = {r.component for r in facts.lora}
    trainable, linears, roots = set(), {}, {}
    for path, module in model.named_modules():
        component = component_of.get(path, "other")
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            trainable.add(component)
        if isinstance(module, torch.nn.Linear) and ".lora_" not in path:
            linears.setdefault(component, dict.fromkeys([]))[path.rpartition(".")[2]] = None
        if component not in roots or path.count(".") < roots[component].count("."):
            roots[component] = path
    notes = []
    for component in _ADAPTABLE:
        if component in ran and component not in with_lora and component not in trainable:
            names = list(linears.get(component, {}))
            cover = (f"; to adapt it add {', '.join(names)} to target_modules (a regex on "
                     f"{strip_peft_prefix(roots[component])} keeps them to it)") if names else ""
            notes.append(f"{component} ran but has no LoRA layer and no trainable parameter: it will not adapt "
                         f"(ms-swift#1747){cover}")
    return notes


def _kbit_notes(model) -> list[str]:
    """prepare_model_for_kbit_training's marks: on a 4-/8-bit base the reentrant checkpointing it switches on; on
    a full-precision one, its float32 upcast of the frozen weights (trl PR#4081, peft PR#760)."""
    notes = []
    if is_quantized(model) and checkpointing(model) == "reentrant":
        notes.append("gradient checkpointing is on and reentrant on this 4-/8-bit base (what "
                     "prepare_model_for_kbit_training switches on by default: it passes no use_reentrant): the "
                     "backward reruns each checkpointed block, and a block whose inputs need no grad runs under "
                     "no_grad (its LoRA layers: no_grad_mode); prepare_model_for_kbit_training(model, "
                     "gradient_checkpointing_kwargs={'use_reentrant': False}) takes the no_grad risk away, "
                     "use_gradient_checkpointing=False the recompute too (for more memory)")
    upcast = upcast_base(model)
    if upcast is not None:
        dtype, nbytes = upcast
        notes.append(f"the base is not quantized, yet its frozen weights are float32 ({nbytes / 2**20:.1f} MiB) "
                     f"while its config says {dtype}, an upcast after loading: prepare_model_for_kbit_training "
                     "upcasts every half-precision weight of a base that is not 4-/8-bit (peft PR#760), doubling "
                     "their memory, and switches on no gradient checkpointing there; on a full-precision base "
                     "leave it out (get_peft_model freezes the base itself), or load the base in 4-/8-bit if QLoRA "
                     "was meant")
    return notes
