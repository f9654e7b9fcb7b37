"""Tensor memory on any device: the bytes of tensor storages created inside a block and still alive.

Process memory (RSS) says almost nothing about a model's pass on CPU: the allocator keeps the pages it
already has. This follows storages instead, as PyTorch's own ``MemTracker`` does (a TorchDispatchMode sees
every op's outputs; a weak reference tells when a storage dies). ``MemTracker`` itself cannot be used here:
it registers a tensor hook on every parameter and fails on the frozen base weights of a LoRA model.

What is counted: storages created by ops inside the block on ``device``, once per storage (views share
theirs). Weights and inputs made before the block are not counted (they are the baseline; the
``parameters`` figure says how much the weights take). Each live storage is a *gradient* (it became a
parameter's ``.grad``), an *activation* (autograd saved it for backward) or a *temporary* (anything else).
Not seen: tensors made outside the dispatcher (``torch.from_numpy``) and memory kernels use internally.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .sharding import is_sharded
from ..load.quantization import state_bytes

KINDS = ("activations", "gradients", "temporaries")


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory(device, model) as tm: ...`` then ``tm.peak``, ``tm.peak_by_kind``, ``tm.parameters``.

    While active, ``read()`` gives (live bytes now, their peak since ``reset_peak()``): the Tracer uses that
    for per-module memory where there is no CUDA allocator to ask.
    """

    def __init__(self, device, model: torch.nn.Module | None = None):
        super().__init__()
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # tensors say cuda:0, never bare cuda
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.model = model
        self.current = 0
        self.peak = 0
        self.parameters = 0
        self._window_peak = 0
        self._step = 0  # one tick per storage made or freed: the clock that places each life and the peak
        self._peak_step = 0
        self._storages: list = []  # [bytes, kind, step made, step freed or None, weakref] per storage
        self._live: dict = {}  # storage key -> its entry in _storages
        self._handles: list = []
        self._untracked = 0

    def __enter__(self):
        from .sharding import local
        params = list(self.model.parameters()) if self.model is not None else []
        seen = set()
        for p in params:  # the weights, once per storage (tied weights share one); a shard under FSDP2
            storage = local(p).untyped_storage()
            if p.device == self.device and storage._cdata not in seen:
                seen.add(storage._cdata)
                # a 4-/8-bit weight's absmax or row scales are the weights' bytes too (no parameters themselves)
                self.parameters += storage.nbytes() + state_bytes(p)
        self._handles = [p.register_post_accumulate_grad_hook(self._grad_arrived) for p in params if p.requires_grad]
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._saved.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._saved.__exit__(None, None, None)
            for handle in self._handles:
                handle.remove()
            self._handles = []

    # -- what the Tracer reads ----------------------------------------------------------------------------
    def read(self) -> tuple[int, int]:
        return self.current, self._window_peak

    def reset_peak(self) -> None:
        self._window_peak = self.current

    @contextmanager
    def untracked(self):
        """Tensors the reader makes for itself inside (the Tracer's gradient norms) are not the model's."""
        self._untracked += 1
        try:
            yield
        finally:
            self._untracked -= 1

    @property
    def peak_by_kind(self) -> dict:
        """The peak split by what each storage alive at that moment turned out to be (a gradient is known as
        one only once it is accumulated, so the split is made afterwards, from each storage's final kind)."""
        split = dict.fromkeys(KINDS, 0)
        for nbytes, kind, made, freed, _ in self._storages:
            if made <= self._peak_step and (freed is None or freed > self._peak_step):
                split[kind] += nbytes
        return split

    def live_by_kind(self) -> dict:
        """What is alive now, by kind."""
        split = dict.fromkeys(KINDS, 0)
        for nbytes, kind, *_ in self._live.values():
            split[kind] += nbytes
        return split

    # -- following storages -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._untracked:
            return out
        inputs = None
        for item in tree_flatten(out)[0]:
            # NB: a DTensor (FSDP2) has no storage of its own: its shard's ops come through here too
            if isinstance(item, torch.Tensor) and item.device == self.device and not is_sharded(item):
                storage = item.untyped_storage()
                if storage._cdata not in self._live:
                    if inputs is None:  # NB: a view or in-place result of a tensor made before: not new
                        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                                  if isinstance(t, torch.Tensor) and t.device == self.device
                                  and not is_sharded(t)}
                    if storage._cdata in inputs:
                        continue
                self._track(storage)
        return out

    def _track(self, storage) -> None:
        key = storage._cdata
        entry = self._live.get(key)
        nbytes = storage.nbytes()
        if entry is None:
            ref = weakref.ref(storage, lambda _, key=key: self._free(key))
            self._step += 1
            entry = [nbytes, "temporaries", self._step, None, ref]
            self._live[key] = entry
            self._storages.append(entry)
            self._grow(nbytes)
        elif entry[0] != nbytes:  # resized in place (an out= op)
            self._grow(nbytes - entry[0])
            entry[0] = nbytes

    def _retag(self, storage, kind: str) -> None:
        entry = self._live.get(storage._cdata)
        if entry is not None:
            entry[1] = kind

    def _grow(self, nbytes: int) -> None:
        self.current += nbytes
        if self.current > self._window_peak:
            self._window_peak = self.current
        if self.current > self.peak:
            self.peak = self.current
            self._peak_step = self._step

    def _free(self, key) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
            self._step += 1
            entry[3] = self._step
            entry[4] = None

    def _pack(self, tensor):
        if tensor.device == self.device and not is_sharded(tensor):
            self._retag(tensor.untyped_storage(), "activations")
        return tensor

    def _grad_arrived(self, param) -> None:
        if param.grad is not None and param.grad.device == self.device:
            from .sharding import local
            self._retag(local(param.grad).untyped_storage(), "gradients")


def _unpack(tensor):
    return tensor
