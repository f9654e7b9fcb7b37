"""Schema v1 both ways: the typed records written as JSON and read back are the same records."""
import json
from dataclasses import replace

import pytest

from tracer import TraceOptions, TracerError, trace_clip
from tracer.records.calls import TensorMeta
from tracer.records.schema import read_record, run_from_dict, tensor_meta_from_str


@pytest.fixture(scope="module")
def report():
    return trace_clip(options=TraceOptions(repeats=1, warmup=0, keep_calls=True))


def test_runs_round_trip_through_json(report, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report.to_dict(), default=str))
    back = read_record(str(path), "test:")
    for name, run in report.runs.items():
        assert back["runs"][name] == replace(run, calls=None)  # calls live in the Chrome trace only
    fc1 = back["runs"]["audio_tower"].module("base_model.model.model.audio_tower.layers.0.fc1")
    assert fc1.outputs == (TensorMeta((1, 1500, 128), "float32", "cpu"),)


def test_shapes_stay_numbers_until_rendered(report):
    enc = report.runs["audio_tower"].module("base_model.model.model.audio_tower")
    assert enc.inputs[0] == TensorMeta((1, 128, 3000), "float32", "cpu")
    assert enc.to_dict()["inputs"] == ["1x128x3000 float32"]
    call = report.runs["full_forward"].calls[0]
    assert call.to_dict()["outputs"][0] == "scalar float32"  # the loss


def test_tensor_meta_from_text():
    assert tensor_meta_from_str("1x750x1280 bfloat16 cuda:0") == TensorMeta((1, 750, 1280), "bfloat16", "cuda:0")
    assert tensor_meta_from_str("scalar float32") == TensorMeta((), "float32", "cpu")
    assert tensor_meta_from_str("DynamicCache") == "DynamicCache"


def test_a_record_without_runs_is_refused(tmp_path):
    path = tmp_path / "static.json"
    path.write_text(json.dumps({"schema_version": 1, "static": {}}))
    with pytest.raises(TracerError, match="not a tracer record with runs"):
        read_record(str(path), "diff:")
    broken = {"schema_version": 1, "runs": {"audio_tower": {"status": "ok"}}}
    path.write_text(json.dumps(broken))
    with pytest.raises(TracerError, match="does not match schema_version 1"):
        read_record(str(path), "diff:")
    assert run_from_dict({"status": "failed", "reason": "boom", "failed_in": "lm_head"}).failed_in == "lm_head"
