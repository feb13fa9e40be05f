"""Peak memory of a block of code: CUDA's allocator peak on GPU, sampled resident set size on CPU."""
from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakMemoryMonitor:
    """``with PeakMemoryMonitor() as m: ...`` then ``m.peak_mb`` (process peak during the block) and
    ``m.added_mb`` (peak minus the level at entry: what the block itself needed).

    On CPU the resident set size is sampled every ``interval`` seconds in a thread (torch's CPU allocator
    has no peak counter); on CUDA the allocator's own peak is read.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.01):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb = 0.0
        self.added_mb = 0.0

    def __enter__(self) -> "PeakMemoryMonitor":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb = peak / 2**20
        self.added_mb = (peak - self._start) / 2**20
