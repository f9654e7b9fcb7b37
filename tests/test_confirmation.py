"""The static report's claims checked against what ran: all hold on the built-in model; a run-time change
turns the right claim red."""
import models
import torch
from helpers import ROOT, builtin_paths, tiny_inputs

from tracer.load.audio import load_clip
from tracer.diagnose.confirmation import confirm
from tracer.static.discovery import static_report
from tracer.records.calls import ModuleRecord, TensorMeta
from tracer.records.run import RunRecord
from tracer.render.static import clip_record
from tracer.run.strategies import RunOptions, run_strategies


def verdicts_for(mutate=None):
    loaded, inputs = tiny_inputs()
    model = loaded.model
    report = static_report(model)
    if mutate:
        mutate(model)
    runs = run_strategies(model, report, inputs, RunOptions(1, 0), torch.device("cpu"))
    clip = clip_record(load_clip(f"{ROOT}/samples/sample.wav", 16000).info, inputs)
    return {(v.claim, v.strategy): v for v in confirm(report, runs, clip, {r.path for r in report.tree})}


def test_builtin_model_every_claim_holds_but_never_called_is_noted():
    verdicts = verdicts_for()
    assert {v.verdict for v in verdicts.values()} == {"confirmed", "noted"}
    never = verdicts[("modules registered but never called", "audio_tower")]
    encoder = builtin_paths(models.builtin_model())[0]
    assert never.verdict == "noted" and never.observed == f"{encoder}.embed_positions"
    hidden = verdicts[("language model hidden size (last dim of its output)", "full_forward")]
    assert hidden.claimed == hidden.observed == "64"  # the hidden state, not the logits (262, the vocabulary)
    assert verdicts[("audio encoder layers executed", "audio_tower")].observed == "2"
    seq = verdicts[("LM sequence = prompt + target tokens, 105 of them audio", "full_forward")]
    assert seq.claimed == seq.observed == "273"


def test_skipped_encoder_layer_at_run_time_refutes_layer_count():
    def skip_layers(model):
        tower = model.get_submodule(builtin_paths(model)[0])
        tower.layerdrop = 1.0  # every layer dropped, as LayerDrop does in train mode
        model.train()

    verdicts = verdicts_for(skip_layers)
    layers = verdicts[("audio encoder layers executed", "audio_tower")]
    assert (layers.verdict, layers.claimed, layers.observed) == ("refuted", "2", "0")
    assert "layerdrop" in layers.todo
    ordered = list(verdicts.values())
    assert ordered[0].verdict == "refuted"  # refuted claims are shown first
    assert verdicts[("audio encoder hidden size (last dim of its output)", "audio_tower")].verdict == "confirmed"


def test_clip_record_round_trip_is_what_confirmation_reads():
    loaded, inputs = tiny_inputs()
    from helpers import ROOT

    from tracer.load.audio import load_clip
    record = clip_record(load_clip(f"{ROOT}/samples/sample.wav", 16000).info, inputs)
    assert record.prompt_tokens + record.target_tokens == inputs.full["input_ids"].shape[1]
    assert record.to_dict()["audio_tokens"] == 105 and record.to_dict()["path"].endswith("sample.wav")


def _ran(path: str, *shape: int) -> ModuleRecord:
    return ModuleRecord(path, "Module", 1, 0, True, False, 1.0, 1.0, None, True, (),
                        (TensorMeta(shape, "float32", "cpu"),), True, 0, 0, None, None, None)


def test_lm_hidden_size_is_its_layers_owners_output_not_a_causal_lms_logits():
    """transformers 4.x and 5.6's Qwen2-Audio: the LM found by name is a Qwen2ForCausalLM, whose output is the
    logits (262, the vocabulary); its hidden state is what language_model.model (the owner of the layers)
    gives."""
    report = static_report(models.LegacyQwen2Audio())
    assert report.language_model.layers_path == "language_model.model.layers"
    run = RunRecord("ok", modules=(_ran("language_model", 1, 273, 262), _ran("language_model.model", 1, 273, 64)))
    verdicts = {v.claim: v for v in confirm(report, {"full_forward": run}, None, {r.path for r in report.tree})}
    hidden = verdicts["language model hidden size (last dim of its output)"]
    assert (hidden.verdict, hidden.claimed, hidden.observed) == ("confirmed", "64", "64")
