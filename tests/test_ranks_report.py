"""The RANKS section's parts by hand: each instant of a backward given to one module, names never blank."""
from tracer.module_paths import label
from tracer.rollup.calls import own_backward_ns


def test_own_backward_counts_each_instant_once_in_the_innermost_open_window():
    """A parent [0, 100] around two siblings that open at 10 and 20 and both close at 60 (q/k/v_proj: their
    shared input's gradient), a wait inside the second (it runs last), one module without a window. The
    windows sum to 190; their own times to 100, the backward's length."""
    starts = [0, 10, 20, None, 70]
    ends = [100, 60, 60, None, 80]
    assert own_backward_ns(starts, ends) == [40, 10, 40, None, 10]
    assert own_backward_ns([], []) == []
    assert own_backward_ns([5], [5]) == [0]  # a window of no length


def test_labels_are_never_blank():
    """The module a tracer was given is (root); wrappers that stand for the model keep their path; FSDP1's unit
    wrappers and PEFT's prefix are left out of the rest."""
    assert label("") == "(root)"
    assert label("base_model.model") == "(base_model.model)"
    assert label("_fsdp_wrapped_module") == "(_fsdp_wrapped_module)"
    assert label("_fsdp_wrapped_module.base_model.model.model.layers.1._fsdp_wrapped_module.mlp") == \
        "model.layers.1.mlp"
    assert label("module.base_model.model.lm_head") == "module.base_model.model.lm_head"
