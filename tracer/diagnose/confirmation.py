"""Confirmation: each claim of the static report beside what the traced runs executed, with a verdict."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..static.discovery import StaticReport
from ..module_paths import is_under, short
from ..records.calls import TensorMeta
from ..records.vocab import CONFIRMED, LAYER_LIST_NAMES, NOT_CHECKED, NOTED, REFUTED


@dataclass(frozen=True)
class Verdict:
    claim: str
    claimed: str
    observed: str
    verdict: str
    strategy: str | None
    todo: str

    def to_dict(self) -> dict:
        return asdict(self)


def _last_dim(meta) -> int | None:
    """A TensorMeta's last dimension (the hidden size of an encoder's or an LM's output)."""
    return meta.shape[-1] if isinstance(meta, TensorMeta) and meta.shape else None


def _first(items: tuple):
    return items[0] if items else None


def confirm(report: StaticReport, runs: dict, clip, static_paths: set[str]) -> list[Verdict]:
    """Verdicts, refuted ones first. ``report`` is the static report of the model that ran; ``runs`` the
    RunRecords by strategy; ``clip`` the ClipRecord (or None)."""
    out: list[Verdict] = []
    ok = {name: run for name, run in runs.items() if run.ok}
    enc, lm = report.audio_encoder, report.language_model
    encoder_run = next((n for n in ("audio_tower", "full_forward") if n in ok), None)
    if enc is not None and encoder_run:
        mods = {m.path: m for m in ok[encoder_run].modules}
        layer_list = enc.layers_path or _layer_list_path(mods, enc.path)
        ran = sum(1 for p, m in mods.items() if m.executed and p.rpartition(".")[0] == layer_list)
        out.append(_verdict("audio encoder layers executed", enc.num_layers, ran, encoder_run,
                            "layers were skipped at run time (layerdrop in train mode, an early exit, or a "
                            "patched forward): check model.train()/encoder_layerdrop"))
        seen = _last_dim(_first(mods[enc.path].outputs)) if enc.path in mods else None
        out.append(_verdict("audio encoder hidden size (last dim of its output)", enc.hidden_size, seen,
                            encoder_run, "the config's d_model does not match the weights: check the checkpoint"))
    if lm is not None and "full_forward" in ok:
        # the output of the module that owns its layers: the hidden state (the LM found may be a *ForCausalLM,
        # whose own output is the logits, one per vocabulary entry, or the loss first when given labels)
        record = ok["full_forward"].module(_hidden_state_path(lm))
        out.append(_verdict("language model hidden size (last dim of its output)", lm.hidden_size,
                            _last_dim(_first(record.outputs)) if record else None, "full_forward",
                            "the text config's hidden_size does not match what ran"))
        if clip is not None and (clip.audio_tokens is not None or not clip.audio_in_lm):
            # the LM's output has one position per token it consumed (its inputs may also carry an
            # encoder's states, cross-attended by an encoder-decoder's decoder)
            last = _first(record.outputs) if record else None
            seq = last.shape[1] if isinstance(last, TensorMeta) and len(last.shape) == 3 else None
            expected = clip.prompt_tokens + clip.target_tokens
            audio = f"{clip.audio_tokens} of them audio" if clip.audio_in_lm else "the audio cross-attended"
            out.append(_verdict(f"LM sequence = prompt + target tokens, {audio}",
                                expected, seq, "full_forward",
                                "audio tokens were not expanded as claimed: the processor and the model "
                                "disagree on the audio length (check the feature extractor's settings)"))
    for name, run in ok.items():
        out.append(_components_verdict(name, run, report))
        # NB: another tower's layers (vision: 'other') never run on a clip; they are not needed
        needed = [r for r in run.lora or () if r.component == "audio_encoder"
                  or (name == "full_forward" and r.component != "other")]
        missing = [r.path for r in needed if not r.executed]
        if needed:
            out.append(Verdict("every LoRA layer this strategy needs executed", f"{len(needed)} layers",
                               f"{len(needed) - len(missing)} executed", REFUTED if missing else CONFIRMED, name,
                               f"not executed: {', '.join(map(short, missing[:4]))}{' …' if len(missing) > 4 else ''}"
                               if missing else ""))
    for name, run in ok.items():
        # rollup.never_called: no containers, no wrapper bypassed on the way down (PEFT's LoraModel)
        never = [p for p in run.never_called if name == "full_forward" or is_under(p, enc.path if enc else None)]
        out.append(Verdict("modules registered but never called", "-", ", ".join(map(short, never[:6])) or "none", NOTED,
                           name, "expected for weights read directly (Qwen2-Audio's embed_positions)"))
        new = sorted({m.path for m in run.modules} - static_paths)
        out.append(Verdict("every module that ran is in the static tree", "yes",
                           "yes" if not new else ", ".join(map(short, new[:4])), REFUTED if new else CONFIRMED, name,
                           "modules were created at run time; rerun the static report after setup" if new else ""))
    return sorted(out, key=lambda v: v.verdict != REFUTED)


def _verdict(claim, claimed, observed, strategy, todo) -> Verdict:
    if claimed is None or observed is None:
        return Verdict(claim, str(claimed), str(observed), NOT_CHECKED, strategy, "")
    good = claimed == observed
    return Verdict(claim, f"{claimed:,}", f"{observed:,}", CONFIRMED if good else REFUTED, strategy,
                   "" if good else todo)


def _components_verdict(name: str, run: dict, report: StaticReport) -> Verdict:
    ran = {c for c, s in run.stages.items() if s.modules_executed and c != "other"}
    # NB: by modules, not parameters: a head tied to the embeddings owns none but still runs
    claimed = {"audio_encoder"} if name == "audio_tower" else set(report.component_of.values()) - {"other"}
    good = ran == claimed
    return Verdict("components the strategy runs", ", ".join(sorted(claimed)), ", ".join(sorted(ran)),
                   CONFIRMED if good else REFUTED, name,
                   "" if good else "the forward path differs from the structure: check custom forward code")


def _hidden_state_path(lm) -> str:
    """The module whose output is the LM's hidden state: the owner of its layer list (the LM itself in
    transformers 5's layout; its ``.model`` where the LM found is a *ForCausalLM)."""
    owner = lm.layers_path.rpartition(".")[0] if lm.layers_path else ""
    return owner if is_under(owner, lm.path) else lm.path


def _layer_list_path(mods: dict, encoder_path: str) -> str | None:
    for suffix in LAYER_LIST_NAMES:
        if f"{encoder_path}.{suffix}" in mods:
            return f"{encoder_path}.{suffix}"
    return None
