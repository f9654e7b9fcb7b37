"""``bin/trace audit``: a saved PEFT LoRA adapter checked against its base model without training.

Four faults, each with a code, a one-line detail and a fix: ``untrained`` (every lora_B in the file is
zero), ``missing_weights`` (layers the config targets that the file has no weights for: PEFT loads them
silently at their initial values), ``no_match`` (weights that fit no module of the base) and ``no_effect``
(the adapted model's output equals the base's on the clip). The first three need only the file and the
wrapped model; ``audit_notes`` gives them to the main job's ``--adapter``. Imports nothing heavy until called.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..lora.adapter_file import FIXES, NO_EFFECT, NO_MATCH, UNTRAINED, Fault, _key_mapping, match_faults, read_adapter_config, read_weights, untrained_faults
from ..errors import TracerError, first_line
from ..run.observer import Observer


@dataclass(frozen=True)
class AuditResult:
    """What ``audit_adapter`` found; ``to_dict()`` is the ``--json`` record."""
    adapter: str
    base: str
    faults: tuple  # Fault
    layers: int  # LoRA layers PEFT made on the base
    max_abs_logit_change: float | None  # None when the model did not run on the clip
    notes: tuple = ()  # why a check was skipped

    def to_dict(self) -> dict:
        return {"adapter": self.adapter, "base": self.base, "faults": [f.to_dict() for f in self.faults],
                "layers": self.layers, "max_abs_logit_change": self.max_abs_logit_change, "notes": list(self.notes)}


def audit_adapter(adapter_dir: str, model: str | None = None, clip: str | None = None,
                  progress=lambda text: None) -> AuditResult:
    """Check a saved adapter against its base, on a clip.

    Args:
        adapter_dir: what ``save_pretrained`` wrote (adapter_config.json and the weights).
        model: the base (a directory, a cached hub id or a named model); None takes the adapter's
            ``base_model_name_or_path``, or the built-in tiny Qwen2-Audio when it names none.
        clip: the audio the output change is measured on (default: the shipped sample).

    Raises TracerError on bad input. Example::

        result = audit_adapter("out/checkpoint-500")
        [f.code for f in result.faults]   # [] or e.g. ["untrained"]
    """
    config = read_adapter_config(adapter_dir)
    weights = read_weights(adapter_dir)
    from ..load.assets import BUILTIN_CLIP
    from ..run.pipeline import TraceOptions, trace_clip
    spec = model or _base_of(config)
    # NB: static_only loads the base and builds the clip's inputs exactly as the main job does, runs nothing
    try:
        loaded = trace_clip(clip or str(BUILTIN_CLIP), spec, options=TraceOptions(static_only=True, lora=False),
                            observer=_Progress(progress))
    except TracerError as e:
        if model or not spec:
            raise
        raise TracerError(f"{e} (the base named in {adapter_dir}/adapter_config.json; pass --model)") from None
    base = spec or loaded.model_name
    mapping = _key_mapping(loaded.model)
    if mapping:
        weights = read_weights(adapter_dir, key_mapping=mapping)
    faults = untrained_faults(weights)
    encoder = (dict(loaded.model.named_modules())[loaded.static.audio_encoder.path]
               if loaded.static.audio_encoder is not None else None)
    from peft import PeftModel

    from ..lora.layers import lora_layers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's "missing adapter keys": a fault of its own here
            wrapped = PeftModel.from_pretrained(loaded.model, adapter_dir).eval()
    except Exception as e:  # noqa: BLE001 - peft raises many types for "does not fit this model"
        faults.append(Fault(NO_MATCH, f"does not load into {base} ({first_line(e)})", FIXES[NO_MATCH]))
        return AuditResult(adapter_dir, base, tuple(faults), 0, None)
    faults += match_faults(weights, wrapped, base)
    notes, change = [], None
    if loaded.inputs is None:
        notes.append(f"no_effect not checked: no inputs from the clip ({loaded.clip_error or 'none built'})")
    elif loaded.inputs.full is None and encoder is None:
        notes.append("no_effect not checked: this model takes no text and has no audio encoder to run")
    else:
        change, equal = _output_change(wrapped, loaded.inputs, encoder)
        if equal and not any(f.code == UNTRAINED for f in faults):  # an untrained one: its cause is named
            faults.append(Fault(NO_EFFECT, f"on the clip the adapted model's output equals the base's "
                                           f"(max |Δ| = {change:.3g}): the adapter does nothing here",
                                FIXES[NO_EFFECT]))
    return AuditResult(adapter_dir, base, tuple(faults), len(lora_layers(wrapped)), change, tuple(notes))


class _Progress(Observer):
    """Only the progress of a first build: the audit has its own report."""

    def __init__(self, progress):
        self.progress = progress

    def on_progress(self, text: str) -> None:
        self.progress(text)


def render_audit(result: AuditResult) -> str:
    """The human report: a header, one line per fault (or the all-clear), the notes."""
    lines = [f"audit {result.adapter} against {result.base}: {result.layers} LoRA layers"]
    lines += [f"  {f.code}: {f.detail}; fix: {f.fix}" for f in result.faults]
    if not result.faults:
        effect = ("changes the output (max |Δlogit| = {:.3g})".format(result.max_abs_logit_change)
                  if result.max_abs_logit_change is not None else "output change not checked")
        lines.append(f"adapter OK: {result.layers} LoRA layers, trained, matches the base, {effect}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _base_of(config: dict) -> str | None:
    """The adapter's base as ``--model`` takes it; None (the built-in) when it names none or the built-in."""
    from ..load.assets import BUILTIN_MODEL_DIR
    name = config.get("base_model_name_or_path")
    builtin_names = {"builtin tiny Qwen2-Audio", str(BUILTIN_MODEL_DIR), BUILTIN_MODEL_DIR.name}
    return None if not name or name in builtin_names or Path(name).resolve() == BUILTIN_MODEL_DIR else name


def _output_change(wrapped, inputs, encoder) -> tuple[float, bool]:
    """Max |Δ| between the adapted and the base (adapter disabled) output on the clip's inputs, and whether
    that is within rounding: the logits of the whole model, else the audio encoder's first output tensor."""
    import torch

    from ..load.model import input_device
    device = input_device(wrapped, torch.device("cpu"))
    run, batch = (wrapped, inputs.full) if inputs.full is not None else (encoder, inputs.tower)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        adapted = _first_tensor(run(**batch))
        with wrapped.disable_adapter():
            plain = _first_tensor(run(**batch))
    change = float((adapted.float() - plain.float()).abs().max())
    # NB: the base part of each LoRA layer computes the same either way, so any change is the adapter's;
    # one unit in the last place of the largest value is left for kernels that are not deterministic
    return change, change <= torch.finfo(adapted.dtype).eps * max(1.0, float(plain.float().abs().max()))


def _first_tensor(output):
    """``logits`` when the output has them, else its first tensor."""
    import torch
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    return next(v for v in values if isinstance(v, torch.Tensor))
