"""The Tracer under torch.distributed: two real processes (torchrun, gloo, CPU), DDP, FSDP2, FSDP1, ZeRO."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import dist_worker
import pytest
import torch

from tracer.api.tracer import Tracer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
MODES = ("ddp", "fsdp", "fsdp1")  # what dist_worker.run wraps the model in: DDP, FSDP2, FSDP1
ZERO_STAGES = ("zero1", "zero2", "zero3")  # DeepSpeed engines (dist_worker.zero)


def canonical(path: str) -> str:
    """A traced path as the unwrapped model names it: without DDP's ``module.`` and FSDP1's unit wrappers."""
    return ".".join(p for p in path.removeprefix("module.").split(".") if p != "_fsdp_wrapped_module")


def torchrun(args: list, **kwargs):
    """``torchrun --standalone --nproc_per_node 2 ARGS``. Run again once if it fails: --standalone picks a
    free port and another process can take it first; the first failure stays visible as a warning."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    # DeepSpeed's CPU backend compiles a small op once (~30 s): keep it where it outlives this session's
    # cache directory (conftest points XDG_CACHE_HOME at a temporary one)
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": extensions}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, **kwargs)
    if done.returncode != 0:
        import warnings
        warnings.warn(f"torchrun failed once (rc {done.returncode}), running it again: {done.stderr[-2000:]}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, root):
    """One torchrun of 2 processes doing both modes; {mode: [rank 0's output, rank 1's]}."""
    out = tmp_path_factory.mktemp("dist")
    modes = [*MODES, "fsdp_step", "fsdp1_step", "trainer", *(ZERO_STAGES if HAVE_DEEPSPEED else [])]
    torchrun([os.path.join(root, "tests", "dist_worker.py"), str(out), *modes])
    outputs = {mode: [json.loads((out / f"{mode}-{rank}.json").read_text()) for rank in (0, 1)] for mode in modes}
    outputs["chrome"] = {mode: {str(p.relative_to(out / f"{mode}-traces")): json.loads(p.read_text())
                                for p in (out / f"{mode}-traces").rglob("*.json")} for mode in MODES}
    outputs["trainer_traces"] = sorted(p.name for p in (out / "trainer-traces").iterdir())
    outputs["trainer_report"] = json.loads((out / "trainer-traces" / "trace-step1.json").read_text())
    return outputs


@pytest.fixture(scope="module")
def reference():
    """The same model on the whole global batch in one process: LoRA gradient norms by autograd."""
    model = dist_worker.build_model()
    dist_worker.loss_of(model, dist_worker.global_batch()).backward()
    norms = {}
    for name, param in model.named_parameters():
        if param.grad is not None and ".lora_" in name:
            norms[name] = float(param.grad.norm())
    return norms


@pytest.mark.parametrize("mode", MODES)
def test_every_rank_completes_with_its_rank_and_no_hook_left(ranks, mode):
    outs = ranks[mode]
    assert [(o["rank"], o["world_size"], o["backend"]) for o in outs] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert [o["hooks_left"] for o in outs] == [0, 0]
    assert all(r["status"] == "ok" for o in outs for r in o["lora"]) and len(outs[0]["lora"]) == 6


@pytest.mark.parametrize("mode", MODES)
def test_lora_norms_are_the_full_gradients_on_every_rank(ranks, reference, mode):
    """DDP all-reduces the gradients; FSDP2 leaves DTensor shards and FSDP1 (use_orig_params) views of its
    FlatParameter's shard, None where a rank holds none of a weight: their squared norms are summed over the
    ranks. All equal one process's norms on the same global batch."""
    for out in ranks[mode]:
        for layer in out["lora"]:
            path = canonical(layer["path"])
            for part, key in (("lora_A", "grad_norm_A"), ("lora_B", "grad_norm_B")):
                expected = reference[f"{path}.{part}.{layer['adapter']}.weight"]
                assert layer[key] == pytest.approx(expected, rel=1e-5), (mode, path, part)


@pytest.mark.parametrize("mode", MODES)
def test_rank_0_merges_both_ranks_and_names_the_slowed_one(ranks, mode):
    merged, other = ranks[mode][0]["merged"], ranks[mode][1]["merged"]
    assert other is None  # only rank 0 gets the merged view
    assert merged["world_size"] == 2 and merged["ranks"] == [0, 1] and merged["lora_statuses_agree"]
    sleep_ms = dist_worker.SLEEP_S * 1000
    slowed = next(m for m in merged["modules"] if canonical(m["path"]) == dist_worker.SLOWED)
    # the sleep is inside the module's window on rank 1: at least that long, whatever the load
    assert slowed["slowest_rank"] == 1 and slowed["forward_ms"][1] >= sleep_ms
    # orderings with margins against what rank 0 measured, not fixed ms: rank 0 would have to lose half the
    # sleep to noise to fail them
    assert slowed["forward_ms"][1] - slowed["forward_ms"][0] > sleep_ms / 2 and slowed["skew"] > 1.5
    stage = merged["stages"]["language_model"]
    assert stage["slowest_rank"] == 1 and stage["forward_ms"][1] >= sleep_ms
    assert stage["forward_ms"][1] - stage["forward_ms"][0] > sleep_ms / 2


def saved_by_module(saved_bytes: dict) -> dict:
    """Bytes saved for backward per module as the unwrapped model names it (FSDP1's unit wrapper and the
    module it wraps are one), modules that save nothing left out."""
    out = {}
    for path, nbytes in saved_bytes.items():
        out[canonical(path)] = out.get(canonical(path), 0) + nbytes
    return {path: nbytes for path, nbytes in out.items() if nbytes}


@pytest.mark.parametrize("mode", MODES)
def test_each_stage_line_names_its_slowest_rank_and_where_that_rank_loses_the_time(ranks, mode):
    """Per rank, a stage's ms are its modules' own (self forward + own backward: they add up), so each RANKS
    line names the stage's slowest rank and modules of that stage, each stretch of time once. Before, backward
    windows nested and overlapped: a wait in FSDP2's collective counted once per window around it, and every
    listed module could name a rank the stage table did not. The slowed module leads its stage's line."""
    from tracer.module_paths import label
    from tracer.render.runs import render_ranks
    merged = ranks[mode][0]["merged"]
    for name, stage in merged["stages"].items():
        for rank in (0, 1):
            ran = [m for m in merged["modules"] if m["stage"] == name and m["forward_ms"][rank] is not None]
            assert stage["forward_ms"][rank] == pytest.approx(sum(m["forward_ms"][rank] for m in ran))
            assert stage["backward_ms"][rank] == pytest.approx(sum(m["backward_ms"][rank] or 0.0 for m in ran))
    body = render_ranks({"world_size": 2, "backend": "gloo", "parallel": mode, "strategies": {"run": merged}}).body
    lines = {line.split(":")[0].strip(): line for line in body.splitlines() if " over the median" in line}
    assert lines and all(f": rank {merged['stages'][name]['slowest_rank']} +" in line for name, line in lines.items())
    for line in lines.values():  # every module named (no blank names: the root is "(root)")
        assert all(re.fullmatch(r"\S+ \+\d+\.\d\d ms", item) for item in line.partition("most in ")[2].split(", ")
                   if item), line
    slowed = next(m["path"] for m in merged["modules"] if canonical(m["path"]) == dist_worker.SLOWED)
    assert lines["language_model"].startswith("  language_model: rank 1 +")
    assert f"most in {label(slowed)} +" in lines["language_model"]


def test_fsdp2_gathered_weights_are_not_counted_as_saved_activations(ranks):
    """FSDP2 gathers each layer's weights into new storages as the layer runs and frees them after (resizing
    the storage to 0): autograd saves them for backward, but they are weights, and the activations allocated
    where they were are activations. Each module saves exactly what it saves under DDP (weights plain)."""
    ddp, fsdp = saved_by_module(ranks["ddp"][0]["saved_bytes"]), saved_by_module(ranks["fsdp"][0]["saved_bytes"])
    assert sum(fsdp.values()) > 0 and fsdp == ddp


def test_fsdp1_gathered_weights_are_not_counted_as_saved_activations(ranks):
    """FSDP1 gathers a unit's weights into its FlatParameter before running it: saved for backward, they are
    not activations. Its views all require grad when the unit holds a trainable weight (LoRA's), so autograd
    also saves what the frozen weights' gradients would need (a frozen Linear's input, a norm's normalised
    input): each module saves exactly what it saves in one process with every decoder-layer weight trainable
    and the root's (embeddings, norm, head: a unit of frozen weights) frozen."""
    model = dist_worker.build_model()
    model.base_model.model.model.layers.requires_grad_(True)
    with Tracer(model) as tracer:
        dist_worker.loss_of(model, dist_worker.global_batch().chunk(2)[0]).backward()
    alone = saved_by_module({m["path"]: m["saved_bytes"] for m in tracer.result()["modules"]})
    fsdp1 = saved_by_module(ranks["fsdp1"][0]["saved_bytes"])
    assert sum(fsdp1.values()) > sum(saved_by_module(ranks["ddp"][0]["saved_bytes"]).values()) and fsdp1 == alone


@pytest.mark.parametrize("mode", MODES)
def test_each_rank_writes_a_chrome_trace_of_the_job(ranks, mode):
    """One file per rank with distributedInfo (what Holistic Trace Analysis reads to load a directory as a
    job), times on the wall clock so the ranks line up, and on rank 0 the job in one file for Perfetto."""
    files = ranks["chrome"][mode]
    assert sorted(files) == ["perfetto/job.json", "rank0.json", "rank1.json"]
    for rank in (0, 1):
        trace = files[f"rank{rank}.json"]
        assert trace["distributedInfo"] == {"rank": rank, "world_size": 2, "backend": "gloo"}
        assert {e["pid"] for e in trace["traceEvents"]} == {rank}
    starts = [min(e["ts"] for e in files[f"rank{r}.json"]["traceEvents"] if e["ph"] == "X") for r in (0, 1)]
    assert abs(starts[0] - starts[1]) < 5e6  # µs since the epoch on both: within seconds, not decades
    job = files["perfetto/job.json"]["traceEvents"]
    assert {e["pid"] for e in job} == {0, 1}
    slowed = dist_worker.SLOWED.rpartition(".")[0].rpartition(".")[2]  # short label: the layer index
    durations = {e["pid"]: e["dur"] for e in job if e["ph"] == "X" and e["cat"] == "forward"
                 and e["name"].endswith(f"layers.{slowed}.mlp")}
    assert durations[1] >= dist_worker.SLEEP_S * 1e6 > durations[0]


@pytest.fixture(scope="module")
def reference_step():
    """One process, the whole global batch, one AdamW step: each LoRA weight's update ratio ||dW|| / ||W||."""
    model = dist_worker.build_model()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=dist_worker.LR)
    dist_worker.loss_of(model, dist_worker.global_batch()).backward()
    optimizer.step()
    return {n: float((p.detach() - before[n]).norm() / before[n].norm()) for n, p in params.items()}


def assert_step_equals_reference(layer: dict, path: str, reference: dict, reference_step: dict) -> None:
    """One layer's gradient norms and update ratios equal one process's step on the global batch."""
    stem = f"{path}.{{}}.{layer['adapter']}.weight"
    assert layer["grad_norm_A"] == pytest.approx(reference[stem.format("lora_A")], rel=1e-5)
    assert layer["grad_norm_B"] == pytest.approx(reference[stem.format("lora_B")], rel=1e-5)
    assert layer["update_ratio_A"] == pytest.approx(reference_step[stem.format("lora_A")], rel=1e-4)
    assert layer["update_ratio_B"] == pytest.approx(reference_step[stem.format("lora_B")], rel=1e-4)


def test_fsdp_optimizer_step_is_seen_whole_on_every_rank(ranks, reference, reference_step):
    """With the optimizer watched under FSDP2: gradient norms (kept through zero_grad) and update ratios
    are of the whole parameters, equal on both ranks to one process's step on the global batch."""
    for out in ranks["fsdp_step"]:
        assert {r["status"] for r in out["lora"]} == {"ok"} and {r["optimizer_steps"] for r in out["lora"]} == {1}
        for layer in out["lora"]:
            assert_step_equals_reference(layer, layer["path"], reference, reference_step)


def test_fsdp1_optimizer_step_is_seen_whole_and_use_orig_params_false_is_refused(ranks, reference, reference_step):
    """FSDP1 with use_orig_params=True and AdamW on the original parameters: gradient norms and update ratios
    from views of the shards, summed over the ranks (a rank that holds none of a weight has no .grad at all).
    use_orig_params=False leaves the LoRA weights no parameters: refused in one line naming what works."""
    for out in ranks["fsdp1_step"]:
        assert {r["status"] for r in out["lora"]} == {"ok"} and len(out["lora"]) == 6
        for layer in out["lora"]:
            assert_step_equals_reference(layer, canonical(layer["path"]), reference, reference_step)
        assert out["refused"] == ("TracerError: FSDP1 with use_orig_params=False hides LoRA gradients inside "
                                  "FlatParameter shards: wrap with use_orig_params=True, or use FSDP2 (fully_shard)")


@pytest.fixture(scope="module")
def reference_saved():
    """One process, the whole global batch: the norm of the gradient of the LM head's modules_to_save copy."""
    model = dist_worker.build_model(modules_to_save=["lm_head"])
    dist_worker.loss_of(model, dist_worker.global_batch()).backward()
    return float(model.base_model.model.lm_head.modules_to_save["default"].weight.grad.norm())


@pytest.mark.skipif(not HAVE_DEEPSPEED, reason="deepspeed is not installed (the test extra installs it)")
@pytest.mark.parametrize("stage", ZERO_STAGES)
def test_zero_norms_come_through_deepspeed_and_are_the_full_gradients(ranks, reference, reference_saved, stage):
    """Under every ZeRO stage .grad is None after engine.backward (ZeRO-1/2 reduce the gradients into the
    optimizer's partitioned buffers; ZeRO-3's weights are even empty outside the forward): read naively every
    layer is 'off_loss_path' and a modules_to_save copy 'no_gradient'. Through DeepSpeed's safe_get_full_grad:
    ok, with one process's norms."""
    for out in ranks[stage]:
        assert out["grad_is_none"] and out["empty_outside_forward"] == (stage == "zero3")
        assert {r["status"] for r in out["lora"]} == {"ok"} and len(out["lora"]) == 6
        for layer in out["lora"]:
            stem = f"{layer['path']}.{{}}.{layer['adapter']}.weight"
            assert layer["grad_norm_A"] == pytest.approx(reference[stem.format("lora_A")], rel=1e-5)
            assert layer["grad_norm_B"] == pytest.approx(reference[stem.format("lora_B")], rel=1e-5)
        [saved] = out["saved_modules"]
        assert (saved["path"], saved["status"]) == ("base_model.model.lm_head", "ok")
        assert saved["grad_norm"] == pytest.approx(reference_saved, rel=1e-5)


def test_trainer_callback_under_torchrun_writes_one_merged_report_from_rank_0(ranks):
    assert ranks["trainer_traces"] == ["trace-step1.json", "trace-step1.md"]  # rank 1 wrote nothing
    assert [(o["has_merged"], o["traced_rank"]) for o in ranks["trainer"]] == [(True, 0), (False, 1)]
    report = ranks["trainer_report"]
    merged = report["merged"]
    assert report["world_size"] == 2 and merged["ranks"] == [0, 1] and merged["lora_statuses_agree"]
    assert {r["status"] for r in report["lora"]} == {"ok"}


def test_without_a_process_group_the_merged_view_is_this_process_alone():
    model = dist_worker.build_model()
    with Tracer(model) as tracer:
        dist_worker.loss_of(model, dist_worker.global_batch()).backward()
    run = tracer.result()
    assert "rank" not in run
    merged = tracer.merged(run)
    assert merged["world_size"] == 1 and merged["ranks"] == [0] and merged["lora_statuses_agree"]
    assert {m["slowest_rank"] for m in merged["modules"]} == {0}


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def cli_under_torchrun(request, tmp_path_factory, root):
    out = tmp_path_factory.mktemp("cli")
    done = torchrun([os.path.join(root, "bin", "trace"), os.path.join(root, "samples", "sample.wav"),
                     "--repeats", "1", "--warmup", "0", "--json", str(out / "r.json"),
                     "--chrome-trace", f"{out / 'traces'}/", *(["--fsdp"] if request.param == "fsdp" else [])])
    return done.stdout, json.loads((out / "r.json").read_text()), out / "traces"


def test_bin_trace_under_torchrun_prints_one_report_with_the_ranks_merged(cli_under_torchrun):
    stdout, data, _ = cli_under_torchrun
    parallel = data["distributed"]["parallel"]
    assert stdout.count("[STEP 1]") == 1
    assert stdout.count(f"[RANKS] 2 ranks (gloo, {parallel.upper()}), merged on rank 0") == 1
    dist_info = data["distributed"]
    assert (dist_info["rank"], dist_info["world_size"]) == (0, 2) and parallel in ("ddp", "fsdp")
    for name in ("audio_tower", "full_forward"):
        merged = dist_info["strategies"][name]
        assert merged["ranks"] == [0, 1] and merged["lora_statuses_agree"]
        assert {m["path"] for m in merged["modules"]} == {m["path"] for m in data["runs"][name]["modules"]
                                                          if m["executed"]}


def test_gradients_are_the_single_process_ones(cli_under_torchrun, tmp_path, root):
    """Every rank traces the same clip, so the averaged gradient (DDP's all-reduce, FSDP2's reduce-scatter,
    its shards' norms summed) is one process's: the same LoRA norms."""
    from tracer.cli.main import main
    _, data, _ = cli_under_torchrun
    assert main([f"{root}/samples/sample.wav", "--repeats", "1", "--warmup", "0", "--quiet",
                 "--json", str(tmp_path / "one.json")]) == 0
    alone = json.loads((tmp_path / "one.json").read_text())
    for name in ("audio_tower", "full_forward"):
        ours = {(r["path"], r["adapter"]): r["grad_norm_B"] for r in data["runs"][name]["lora"]}
        theirs = {(r["path"], r["adapter"]): r["grad_norm_B"] for r in alone["runs"][name]["lora"]}
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if value is None:  # a layer this strategy does not run: no gradient alone or on the ranks
                assert ours[key] is None, (name, key)
            else:
                assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-9), (name, key)


def test_bin_trace_under_torchrun_writes_a_trace_per_rank(cli_under_torchrun):
    stdout, _, traces = cli_under_torchrun
    # --chrome-trace DIR/ (a trailing slash) is said as one path
    assert f"wrote {traces}/rank*.json and {traces}/perfetto/job.json" in stdout and "//" not in stdout
    assert sorted(str(p.relative_to(traces)) for p in traces.rglob("*.json")) == \
        ["perfetto/job.json", "rank0.json", "rank1.json"]
    for rank in (0, 1):
        trace = json.loads((traces / f"rank{rank}.json").read_text())
        assert trace["distributedInfo"] == {"rank": rank, "world_size": 2, "backend": "gloo"}
        names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
        assert {"audio_tower forward", "full_forward backward"} <= names


def test_fsdp_outside_torchrun_is_one_line(capsys, root, monkeypatch):
    from tracer.cli.main import main
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main([f"{root}/samples/sample.wav", "--fsdp"]) == 2
    assert capsys.readouterr().err == ("error: --fsdp shards over the ranks of a job: run under torchrun "
                                       "--nproc_per_node N (N >= 2)\n")


def test_a_run_missing_on_a_rank_is_named_not_waited_for():
    """merge() with no run (a strategy that failed on this rank) still takes part in the collective; rank 0
    names the rank. Without a process group that rank is 0."""
    from tracer.rollup.ranks import merge
    assert merge(None, {}) == {"failed_on": [0]}


def test_ranks_that_disagree_on_a_status_are_named_with_the_skew_by_hand():
    """Two ranks' summaries merged: skew = slowest / median, the excess over the median, and a LoRA layer
    whose status differs named with each rank's status."""
    from tracer.rollup.ranks import _merged
    from tracer.render.runs import agreement_lines
    layer = ("base_model.model.model.layers.0.self_attn.q_proj", "default")
    summaries = [{"rank": r, "modules": {"m": (fwd, 1.0, None)}, "stages": {"language_model": {
        "forward_ms": fwd, "backward_ms": 1.0}}, "lora": {layer: status}, "total_forward_ms": fwd,
        "total_backward_ms": 1.0} for r, fwd, status in ((1, 7.0, "not_executed"), (0, 3.0, "ok"))]
    merged = _merged(summaries, {"rank": 0, "world_size": 2, "backend": "gloo"})
    stage = merged["stages"]["language_model"]
    assert merged["ranks"] == [0, 1] and stage["slowest_rank"] == 1
    assert stage["skew"] == pytest.approx(8.0 / 6.0) and stage["excess_ms"] == pytest.approx(2.0)
    assert not merged["lora_statuses_agree"]
    assert agreement_lines(merged, "") == ["! ranks disagree on model.layers.0.self_attn.q_proj "
                                           "(rank 0: ok, rank 1: not_executed)"]
