"""Tests that pin the numbers: each checks a figure against an independent way of getting it, so that a
plausible one-line bug in a roll-up (self time, backward windows, stage sums, ratios, peak memory, ordering)
fails here rather than printing a wrong but plausible table."""
import models
import pytest
import torch
from helpers import tiny_inputs
from transformers import Qwen2Config, Qwen2ForCausalLM

from tracer.diagnose.confirmation import confirm
from tracer.static.discovery import static_report
from tracer.api.tracer import Tracer
from tracer.inputs.common import prepare_text_inputs
from tracer.run.strategies import RunOptions, compare, run_strategies

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def both():
    loaded, inputs = tiny_inputs()
    report = static_report(loaded.model)
    runs = run_strategies(loaded.model, report, inputs, RunOptions(repeats=2, warmup=0), CPU)
    return loaded.model, report, inputs, runs


def rows(run):
    return {m.path: m for m in run.modules}


def children(mods, path):
    """Executed modules whose nearest executed ancestor is ``path`` (containers such as ``layers`` never run)."""
    def parent(p):
        while p:
            p = p.rpartition(".")[0]
            if p in mods and mods[p].executed:
                return p
        return None
    return [m for p, m in mods.items() if m.executed and p != path and parent(p) == path]


def test_self_times_sum_to_the_total_forward(both):
    for run in both[3].values():
        executed = [m for m in run.modules if m.executed]
        assert sum(m.self_forward_ms for m in executed) == pytest.approx(run.total_forward_ms, rel=1e-9)


def test_self_time_is_forward_minus_direct_children(both):
    # in the encoder the call tree is the module tree, so children by path are the child calls
    mods = rows(both[3]["audio_tower"])
    for path in ("model.audio_tower.layers.0", "model.audio_tower.layers.1.self_attn", "model.audio_tower"):
        kids = children(mods, path)
        assert kids
        expected = mods[path].forward_ms - sum(k.forward_ms for k in kids)
        assert mods[path].self_forward_ms == pytest.approx(expected, abs=1e-6)
        assert mods[path].self_forward_ms < mods[path].forward_ms


def test_parent_backward_window_covers_its_children(both):
    mods = rows(both[3]["audio_tower"])
    # the encoder's input (mel features) needs no gradient and it owns no parameter: its backward window
    # can only end through its children's
    assert mods["model.audio_tower"].backward_ms is not None
    checked = 0
    for path, m in mods.items():
        if not path.startswith("model.audio_tower") or not m.executed:
            continue
        for kid in children(mods, path):
            if kid.backward_ms is not None:
                assert m.backward_ms is not None and m.backward_ms >= kid.backward_ms, (path, kid.path)
                checked += 1
    assert checked > 20


def test_stage_backward_is_its_modules_own_backward_counted_once(both):
    """Windows nest (a layer's is inside its parent's), so a stage sums its modules' own part of the backward:
    each instant once. By hand on the built-in model: the sum of self_backward_ms per component, within
    the component root's window."""
    run = both[3]["full_forward"]
    mods, stages = rows(run), run.stages
    roots = {"audio_encoder": "model.audio_tower", "projector": "model.multi_modal_projector",
             "language_model": "model.language_model", "head": "lm_head"}
    component_of = both[1].component_of
    total = 0.0
    for component, root in roots.items():
        own = sum(m.self_backward_ms or 0.0 for m in run.modules
                  if m.executed and component_of.get(m.path, "other") == component)
        assert stages[component].backward_ms == pytest.approx(own, rel=1e-12) and own > 0, component
        assert mods[root].backward_ms > 0, component
        total += own
    # NB: not each root's window: a module can run outside its root's call (Qwen2-Audio's embed_tokens is
    # called by the top model), so on a loaded machine its backward may fall after the root's window closes.
    # Own parts partition the backward, so all stages together fit in the whole backward: counted once.
    assert total <= run.total_backward_ms * 1.01 + 0.05


def test_the_ranks_view_and_the_run_table_are_one_rule(both):
    """The RANKS table (merge) and the RUN table (stage_rollup) of the same run give the same stage times."""
    from tracer.rollup.ranks import merge
    _, report, _, runs = both
    for run in runs.values():
        merged = merge(run.to_dict(), report.component_of)
        for name, stage in merged["stages"].items():
            assert stage["forward_ms"] == [pytest.approx(run.stages[name].forward_ms, rel=1e-12)], name
            expected = run.stages[name].backward_ms
            assert stage["backward_ms"] == [None if expected is None else pytest.approx(expected, rel=1e-12)], name


def test_comparison_ratios_are_full_over_tower(both):
    _, report, _, runs = both
    tower, full = runs["audio_tower"], runs["full_forward"]
    c = compare(runs, report)
    assert c.latency_ratio_full_over_tower == full.latency_ms.median / tower.latency_ms.median
    assert c.backward_ratio_full_over_tower == full.backward_ms.median / tower.backward_ms.median
    assert c.params_ratio_full_over_tower == full.params_executed / tower.params_executed > 1
    expected_memory = (full.peak_memory_bytes / tower.peak_memory_bytes) if tower.peak_memory_bytes else None
    assert c.memory_ratio_full_over_tower == expected_memory


def test_peak_memory_sees_an_allocation(root):
    """80 MB, far above glibc's largest mmap threshold (32 MiB): the pages are mapped when touched. In a
    fresh process: in this one, earlier tests leave freed memory the allocator may hand back unseen (which
    is why the sampled RSS is a lower bound, and the tensor tracker the figure the report uses)."""
    import subprocess
    import sys
    code = ("import torch; from tracer.collect.peak_memory import PeakMemory\n"
            "with PeakMemory(torch.device('cpu')) as memory:\n    block = torch.ones(20_000_000)\n"
            "print(memory.peak_bytes)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert int(done.stdout) >= 0.9 * 20_000_000 * 4


def test_strategy_peak_memory_counts_a_large_pass():
    """A text model with a 200,000-word vocabulary: the logits, their log-softmax and their gradient are
    each about 80 MB, so the pass must show a peak of at least one of them."""
    from tracer.load.model import load_builtin
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, vocab_size=200_000, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    tokenizer = load_builtin(CPU, torch.float32).processor.tokenizer
    inputs = prepare_text_inputs(tokenizer)
    logits_bytes = inputs.full["input_ids"].shape[1] * config.vocab_size * 4
    assert logits_bytes > 40 * 2**20
    runs = run_strategies(model, static_report(model), inputs, RunOptions(repeats=1, warmup=0), CPU)
    assert runs["full_forward"].peak_memory_bytes >= logits_bytes


def test_refuted_claims_come_first(both):
    model, report, inputs, runs = both
    clip = None  # the claims on tokens are not the point here
    static_paths = {r.path for r in report.tree} - {"lm_head"}  # as if lm_head were created at run time
    verdicts = confirm(report, runs, clip, static_paths)
    # these two claims are made last; sorted, they lead
    assert [(v.claim, v.verdict) for v in verdicts[:2]] == [("every module that ran is in the static tree", "refuted")] * 2
    assert "refuted" not in [v.verdict for v in verdicts[2:]]


def test_user_train_call_inside_the_block_survives_the_exit():
    model = models.builtin_model().eval()
    with Tracer(model):
        model.train()
    assert all(m.training for m in model.modules())
    with Tracer(model):
        model.eval()
    assert not any(m.training for m in model.modules())
