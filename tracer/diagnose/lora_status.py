"""Diagnosis: for every LoRA layer x adapter, did a gradient flow, and if not, why and how to fix it.

Reads what the traced pass saw (executed? grad mode? gradient at the output?) and the parameters'
``.grad`` after backward, which is exactly what autograd computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..collect.collected import AutogradOff
from ..collect.sharding import grad_norms, tensor_facts
from ..lora.layers import lora_layers, lora_params  # noqa: F401 - lora_layers re-exported
from ..module_paths import collapse_paths
from ..records.diagnosis import DeadGroup, LayerKey, SavedModule, TrajectoryFlag
from ..records.run import LoraLayerRecord
from ..records.vocab import strip_peft_prefix
from ..load.quantization import is_quantized
from ..records.vocab import LORA_STATUSES, LoraStatus, SavedStatus
from .verdict import LEARNING, by_design

STATUSES = LORA_STATUSES


def diagnose(model, modules: list, calls: list, component_of: dict, steps: dict | None = None,
             labels_masked: bool = False, autograd_off: dict | None = None,
             weights_saved: frozenset = frozenset(), grads_arrived: frozenset | None = None) -> list[LoraLayerRecord]:
    """One record per LoRA layer x adapter (``modules``: the run's ModuleRecords), with a status from
    ``STATUSES``, a cause and a hint. ``steps``: what an optimizer did (collect.optimizer_watch.StepWatcher.facts()), when one
    was watched; its gradient norms stand in for ``.grad`` that ``zero_grad`` has cleared since.
    ``autograd_off``: path -> collect.collected.AutogradOff, where and how autograd was switched off above a module;
    ``weights_saved``: LoRA layers whose base weight autograd saved for backward (read by someone);
    ``grads_arrived``: paths a gradient reached at an output (None: those with an output-gradient norm)."""
    records = {m.path: m for m in modules}
    grad_any = {}
    for call in calls:
        grad_any[call.path] = grad_any.get(call.path, False) or call.grad_enabled
    ran = {component_of.get(m.path, "other") for m in modules if m.executed}
    kbit = _kbit_facts(model)
    layers = []
    for path, layer in lora_layers(model):
        for adapter, a, b in lora_params(layer):
            magnitude = getattr(layer, "lora_magnitude_vector", None)
            layers.append((path, layer, adapter, a, b,
                           magnitude[adapter].weight if magnitude is not None and adapter in magnitude else None))
    # every gradient fact at once: under FSDP2 the shards' sums meet in one all-reduce
    facts = tensor_facts([(a, b, mag) for _, _, _, a, b, mag in layers])
    out = []
    for (path, layer, adapter, a, b, mag), (norms, b_zero, finite) in zip(layers, facts):
        rec = records.get(path)
        branch = records.get(f"{path}.lora_A.{adapter}")
        step = steps.get((path, adapter)) if steps is not None else None
        if step is not None and norms[0] is None and norms[1] is None:
            norms = (step.grad_norm_A, step.grad_norm_B, norms[2])
        component = component_of.get(path, "other")
        if rec is None or not rec.executed:
            status, cause, hint = _not_executed(path, component, path in weights_saved, ran)
        else:
            status, cause, hint = _classify(layer, adapter, rec, branch, grad_any.get(path),
                                            a, b, norms, b_zero, finite,
                                            (autograd_off or {}).get(path) or AutogradOff(path, None, "no_grad"),
                                            component, kbit)
        if step is not None or labels_masked:
            status, cause, hint = _after_gradients(status, cause, hint, step, steps is not None, labels_masked)
        extra = {} if step is None else dict(
            in_optimizer=step.in_optimizer, lr=step.lr, optimizer_steps=step.steps, stepped=step.stepped,
            update_ratio_A=step.update_ratio_A, update_ratio_B=step.update_ratio_B)
        out.append(LoraLayerRecord(
            path=path, adapter=adapter, component=component,
            executed=bool(rec and rec.executed), grad_enabled=rec.grad_enabled if rec else None,
            grad_arrived=rec is not None and (rec.grad_output_norm is not None if grads_arrived is None
                                              else path in grads_arrived), grad_norm_A=norms[0], grad_norm_B=norms[1],
            grad_norm_magnitude=norms[2], lora_B_zero=b_zero, status=LoraStatus(status), cause=cause,
            hint=hint, **extra))
    return out


def _after_gradients(status, cause, hint, step, watched: bool, labels_masked: bool):
    """What the loss and the optimizer add once the layer ran and its branch was live."""
    if labels_masked and status in (LoraStatus.ZERO_GRAD, LoraStatus.OFF_LOSS_PATH, LoraStatus.NONFINITE):
        return ("loss_masked", "every label is -100: the loss has no target token (NaN or 0), so no gradient "
                               "means anything", "check the label masking: truncation may have cut every "
                                                 "answer token, or the template masks the answer too")
    if not watched or status not in LEARNING:
        return status, cause, hint
    if not step.in_optimizer:
        return ("not_in_optimizer", "gradients arrive but the LoRA parameters are in no param group of the "
                                    "optimizer", "build the optimizer after get_peft_model(), from "
                                                 "model.parameters() (or the trainable ones)")
    if step.steps == 0:
        return ("not_updated", "the optimizer never stepped inside the block (a loss scaler skips the step "
                               "when gradients overflow; or step() was not called)",
                "check the scaler's scale and for inf/NaN gradients; call optimizer.step()")
    if not step.stepped:
        why = "its learning rate is 0" if not step.lr else "the step left the weights unchanged"
        return ("not_updated", f"in the optimizer and gradients arrive, but {why}",
                "check the scheduler (a warm-up from 0?) and the param group's lr")
    if step.magnitude_in_optimizer is False:
        return ("not_updated", "lora_A/lora_B learn, but the DoRA magnitude vector (lora_magnitude_vector) is in "
                               "no param group of the optimizer: the magnitude never moves",
                "build the optimizer from every trainable parameter (the magnitude is one), e.g. "
                "[p for p in model.parameters() if p.requires_grad]")
    if step.magnitude_stepped is False:
        why = "its learning rate is 0" if not step.magnitude_lr else "the step left it unchanged"
        return ("not_updated", f"lora_A/lora_B move, but the DoRA magnitude vector does not: {why}",
                "give the magnitude's param group a learning rate above 0")
    # a step was taken: lora_B has left zero, so a zero lora_A gradient no longer means a fresh adapter
    return ("ok", "gradients flow and the step moved the weights", "")


def _not_executed(path: str, component: str, weight_saved: bool, ran: set):
    """A layer that never ran: read around (a fused loss), skipped by the forward, or outside what ran."""
    name = path.rpartition(".")[2]
    if weight_saved:
        return ("bypassed", f"{name} never ran, but its base weight took part in the backward graph: something "
                            f"read {name}.weight directly, past the LoRA layer (a fused linear + cross-entropy loss: "
                            "Liger, Unsloth, cut-cross-entropy; trl#4612)",
                f"turn the fused loss off for this run (e.g. use_liger_kernel=False), or leave {name} out of "
                "target_modules")
    if component == "head" and "language_model" in ran:
        return ("not_executed", f"the language model ran but {name} did not: the loss was computed without calling "
                                f"it (a fused linear + cross-entropy loss reads {name}.weight directly: Liger, "
                                "Unsloth, cut-cross-entropy; or logits made by hand)",
                f"turn the fused loss off for this run, or leave {name} out of target_modules")
    return ("not_executed", "the layer never ran in this pass",
            "target only modules the strategy runs (see the suggested target_modules)")


@dataclass(frozen=True)
class _KbitFacts:
    """What tells prepare_model_for_kbit_training's doing apart (CAUSES.md row 7)."""
    quantized: bool  # a 4-/8-bit bitsandbytes base
    any_trainable: bool  # anything at all left with requires_grad
    inference_mode: frozenset  # adapters peft loaded frozen (PeftModel.from_pretrained without is_trainable)


def _kbit_facts(model) -> _KbitFacts:
    configs = getattr(model, "peft_config", None)
    return _KbitFacts(is_quantized(model), any(p.requires_grad for p in model.parameters()),
                      frozenset(name for name, c in (configs if isinstance(configs, dict) else {}).items()
                                if getattr(c, "inference_mode", False)))


def _frozen(adapter: str, kbit: _KbitFacts | None = None):
    if kbit is not None and kbit.quantized and not kbit.any_trainable and adapter not in kbit.inference_mode:
        # prepare_model_for_kbit_training sets requires_grad=False on every parameter it finds: run after
        # get_peft_model it finds the adapters too; a freezing loop would usually spare something
        return ("frozen", f"every parameter is frozen, adapter '{adapter}' included, on a 4-/8-bit base: what "
                          "prepare_model_for_kbit_training does when it runs after get_peft_model (it sets "
                          "requires_grad=False on every parameter it finds; trl PR#4081)",
                "call prepare_model_for_kbit_training(base) first, then get_peft_model(base, config); or after it "
                "set requires_grad_(True) on the parameters whose names contain 'lora_'")
    return ("frozen", f"lora_A/lora_B of adapter '{adapter}' have requires_grad=False: something froze them after "
                      "get_peft_model (a freezing loop, PeftModel.from_pretrained without is_trainable=True, "
                      "prepare_model_for_kbit_training applied after the adapter)",
            "set requires_grad_(True) on the LoRA parameters (names with 'lora_') after any freezing loop; load "
            "adapters with PeftModel.from_pretrained(..., is_trainable=True); call prepare_model_for_kbit_training "
            "before get_peft_model")


def _no_grad(off: AutogradOff, component: str, quantized: bool = False):
    """no_grad_mode, with where autograd was switched off (collect.collected.AutogradOff) and how."""
    boundary, caller = _shown(off.boundary), _shown(off.caller)
    if off.how.startswith("function:"):
        function = off.how.partition(":")[2]
        reach = ("enable_input_require_grads() hooks the language model's input embeddings only: make this "
                 f"component's input need grad (a forward hook on {component}'s first layer that calls "
                 "output.requires_grad_(True))" if component != "language_model"
                 else "model.enable_input_require_grads() before training")
        where = f"{caller}'s forward" if off.caller is not None else "the caller's code"
        # a 4-/8-bit base: get_peft_model adds no input-grad hook there (it leaves that to
        # prepare_model_for_kbit_training, whose own checkpointing is reentrant)
        kbit = ("; on this 4-/8-bit base: prepare_model_for_kbit_training(base, gradient_checkpointing_kwargs="
                "{'use_reentrant': False}) before get_peft_model (get_peft_model adds no input-grad hook to a "
                "quantized base)") if quantized else ""
        return ("no_grad_mode", f"a reentrant checkpoint ({function}) in {where} ran {boundary} with inputs that "
                                "need no grad: the block runs under no_grad and is never replayed (peft#1142)",
                f"non-reentrant checkpointing (gradient_checkpointing_kwargs={{'use_reentrant': False}}, or "
                f"use_reentrant=False in your own torch.utils.checkpoint call), or {reach}{kbit}")
    how = "torch.inference_mode()" if off.how == "inference_mode" else "torch.no_grad()"
    if off.caller is None:
        return ("no_grad_mode", f"it ran with autograd off: {boundary} was called under {how} by the caller's "
                                "code (the training step)",
                f"call {boundary} with autograd enabled (no {how} around it); to keep it fixed, freeze its "
                "parameters instead")
    return ("no_grad_mode", f"it ran with autograd off: {caller}'s forward switched autograd off ({how}, e.g. a "
                            f"@torch.no_grad decorator) before calling {boundary} (LLaVA#1537)",
            f"remove the {how} from {caller}'s forward; to keep what it runs fixed, freeze those parameters "
            "instead of cutting autograd")


def _shown(path: str | None) -> str | None:
    return "the root module" if path == "" else strip_peft_prefix(path) if path is not None else None


def _classify(layer, adapter, rec, branch, grad_any, a, b, norms, b_zero: bool, finite: bool,
              off: AutogradOff, component: str, kbit: _KbitFacts | None = None):
    norm_a, norm_b, norm_m = norms
    if not (a.requires_grad or b.requires_grad):
        return _frozen(adapter, kbit)
    if adapter in layer.lora_A and (branch is None or not branch.executed):  # an Embedding's has no module
        if getattr(layer, "merged", False):
            return ("disabled", "the adapter is merged into the base weights, so the LoRA branch did not run",
                    "call unmerge_adapter() before training")
        if adapter not in layer.active_adapters:
            return ("disabled", f"adapter '{adapter}' is not active (active: {', '.join(layer.active_adapters)})",
                    f"model.set_adapter('{adapter}')")
        return ("disabled", "the LoRA branch did not run: adapters were disabled during the pass "
                            "(disable_adapter() context or disable_adapters=True)",
                "run the training step outside disable_adapter()")
    if not grad_any:
        return _no_grad(off, component, bool(kbit and kbit.quantized))
    present = [n for n in (norm_a, norm_b, norm_m) if n is not None]
    if any(not math.isfinite(n) for n in present) or not finite:
        return ("nonfinite", "NaN or Inf in its gradients",
                "look for NaN/Inf in the loss or inputs; lower the learning rate or use fp32/bf16 with loss scaling")
    if norm_a is None and norm_b is None:
        return ("off_loss_path", "it ran with autograd on, but the loss does not depend on its output "
                                 "(detached downstream or an unused output)",
                "find the .detach()/no_grad or the unused hidden state between this layer and the loss")
    if b_zero and norm_a == 0.0 and (norm_b or 0.0) > 0.0:
        return ("zero_init", "lora_B is all zeros (fresh adapter), so lora_A's gradient is exactly 0: expected "
                             "before the first optimizer step; lora_B does get a gradient",
                "nothing to fix: after one optimizer step lora_A gets gradients too")
    if (norm_a or 0.0) == 0.0 and (norm_b or 0.0) == 0.0:
        return ("zero_grad", "a gradient arrived and is exactly zero (zero-weighted loss, masked labels, "
                             "or a dead activation)",
                "check the loss weighting and that the labels are not all -100")
    return ("ok", "gradients flow", "")


def summarize(records: list[LoraLayerRecord]) -> dict:
    """``{component: {status: count}}``."""
    summary: dict = {}
    for r in records:
        per = summary.setdefault(r.component, {})
        per[r.status] = per.get(r.status, 0) + 1
    return summary


def dead_groups(records: list[LoraLayerRecord], strategy: str | None = None) -> list[DeadGroup]:
    """Layers without a gradient, grouped: ``…layers.0-31.self_attn.{q,k,v,o}_proj`` (128). ``by_design``:
    the strategy never runs them (the LM under audio_tower), a fact of the strategy, not a fault."""
    by_status: dict = {}
    for r in records:
        if r.status not in LEARNING:
            by_status.setdefault((r.status, by_design(strategy, r)), []).append(r)
    return [DeadGroup(pattern, status, count, rs[0].cause, rs[0].hint, design)
            for (status, design), rs in by_status.items()
            for pattern, count in collapse_paths(dict.fromkeys(r.path for r in rs))]


def dead_groups_of(run, strategy: str | None = None) -> list[DeadGroup]:
    """dead_groups() of a RunRecord's LoRA layers (``strategy``: its name, to tell by-design ones)."""
    return dead_groups(list(run.lora or ()), strategy)


def trajectory_flags(trajectory: dict | None) -> list[TrajectoryFlag]:
    """Layers whose course over the steps says something: ``dies`` (a gradient norm falls to 0 after being
    non-zero), ``explodes`` (non-finite, or more than 1000x its first non-zero value), ``never_moves`` (no
    step changed it). ``trajectory``: RunRecord.lora_trajectory (LayerKey -> step points)."""
    flags = []
    for key, points in (trajectory or {}).items():
        path, adapter = key.path, key.adapter
        for side in ("A", "B"):
            norms = [p[f"grad_norm_{side}"] for p in points if p[f"grad_norm_{side}"] is not None]
            first = next((n for n in norms if n), None)
            if any(not math.isfinite(n) for n in norms) or (first and max(norms) > 1000 * first):
                flags.append(TrajectoryFlag(path, adapter, "explodes", side))
            elif first and norms[-1] == 0.0:
                flags.append(TrajectoryFlag(path, adapter, "dies", side))
        ratios = [p[r] for p in points for r in ("update_ratio_A", "update_ratio_B") if p[r] is not None]
        arrived = any(p["grad_norm_A"] is not None or p["grad_norm_B"] is not None for p in points)
        if arrived and not any(ratios):  # (a layer no gradient reached is reported as such already)
            flags.append(TrajectoryFlag(path, adapter, "never_moves", None))
    return flags


def saved_modules(model, modules: list) -> list[SavedModule]:
    """PEFT's ``modules_to_save``: a trainable copy beside the frozen original, one per adapter. Per copy:
    did it run (and not the original), is it trainable, did a gradient reach it. Statuses: ``ok``,
    ``not_executed``, ``original_ran`` (the frozen original ran instead: adapters disabled or another
    active), ``frozen``, ``no_gradient``."""
    records = {m.path: m for m in modules}
    copies = [(path, adapter, list(copy.parameters())) for path, wrapper in model.named_modules()
              if getattr(wrapper, "original_module", None) is not None
              for adapter, copy in (getattr(wrapper, "modules_to_save", None) or {}).items()]
    # every copy's norm at once: a collective when they are shards or DeepSpeed's (ZeRO's .grad is None)
    norms = grad_norms([params for _, _, params in copies])
    out = []
    for (path, adapter, params), norm in zip(copies, norms):
        ran = bool(records.get(f"{path}.modules_to_save.{adapter}") and
                   records[f"{path}.modules_to_save.{adapter}"].executed)
        original_ran = bool(records.get(f"{path}.original_module") and records[f"{path}.original_module"].executed)
        if not ran and original_ran:
            status, cause, hint = ("original_ran", "the frozen original ran, not the trained copy",
                                   f"enable the adapters / set_adapter('{adapter}') for the training step")
        elif not ran:
            status, cause, hint = ("not_executed", "the module never ran in this pass",
                                   "only list modules the strategy runs in modules_to_save")
        elif not any(p.requires_grad for p in params):
            status, cause, hint = ("frozen", "the copy's parameters have requires_grad=False",
                                   "set requires_grad_(True) on modules_to_save copies")
        elif not norm:
            status, cause, hint = ("no_gradient", "it ran but no (non-zero) gradient reached it",
                                   "check that the loss depends on its output")
        else:
            status, cause, hint = "ok", "gradients flow", ""
        out.append(SavedModule(path, adapter, ran, original_ran, norm, SavedStatus(status), cause, hint))
    return out


def trajectories_by_component(run) -> dict:
    """A RunRecord's LoRA trajectories grouped by component, leaving out layers no gradient reached (their
    status already says why): component -> [per-layer lists of step points]."""
    component_of = {LayerKey(r.path, r.adapter): r.component for r in run.lora or ()}
    groups: dict = {}
    for key, points in (run.lora_trajectory or {}).items():
        if any(p["grad_norm_A"] is not None or p["grad_norm_B"] is not None for p in points):
            groups.setdefault(component_of.get(key, "other"), []).append(points)
    return groups


def step_median(layers: list, step_index: int, field: str) -> float | None:
    """The median of ``field`` over layers' trajectories at one step (layers missing it left out)."""
    import statistics
    values = [points[step_index][field] for points in layers
              if step_index < len(points) and points[step_index][field] is not None]
    return statistics.median(values) if values else None
