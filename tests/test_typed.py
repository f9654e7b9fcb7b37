"""Typed where data crosses a stage (issue 23 item 4): the vocabulary's Enums read as their plain words in
text and JSON."""
import json

from tracer.cli.main import build_parser
from tracer.records.vocab import COMPONENTS, RUN_OK, STRATEGIES, Component, LoraStatus, RunStatus, Strategy


def test_a_word_is_its_string_in_text_json_and_dicts():
    assert f"{RUN_OK}" == "ok" and str(LoraStatus.ZERO_INIT) == "zero_init"
    assert "%s" % Strategy.FULL_FORWARD == "full_forward"
    assert f"{Component.HEAD:>6}|" == "  head|"  # a format spec applies to the word
    assert json.dumps({Component.AUDIO_ENCODER: [RunStatus.FAILED]}) == '{"audio_encoder": ["failed"]}'
    assert RunStatus.OK == "ok" and hash(RunStatus.OK) == hash("ok") and {"ok": 1}[RUN_OK] == 1
    assert STRATEGIES == ("audio_tower", "full_forward") and COMPONENTS[-1] == "other"
    assert RunStatus("not_applicable") is RunStatus.NOT_APPLICABLE


def test_the_parser_shows_and_refuses_plain_words(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "{both,audio_tower,full_forward}" in text and "{pooled_l2,pooled_mean}" in text
    try:
        parser.parse_args(["clip.wav", "--loss", "nope"])
    except SystemExit:
        pass
    err = capsys.readouterr().err
    assert "'pooled_l2', 'pooled_mean'" in err and "Loss." not in err


def _layer(path, status, component="language_model", cause="the layer never ran in this pass", hint="target it"):
    from tracer.records.run import LoraLayerRecord
    return LoraLayerRecord(path=path, adapter="default", component=component, executed=False, grad_enabled=None,
                           grad_arrived=False, grad_norm_A=None, grad_norm_B=None, grad_norm_magnitude=None,
                           lora_B_zero=True, status=LoraStatus(status), cause=cause, hint=hint)


def test_a_layer_key_is_the_path_bar_adapter_string_in_json_and_back():
    from tracer.records.diagnosis import LayerKey
    from tracer.records.run import RunRecord
    from tracer.records.schema import run_from_dict
    key = LayerKey("base_model.model.lm.layers.0.q_proj", "default")
    assert str(key) == "base_model.model.lm.layers.0.q_proj|default" and LayerKey.parse(str(key)) == key
    assert LayerKey.parse("m.q_proj|a|b") == LayerKey("m.q_proj|a", "b")  # the last bar, as the diagnosis split it
    report = _report()
    run = report.runs["full_forward"]
    assert run.lora_trajectory and all(isinstance(k, LayerKey) for k in run.lora_trajectory)
    written = json.loads(json.dumps(run.to_dict()))
    assert sorted(written["lora_trajectory"]) == sorted(f"{r.path}|{r.adapter}" for r in run.lora)
    assert run_from_dict(written).lora_trajectory == run.lora_trajectory
    failed = json.dumps(RunRecord(RunStatus.FAILED, reason="boom").to_dict())
    assert failed == '{"status": "failed", "reason": "boom", "failed_in": null}'


def test_diagnosis_records_give_the_dicts_they_were():
    from tracer.diagnose.lora_status import dead_groups, trajectory_flags
    from tracer.records.diagnosis import DeadGroup, LayerKey, SavedModule
    layers = [_layer(f"lm.layers.{i}.q_proj", "not_executed") for i in range(2)]
    layers.append(_layer("enc.fc1", "ok", "audio_encoder"))
    [group] = dead_groups(layers, "audio_tower")
    assert isinstance(group, DeadGroup)
    assert list(group.to_dict().items()) == [("pattern", "lm.layers.0-1.q_proj"), ("status", "not_executed"),
                                             ("count", 2), ("cause", "the layer never ran in this pass"),
                                             ("hint", "target it"), ("by_design", True)]
    point = {"grad_norm_A": 1.0, "grad_norm_B": 0.0, "update_ratio_A": 0.1, "update_ratio_B": 0.1}
    [flag] = trajectory_flags({LayerKey("lm.q_proj", "default"): [dict(point, grad_norm_B=1.0), point]})
    assert flag.to_dict() == {"path": "lm.q_proj", "adapter": "default", "flag": "dies", "side": "B"}
    saved = SavedModule("lm_head", "default", True, False, 0.5, "ok", "gradients flow", "")
    assert saved["status"] == "ok" and saved["grad_norm"] == 0.5  # read as the dict it was
    assert list(saved.to_dict()) == ["path", "adapter", "executed", "original_ran", "grad_norm", "status", "cause",
                                     "hint"]


_REPORT = []


def _report():
    if not _REPORT:
        from tracer import TraceOptions, trace_clip
        _REPORT.append(trace_clip(options=TraceOptions(repeats=1, warmup=0)))
    return _REPORT[0]
