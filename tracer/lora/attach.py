"""LoRA attachment with peft (auto targets, a list, a regex, a LoraConfig file, an existing adapter) and
target suggestions that fit a strategy."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from ..static.discovery import StaticReport
from ..errors import TracerError, first_line, read_json_object
from ..records.diagnosis import BrokenTie
from ..records.run import LoraSetup
from ..records.vocab import strip_peft_prefix

REGEX_CHARS = re.compile(r"[\^$*+?()\[\]|\\]")


def parse_targets(spec: str, report: StaticReport):
    """'auto' -> step 8's names; 'a,b' -> a list (suffix match); anything with regex syntax -> a regex."""
    if spec == "auto":
        if not report.strategy.lora_targets:
            raise TracerError("--lora-targets auto: no Linear layers in what the strategy runs; pass names")
        return list(report.strategy.lora_targets)
    if REGEX_CHARS.search(spec):
        try:
            re.compile(spec)
        except re.error as e:
            raise TracerError(f"--lora-targets {spec!r}: not a valid regex ({e})") from None
        return spec
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise TracerError("--lora-targets: empty list")
    return names


def attach_lora(model, report: StaticReport, *, targets: str = "auto", r: int = 8, config_file: str | None = None,
                adapter_dir: str | None = None):
    """Wrap ``model`` with peft; returns ``(peft_model, setup)`` where setup describes what was attached (with
    an adapter directory, ``setup.notes`` has the faults of its file: see adapter_file.audit_notes).
    The new LoRA weights are drawn with seed 0 (every model, every run: the same init, the same gradient
    norms), from forked generators that leave the caller's random stream where it was."""
    from ..load.seeding import seeded
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    with seeded(devices):
        return _attach(model, report, targets, r, config_file, adapter_dir)


def _attach(model, report: StaticReport, targets: str, r: int, config_file: str | None, adapter_dir: str | None):
    from peft import LoraConfig, PeftModel, get_peft_model
    notes: list[str] = []
    if adapter_dir:
        directory = Path(adapter_dir)
        if not (directory / "adapter_config.json").is_file():
            raise TracerError(f"--adapter {adapter_dir}: no adapter_config.json there")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                wrapped = PeftModel.from_pretrained(model, str(directory), is_trainable=True)
        except Exception as e:  # noqa: BLE001 - peft raises many types for "does not fit this model"
            raise TracerError(f"--adapter {adapter_dir}: does not fit this model ({first_line(e)})") from None
        _check_adapter_loaded(adapter_dir, wrapped, caught)
        from .adapter_file import audit_notes
        notes = audit_notes(adapter_dir, wrapped)  # untrained, missing_weights, no_match: what PEFT keeps quiet
        config = wrapped.peft_config[wrapped.active_adapter]
        source = f"adapter {adapter_dir}"
    else:
        if config_file:
            config = _config_from_file(config_file, LoraConfig)
            source = f"LoraConfig {config_file}"
        else:
            if r < 1:
                raise TracerError(f"--lora-r {r}: must be at least 1")
            config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=parse_targets(targets, report))
            source = "auto targets (step 8)" if targets == "auto" else f"--lora-targets {targets}"
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as e:
            raise TracerError(f"LoRA targets {_show(config.target_modules)} match nothing in this model "
                              f"({first_line(e)}); step 7 lists the names it has") from None
    layers = sum(1 for n, _ in wrapped.named_modules() if n.endswith(".lora_A"))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return wrapped, LoraSetup(source, _show(config.target_modules), config.r, bool(getattr(config, "use_dora", False)),
                              layers, trainable, notes)


def _check_adapter_loaded(adapter_dir: str, wrapped, caught) -> None:
    """peft only warns when an adapter's weights name layers this model lacks: refuse when none loaded. Some
    missing become a ``missing_weights`` note (audit_notes), so peft's warning is not repeated."""
    missing = [w for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        lora_params = [n for n, _ in wrapped.named_parameters() if ".lora_" in n]
        if all(n in str(missing[0].message) for n in lora_params):
            base = wrapped.peft_config[wrapped.active_adapter].auto_mapping or {}
            made_for = f" (made for {base['base_model_class']})" if base.get("base_model_class") else ""
            raise TracerError(f"--adapter {adapter_dir}: does not fit this model: none of its weights match "
                              f"a layer here{made_for}")
    for w in caught:
        if w not in missing:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _config_from_file(path: str, config_cls):
    values = read_json_object(path, "--lora-config")
    values.pop("peft_type", None)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise TracerError(f"--lora-config {path}: not a valid LoraConfig ({first_line(e)})") from None


def requested_gaps(report: StaticReport, target_modules) -> list[dict]:
    """Requested names that match nothing in a component that has Linear layers, with what it uses instead."""
    if isinstance(target_modules, str):
        return []
    names = set(target_modules or [])
    return [{"name": g.name, "component": g.component, "use_instead": g.use_instead}
            for g in report.target_gaps if g.name in names]


def not_targeted(peft_model, component_of: dict) -> list[dict]:
    """Layers with a LoRA layer's name and component that carry none: left out by ``layers_to_transform``,
    ``layers_pattern`` or a regex. A target check, not a dead layer: they were never asked for."""
    import torch.nn as nn

    from .layers import lora_layers
    from ..module_paths import collapse_paths
    wrapped = {path for path, _ in lora_layers(peft_model)}
    kinds = {(path.rpartition(".")[2], component_of.get(path)) for path in wrapped}
    left = [path for path, module in peft_model.named_modules()
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)) and path not in wrapped
            and (path.rpartition(".")[2], component_of.get(path)) in kinds
            and path.rpartition(".")[0] not in wrapped]  # not a LoRA layer's own base_layer
    by_component: dict = {}
    for path in left:
        by_component.setdefault(component_of.get(path, "other"), []).append(path)
    return [{"pattern": pattern, "count": count, "component": component}
            for component, paths in by_component.items() for pattern, count in collapse_paths(paths)]


def broken_ties(peft_model, base_report: StaticReport) -> list[BrokenTie]:
    """Tied weights (``lm_head`` = ``embed_tokens``) where PEFT changes one side only: a LoRA layer or a
    ``modules_to_save`` copy on one module leaves its tied partner on the original weight, so the two
    silently stop being the same matrix in training."""
    from .layers import lora_layers
    changed = {strip_peft_prefix(path): "LoRA" for path, _ in lora_layers(peft_model)}
    changed.update({strip_peft_prefix(path): "modules_to_save copy" for path, module in peft_model.named_modules()
                    if getattr(module, "modules_to_save", None) is not None
                    and getattr(module, "original_module", None) is not None})
    out = []
    for first, second in base_report.shared_parameters:
        for this, other in ((first, second), (second, first)):
            module = this.rpartition(".")[0]
            if module in changed and other.rpartition(".")[0] not in changed:
                out.append(BrokenTie(module, changed[module], other.rpartition(".")[0]))
    return out


def suggest_targets(report: StaticReport, encoder_decoder: bool = False) -> dict:
    """target_modules that attach LoRA only to what the chosen strategy runs: a list and a regex. For an
    encoder-decoder (Whisper-style ASR, where fine-tunes train the decoder) never the encoder alone."""
    strategy = report.strategy
    names = list(strategy.lora_targets)
    alternatives = "|".join(names)
    if encoder_decoder:
        regex = rf".*\.({alternatives})"
        note = ("an encoder-decoder: the decoder carries the same names and is what ASR fine-tunes train; keep it "
                "targeted (audio_tower leaves it out by design)")
    elif strategy.chosen == "audio_tower" and report.audio_encoder is not None:
        path = strip_peft_prefix(report.audio_encoder.path)
        regex = rf"{re.escape(path)}\..*\.({alternatives})"
        note = ("a plain list also matches same-named layers outside the audio encoder "
                "(q_proj/k_proj/v_proj exist in the language model too): use the regex")
    else:
        regex = rf".*\.({alternatives})"
        note = "the whole model runs: the list is enough"
    return {"strategy": strategy.chosen, "list": names, "regex": regex, "note": note}


def _show(target_modules):
    if isinstance(target_modules, (set, frozenset)):
        return sorted(target_modules)
    return target_modules
