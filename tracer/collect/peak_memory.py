"""Peak memory of a block of work: the CUDA allocator's peak on GPU, sampled RSS growth on CPU."""
from __future__ import annotations

import os
import threading

import torch


def _rss_bytes() -> int:
    """Anonymous resident memory (resident less file-backed and shared pages): what allocations take; the
    pages of mmapped weights and libraries come and go with the page cache, unrelated to the block."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes`` (growth over the start) and ``m.kind``.

    On CPU a thread samples the anonymous resident set every millisecond: the peak is a lower bound, and it counts
    everything the process allocates, not only tensors.
    """

    def __init__(self, device, interval_s: float = 0.001):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "sampled peak RSS growth (anonymous pages)"

    def __enter__(self):
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import gc
        gc.collect()  # garbage freed by a collection inside the block would hide the block's own growth
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_bytes = self._peak - self._base


class CudaAllocatorMemory:
    """The CUDA caching allocator's bytes in use, as a memory source for the Tracer: ``read()`` gives
    (current, peak since ``reset_peak()``). tensor_memory.TensorMemory is the other source (any device)."""

    def __init__(self, device_index: int | None):
        self.device_index = device_index

    def read(self) -> tuple[int, int]:
        # NB: memory_allocated() and max_memory_allocated() each flatten and sort every allocator
        # statistic (~100 µs a call on the hot path): one nested query gives both
        stat = torch.cuda.memory_stats_as_nested_dict(self.device_index)["allocated_bytes"]["all"]
        return stat["current"], stat["peak"]

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device_index)
