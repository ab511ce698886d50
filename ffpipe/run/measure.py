"""What a run measures about its own process: device time and memory.

Timing that feeds decisions (the bottleneck bound, `partition: measured`) must measure work, not launches
and not waits: `DeviceTimer` sums spans of work per key. On a GPU kernels run asynchronously, so a span is a
pair of CUDA events recorded on the compute stream, resolved once per read; never a device-wide
synchronize, which would also wait for NCCL's streams (a receive posted ahead, a send in flight), so that
compute time would absorb communication, and a stage whose peer waits on it would deadlock (see
`ffpipe.pipeline.head_channel`). On the CPU a span is two `time.perf_counter` readings. Runners decide what
to time; stages only mark block boundaries.

Memory (`MemoryMeter`): every runner records `peak_memory_bytes`, `train_memory_bytes` and
`peak_tensor_bytes` of its process in its epoch records. On the CPU the peak resident set includes the ~300 MB
torch runtime every process carries, which swamps the activations a method holds, so the training figure
subtracts what the process held just before its first training step (after data load and model build). Even
so, RSS mixes in the allocator's caching, the Python heap and whatever else the process touched; the third
figure counts tensors only (`peak_tensor_bytes`, from one sampled training step per epoch: see `MemoryMeter`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Hashable, Iterable, Iterator

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.autograd import profiler

Mark = float | torch.cuda.Event


class DeviceTimer:
    """Seconds of device work summed per key: `start = timer.mark()`, the work, `timer.add(key, start)`.

    On the CPU the sums are kept as the spans close. On a GPU each span is two timing events of the current
    stream; `totals()` waits for the last one recorded (that stream only, one host sync per read, meant for
    an epoch's end or a throttled snapshot) and folds the spans in. Spans whose events have already passed
    are folded in as `add` goes (`query`, no wait), so a long epoch keeps few events alive."""

    _FOLD_AT = 512  # pending spans that trigger a non-blocking fold

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._sums: dict[Hashable, float] = {}
        self._pending: list[tuple[Hashable, torch.cuda.Event, torch.cuda.Event]] = []

    def mark(self) -> Mark:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, key: Hashable, start: Mark) -> None:
        """Close the span that began at `start` and add it to `key`'s sum."""
        end = self.mark()
        if not self.cuda:
            self._sums[key] = self._sums.get(key, 0.0) + (end - start)
            return
        self._pending.append((key, start, end))
        if len(self._pending) >= self._FOLD_AT:
            done = next((i for i, (_, _, e) in enumerate(self._pending) if not e.query()), len(self._pending))
            self._fold(done)

    def totals(self) -> dict[Hashable, float]:
        """Every key's seconds so far."""
        if self._pending:
            self._pending[-1][2].synchronize()
            self._fold(len(self._pending))
        return dict(self._sums)

    def reset(self) -> None:
        self.totals()  # let pending spans finish, so none is counted in the next period
        self._sums = {}

    def _fold(self, count: int) -> None:
        for key, start, end in self._pending[:count]:
            self._sums[key] = self._sums.get(key, 0.0) + start.elapsed_time(end) / 1000.0
        del self._pending[:count]


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


def _tensors(roots: Iterable, seen: set[int]) -> Iterator[torch.Tensor]:
    """Every tensor reachable from `roots`: tensors; a module's parameters and buffers; an optimizer's
    parameters and state; the items of lists, tuples, sets and dicts; the fields of dataclasses; the public
    attributes of ffpipe's own objects (a `Stage`, its `HeadSlices`). Private attributes are not walked: what
    a step keeps there in passing (the joint head's features awaiting their error) is not its standing state.
    Gradients are not yielded: `_grads` finds them."""
    for obj in roots:
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.device)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, nn.Module):
            yield from _tensors([*obj.parameters(), *obj.buffers()], seen)
        elif isinstance(obj, torch.optim.Optimizer):
            yield from _tensors([p for group in obj.param_groups for p in group["params"]], seen)
            yield from _tensors(list(obj.state.values()), seen)
        elif isinstance(obj, dict):
            yield from _tensors(list(obj.values()), seen)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            yield from _tensors(list(obj), seen)
        elif dataclasses.is_dataclass(obj) or type(obj).__module__.startswith("ffpipe."):
            yield from _tensors([v for k, v in vars(obj).items() if not k.startswith("_")], seen)


def _grads(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The leaves among `tensors` that hold a gradient (parameters, once a backward has run)."""
    return [t for t in tensors if t.is_leaf and t.requires_grad and t.grad is not None]


def tensor_bytes(tensors: Iterable[torch.Tensor], device: torch.device) -> int:
    """Bytes of the distinct storages of `tensors` on `device`: views of one storage count once, and a view
    counts its whole storage (what stays allocated while the view lives)."""
    storages: dict[int, int] = {}
    for t in tensors:
        if t.device.type == device.type and t.layout == torch.strided:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_of_events(events: Iterable[tuple[int, int]]) -> int:
    """Peak of the running sum of allocation events `(address, bytes)` in time order (bytes < 0: a free),
    above the start (0). A free counts only if its address was allocated in these events: the frees of
    tensors allocated before them are not in the sum because those tensors are not either (they are counted,
    if at all, as the state alive at the start)."""
    live: dict[int, int] = {}
    total = peak = 0
    for address, size in events:
        if size > 0:
            total += size - live.get(address, 0)  # an address reallocated without its free seen: replace it
            live[address] = size
        elif address in live:
            total -= live.pop(address)
        peak = max(peak, total)
    return peak


def _cpu_allocations(prof: profiler.profile) -> list[tuple[int, int]]:
    """The CPU allocator's events of a `profile_memory=True` profile, in time order, as (address, bytes).

    They are read from the profile's event tree (`experimental_event_tree`, torch >= 2.0): `events()` folds an
    allocation into the operator that made it and drops its address, so frees could not be matched."""
    found, stack = [], list(prof.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            found.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
    found.sort(key=lambda e: e[0])
    return [(ptr, size) for _, ptr, size in found]


@contextlib.contextmanager
def _silent_fd2() -> Iterator[None]:
    """Send file descriptor 2 (where C++ logs go) to /dev/null for the block."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def warm_up_profiler() -> None:
    """Make the profiler's one-time noise before training, silently, so the sampled steps print nothing.

    Kineto logs two lines per profile at its default level: level 6 silences them (our choice; an explicit
    KINETO_LOG_LEVEL in the environment wins; it is read at the first profile). And the first free of a
    tensor allocated before a profile logs a one-time C++ warning ("Memory block of unknown size ..."), which
    every sampled step would trigger: a free of exactly that kind is done here once, with fd 2 silenced for
    the ~1 ms of the empty profile. Only this thread runs torch then (runners make the meter before training)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    before = torch.ones(1)
    with _silent_fd2(), profiler.profile(profile_memory=True):
        del before


class MemoryMeter:
    """Peak and training memory of this process, from the moment it is made: make it just before the first
    training step, after the data is loaded and the model built.

    CPU (our choice): `peak_memory_bytes` is the process's lifetime peak RSS, runtime and data included;
    `train_memory_bytes` is the peak RSS *during training* minus the RSS at the start (the high-water mark is
    reset here), so it counts what training adds: activations and autograd graphs, gradients, optimizer state,
    wire buffers, allocator slack. If the kernel refuses the reset, the training figure is an upper bound.
    CUDA: `torch.cuda.max_memory_allocated` since the start (its peak is reset here), for both figures.

    `peak_tensor_bytes` (ours): the peak of live tensor bytes during a training step — the bytes of the tensors
    alive at the step's start that the runner passes as roots (parameters, their gradients, buffers, optimizer
    state, the packet or batch: `_tensors`), plus the peak, above the start, of what the step allocates and
    frees (activations, autograd's saved tensors, new gradients, lazily made optimizer state, the outgoing
    packet). Not counted: the dataset, Python objects, the allocator's caching and slack, memory that
    libraries take outside torch's allocator (oneDNN scratch), tensors no root reaches, and (CPU) tensors
    allocated by other threads (the wire's background threads). The figure is the largest reading so far of
    the sampled steps, one per epoch: `new_epoch` marks the next `step` as the sample. Every other `step` is a
    `nullcontext`, so unsampled steps pay nothing. A step may be measured in parts (`window`).
    - CPU: torch's CPU allocator keeps no statistics, but reports each allocation and free (address, bytes)
      to the profiler when `profile_memory` is on; the sampled step runs under `torch.autograd.profiler.
      profile` (its default, non-Kineto mode, thread-local) and `peak_of_events` replays those events. The
      allocator reports a free only for addresses it saw allocated while profiling, so the gradients alive
      at the start (which the step frees when it zeroes them, set_to_none) are re-made by a bitwise `clone`
      inside the profile first: their frees are then seen, and they are counted through their events, not
      as roots. Other tensors made before the step and freed in it are invisible: counted throughout if a
      root reaches them, else not at all. The profile costs the sampled step a few ms and a few µs per
      operator (not measured here); it is a one-step sample, not the epoch's max.
    - CUDA: the caching allocator's own counters, `max_memory_allocated` (peak reset at the step's start)
      minus `memory_allocated` at the start, plus the roots' bytes on the device. It sees every thread's and
      every pre-step tensor's frees, so the roots' gradients count as roots there.
    """

    def __init__(self, device: torch.device, tensors: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.tensors = tensors  # `train.tensor_memory`: off, no step is sampled and the reading is None
        self.tensor_peak = 0
        self.due = True
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.before = self.baseline = 0
            self.cuda_peak = 0  # the peak before the sampled steps' resets
        else:
            if tensors:
                warm_up_profiler()  # its one-time set-up and warnings, before the RSS baseline
            self.before = peak_rss_bytes()
            self.reset = reset_peak_rss()
            self.baseline = current_rss_bytes()

    def new_epoch(self) -> None:
        """The next step is this epoch's sampled step."""
        self.due = True

    def sample(self) -> bool:
        """Whether the step about to run is the epoch's sample (True once per epoch)."""
        due, self.due = self.due, False
        return due

    def step(self, *roots) -> contextlib.AbstractContextManager:
        """Wrap one training step: measured if it is the epoch's sample, else nothing at all. `roots`: what
        holds the tensors alive at its start (stages, modules, optimizers, the packet or batch)."""
        return self.window(self.sample(), *roots)

    def window(self, sampled: bool, *roots) -> contextlib.AbstractContextManager:
        """Measure a part of a sampled step (a `nullcontext` when not `sampled`); the step's reading is the
        largest of its parts'. For steps that start asynchronous communication: a gloo send started inside
        a CPU profile finishes, and records its end, on gloo's thread after the profile may have closed,
        which corrupts the profile (observed: an internal assert in `_disable_profiler`, a broken event
        tree). So a part must not start a send it does not also wait for (a blocking all-reduce is fine)."""
        if not sampled or not self.tensors:
            return contextlib.nullcontext()
        return self._cuda_sample(roots) if self.cuda else self._cpu_sample(roots)

    @contextlib.contextmanager
    def _cpu_sample(self, roots) -> Iterator[None]:
        tensors = list(_tensors(roots, set()))
        alive = tensor_bytes(tensors, self.device)  # no gradients: `_tensors` yields none
        with profiler.profile(profile_memory=True) as prof:
            for t in _grads(tensors):
                t.grad = t.grad.clone()  # bitwise the same gradient, now allocated where the profile sees it
            yield
        self.tensor_peak = max(self.tensor_peak, alive + peak_of_events(_cpu_allocations(prof)))

    @contextlib.contextmanager
    def _cuda_sample(self, roots) -> Iterator[None]:
        tensors = list(_tensors(roots, set()))
        alive = tensor_bytes(tensors + [t.grad for t in _grads(tensors)], self.device)
        self.cuda_peak = max(self.cuda_peak, torch.cuda.max_memory_allocated(self.device))
        start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        added = torch.cuda.max_memory_allocated(self.device) - start
        self.tensor_peak = max(self.tensor_peak, alive + max(0, added))

    def read(self) -> dict[str, int]:
        """{"peak_memory_bytes", "train_memory_bytes", "peak_tensor_bytes"} so far (the last 0 before any
        sampled step, None when the meter measures no tensors)."""
        tensors = {"peak_tensor_bytes": int(self.tensor_peak) if self.tensors else None}
        if self.cuda:
            peak = max(self.cuda_peak, int(torch.cuda.max_memory_allocated(self.device)))
            return {"peak_memory_bytes": peak, "train_memory_bytes": peak, **tensors}
        peak = peak_rss_bytes()
        return {"peak_memory_bytes": max(peak, self.before), "train_memory_bytes": max(0, peak - self.baseline),
                **tensors}
