"""What a run measures about its own process: device time and memory.

Timing that feeds decisions (the bottleneck bound, `partition: measured`) must measure work, not launches:
on a GPU kernels run asynchronously, so `device_clock` synchronizes the device before it reads the time.
On the CPU it is `time.perf_counter`. Runners decide what to time; stages only mark block boundaries.

Memory (`MemoryMeter`): every runner records `peak_memory_bytes` and `train_memory_bytes` of its process in
its epoch records. On the CPU the peak resident set includes the ~300 MB torch runtime every process carries,
which swamps the activations a method holds, so the training figure subtracts what the process held just
before its first training step (after data load and model build).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable

import torch


def device_clock(device: torch.device) -> Callable[[], float]:
    """A clock for timing work on `device`: `perf_counter`, after a CUDA synchronize on a GPU."""
    if device.type == "cuda":
        def clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return clock
    return time.perf_counter


def current_rss_bytes() -> int:
    """This process's resident set size now: `/proc/self/statm`'s second field (pages) x the page size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (high-water mark).

    Linux: VmHWM of `/proc/self/status`, the high-water mark of this process's own address space. Not
    `ru_maxrss`: at exec Linux folds the *parent's* high-water mark into the child's ru_maxrss, so a 13 MB
    Python started by a 600 MB parent reports 614 MB (measured), and every torchrun worker would report at
    least its launcher's torch runtime. Elsewhere `ru_maxrss` is all there is (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0: "5" to /proc/self/clear_refs,
    which touches nothing else); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak and training memory of this process, from the moment it is made: make it just before the first
    training step, after the data is loaded and the model built.

    CPU (our choice): `peak_memory_bytes` is the process's lifetime peak RSS, runtime and data included;
    `train_memory_bytes` is the peak RSS *during training* minus the RSS at the start (the high-water mark is
    reset here), so it counts what training adds: activations and autograd graphs, gradients, optimizer state,
    wire buffers, allocator slack. If the kernel refuses the reset, the training figure is an upper bound.
    CUDA: `torch.cuda.max_memory_allocated` since the start (its peak is reset here), for both figures.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.before = self.baseline = 0
        else:
            self.before = peak_rss_bytes()
            self.reset = reset_peak_rss()
            self.baseline = current_rss_bytes()

    def read(self) -> dict[str, int]:
        """{"peak_memory_bytes", "train_memory_bytes"} so far."""
        if self.cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
            return {"peak_memory_bytes": peak, "train_memory_bytes": peak}
        peak = peak_rss_bytes()
        return {"peak_memory_bytes": max(peak, self.before), "train_memory_bytes": max(0, peak - self.baseline)}
