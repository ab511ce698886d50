"""NCCL's pair order, given to gloo on the CPU (`FFPIPE_EMULATE_NCCL=1`), so tests catch NCCL deadlocks.

NCCL's pair semantics on the CPU (`FFPIPE_EMULATE_NCCL=1`, for tests): ProcessGroupNCCL runs every send and
receive between two ranks of one process group on one in-order stream, whatever their direction, so a
receive posted first blocks a later send on that pair until it completes; and `cudaDeviceSynchronize`
waits for NCCL's kernels too. gloo has neither property, so a schedule that deadlocks under NCCL runs fine
on gloo. Under the emulation every op of a (process group, rank pair) runs through one in-order queue here
(`_PairQueue`), and `synchronize_device` waits until every op this process posted has completed: what a
device-wide synchronize would wait for. The pipeline's channels obey both rules by design (each direction
of a rank pair on its own process group; no device-wide synchronize while ops are posted).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = ["emulating_nccl", "post", "synchronize_device"]

_EMULATE_NCCL = os.environ.get("FFPIPE_EMULATE_NCCL") == "1"  # read once: every send and receive asks


def emulating_nccl() -> bool:
    """Whether this process runs the wire under NCCL's pair semantics (`FFPIPE_EMULATE_NCCL=1`)."""
    return _EMULATE_NCCL


class _QueuedWork:
    """A send or receive waiting its turn on its pair's queue; `wait()` as a torch work's."""

    def __init__(self, start: Callable[[], object]):
        self.start = start
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> bool:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return True


class _PairQueue:
    """One rank pair's ops of one process group, run one at a time in the order they were posted, by one
    thread: the next op is posted to gloo only once the previous has completed. After a failure every later
    op fails with it, as a broken NCCL communicator does."""

    _all: dict[tuple[int, int], _PairQueue] = {}
    _lock = threading.Lock()
    _posted: set[_QueuedWork] = set()
    _idle = threading.Condition(_lock)

    def __init__(self):
        self.ops: deque[_QueuedWork] = deque()
        self.cond = threading.Condition()
        self.failed: BaseException | None = None
        threading.Thread(target=self._run, name="ffpipe-nccl-pair", daemon=True).start()

    @classmethod
    def post(cls, group, peer: int, start: Callable[[], object]) -> _QueuedWork:
        key = (id(group if group is not None else dist.group.WORLD), peer)
        with cls._lock:
            queue = cls._all.get(key) or cls._all.setdefault(key, cls())
            work = _QueuedWork(start)
            cls._posted.add(work)
        with queue.cond:
            queue.ops.append(work)
            queue.cond.notify()
        return work

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.ops)
                work = self.ops.popleft()
            if self.failed is None:
                try:
                    work.start().wait()
                except BaseException as exc:
                    self.failed = exc
            work.error = self.failed
            work.done.set()
            with self._idle:
                self._posted.discard(work)
                self._idle.notify_all()


def synchronize_device(device: torch.device) -> None:
    """A device-wide synchronize as NCCL makes it: on CUDA `torch.cuda.synchronize`, which also waits for NCCL's
    kernels, that is for every send and receive this process has posted; under the emulation, a wait until
    every op posted through it has completed. It deadlocks wherever a peer still waits on this process, so
    the only caller is `topology.leave`, after every channel of the run has ended."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if _EMULATE_NCCL:
        with _PairQueue._idle:
            _PairQueue._idle.wait_for(lambda: not _PairQueue._posted)


def post(start: Callable[[], object], group, peer: int):
    """Start one send or receive with `peer` (`start()` posts it and returns its work); under the emulation,
    in turn on the pair's queue."""
    if _EMULATE_NCCL:
        return _PairQueue.post(group, peer, start)
    return start()
