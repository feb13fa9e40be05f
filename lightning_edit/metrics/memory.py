"""Peak memory of a block of code: CUDA's allocator peak on GPU; on CPU the kernel's peak resident set size (VmHWM, reset at the start), or a sampled RSS where it cannot be reset."""
from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _release_free_heap() -> None:
    """Hand memory that earlier work freed, but glibc's allocator still holds, back to the kernel (malloc_trim),
    so a block's peak counts what it holds rather than what came before it. A no-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM missing from /proc/self/status")


class PeakMemoryMonitor:
    """``with PeakMemoryMonitor() as m: ...`` then ``m.peak_mb`` (process peak during the block) and
    ``m.added_mb`` (peak minus the level at entry: what the block itself needed).

    On CUDA the allocator's own peak is read. On CPU (torch's CPU allocator has no peak counter) the kernel's
    peak resident set size is reset at entry and read at exit (Linux ``/proc/self/clear_refs``): exact and free.
    Heap that earlier work freed is handed back first (``malloc_trim``), or it would count as the block's.
    Where that is unavailable, the resident set size is sampled every ``interval`` seconds in a thread; the
    sampling thread contends for the GIL and slowed timed edits by a third at 10 ms, hence the coarse default.
    The kernel counter is per process: an inner monitor's reset hides what an enclosing one saw before it.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.05):
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
        _release_free_heap()
        self._start = _rss_bytes()
        self._peak = self._start
        self._kernel_peak = _reset_peak_rss()
        if self._kernel_peak:
            return self
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
        elif self._kernel_peak:
            peak = max(self._start, _peak_rss_bytes())
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb = peak / 2**20
        self.added_mb = (peak - self._start) / 2**20
