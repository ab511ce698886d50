"""Messages between two stage processes over torch.distributed point-to-point ops.

What a message looks like in bytes is `ffpipe.pipeline.envelope`'s business: an envelope of a size the
receiver knows in advance, with the payload inline when it fits, so a steady stream costs one transfer per
message. Senders and receivers post their ops in the same order, so nothing relies on tags, which NCCL
ignores.

Overlap. gloo moves a payload only once the matching `irecv` is posted, and its works cannot be polled
(`is_completed()` stays False until `wait()`), while `wait(timeout=...)` closes the connection when it
expires. So each endpoint owns one background thread that blocks in `wait()` (which releases the GIL):
- the `Receiver`'s pump receives up to `depth` messages ahead into reused buffers, so a message crosses
  the wire while the caller still computes on the previous one;
- the `Sender`'s completion thread waits for the oldest sends to finish; `send` returns at once unless
  `depth` messages are still in flight.
The caller's thread only waits on a condition variable, in slices, so it can honour `timeout_s` and an
`abort_check` callback, and turn a dead or aborted peer into one `PeerError` instead of a hang. A peer
that exits closes its sockets; gloo then fails the pending works and the error surfaces at once.

On CUDA (NCCL) each background thread runs on its own stream and synchronizes it after `wait()`, so a
delivered tensor is complete for any stream; a buffer handed back to the pool carries an event of the
caller's stream, which the pump waits on before receiving into it again. CUDA tensors over gloo (stages
sharing one GPU, `ffpipe.device.choose_device`) travel through host memory: gloo's send and receive take CPU
tensors only. The background threads do the copies on their own streams (a send's copy first waits for an
event of the caller's stream), so the caller still never waits for the device.
Under `FFPIPE_EMULATE_NCCL=1` each op is posted through `ffpipe.pipeline.nccl_order` (NCCL's pair order).

Ending a channel: STOP and ERROR are the last message of a channel; after them the sender refuses sends
and the receiver's pump stops, so it leaves no receive posted behind. Every channel ends that way, also one
that carries messages backward: `Receiver.close` waits for that last message, because a pump still blocked
in a posted receive when the process group is torn down makes gloo call std::terminate (SIGABRT).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from ffpipe.errors import FFPipeError
from ffpipe.pipeline.buffers import BufferPool
from ffpipe.pipeline.envelope import (
    HEADER_BYTES,
    LAST_KINDS,
    Kind,
    Message,
    PeerError,
    decode_header,
    encode_header,
    envelope_bytes,
    next_envelope_bytes,
    specs_of,
)
from ffpipe.pipeline.nccl_order import post as _post

__all__ = ["Kind", "Message", "PeerError", "Receiver", "Sender", "configure_process"]

_POLL_S = 0.2  # how often a blocked caller runs abort_check
_SWITCH_INTERVAL_S = 5e-4


def configure_process() -> None:
    """Call once per process that uses the wire. Messages are handed between threads; at Python's default
    5 ms GIL switch interval a finished receive can wait that long for the compute thread to let go
    (measured: 4.9 ms vs 0.9 ms per small message), so the interval is cut to 0.5 ms."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)


def _complete(works: list, device: torch.device) -> None:
    """Block the calling thread until `works` are done (on CUDA, until their data is there)."""
    for work in works:
        work.wait()
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _to_host(tensors: list[torch.Tensor], ready: torch.cuda.Event) -> list[torch.Tensor]:
    """Pinned host copies of `tensors` once the caller's stream has reached `ready` (on this thread's stream)."""
    stream = torch.cuda.current_stream()
    stream.wait_event(ready)
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
    stream.synchronize()
    return hosts


def _use_own_stream(device: torch.device) -> None:
    """Give a background thread its own CUDA stream, so its waits never stall the caller's stream."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.set_stream(torch.cuda.Stream(device))


class _Endpoint:
    """What Sender and Receiver share: the peer, the lock with the background thread, its sticky error,
    and the caller's bounded, abortable wait."""

    def __init__(self, peer: int, depth: int, device: torch.device | str, group, timeout_s: float,
                 abort_check: Callable[[], str | None] | None):
        if not dist.is_available() or not dist.is_initialized():
            raise FFPipeError("the wire needs torch.distributed to be initialized first")
        rank, world = dist.get_rank(), dist.get_world_size()
        if not 0 <= peer < world or peer == rank:
            raise FFPipeError(f"rank {rank} cannot talk to rank {peer} in a world of {world}")
        if group is not None and not {rank, peer} <= set(dist.get_process_group_ranks(group)):
            raise FFPipeError(f"ranks {rank} and {peer} are not both in the given process group")
        if depth < 1:
            raise FFPipeError(f"wire depth must be at least 1, got {depth}")
        if timeout_s <= 0:
            raise FFPipeError(f"wire timeout must be positive, got {timeout_s}")
        self.peer, self.depth, self.group = peer, depth, group
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.host_staged = self.device.type == "cuda" and dist.get_backend(group) != "nccl"
        self.timeout_s, self.abort_check = timeout_s, abort_check
        self.process_group = group if group is not None else dist.group.WORLD
        self.group_peer = dist.get_group_rank(self.process_group, peer)  # the peer's rank in that group
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def fail_from(self, exc: BaseException, what: str) -> None:
        """Record a background failure for the caller; called by the background thread."""
        if isinstance(exc, RuntimeError):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            exc = PeerError(f"rank {self.peer} failed while {what}: {first_line}", self.peer)
        with self.cond:
            self.error = exc
            self.cond.notify_all()

    def wait_for(self, ready: Callable[[], bool], what: str) -> float:
        """Block until `ready()` (checked under the lock); return the seconds blocked."""
        start = last_check = time.perf_counter()
        deadline = start + self.timeout_s
        while True:
            with self.cond:
                if self.error is not None:
                    raise self.error
                if ready():
                    return time.perf_counter() - start
                now = time.perf_counter()
                if now >= deadline:
                    self.error = PeerError(f"nothing from rank {self.peer} for {self.timeout_s:g} s while "
                                           f"{what}", self.peer)
                    raise self.error
                self.cond.wait(min(_POLL_S, deadline - now))
            if self.abort_check is not None and time.perf_counter() - last_check >= _POLL_S:
                last_check = time.perf_counter()
                reason = self.abort_check()
                if reason:
                    with self.cond:
                        self.error = PeerError(f"aborted while {what} (peer rank {self.peer}): {reason}",
                                               self.peer)
                    raise self.error

    def isend(self, tensor: torch.Tensor):
        """Post a send of `tensor` to the peer through the process group itself, the peer's group rank looked up
        once: `dist.isend` re-checks and looks up on every call (76 µs a call against c10d's 57 µs, measured)."""
        return _post(lambda: self.process_group.send([tensor], self.group_peer, 0), self.group, self.peer)

    def irecv(self, tensor: torch.Tensor):
        """Post a receive into `tensor` from the peer (as `isend`)."""
        return _post(lambda: self.process_group.recv([tensor], self.group_peer, 0), self.group, self.peer)

    def start(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"{name}-rank{self.peer}", daemon=True)
        thread.start()
        return thread


class Sender:
    """Sends messages to `peer`; up to `depth` of them may be in flight before `send` blocks.

    A payload that travels inline is copied into the envelope. A larger one is sent from staging copies,
    pooled by (shape, dtype) like the receiver's buffers, so the caller may modify or reuse its tensors at
    once, and a stage may forward tensors it just got from a `Receiver`, whose buffers are overwritten
    after the next `recv()` (without the copy, the three-stage test of this module sees such forwarded
    tensors corrupted). `copy=False` hands large tensors over instead: the caller promises never to modify
    them, the wire keeps a reference until they have left, and a memory pass per message is saved (on a
    2-core CPU a 4 MiB copy costs about 0.3 ms against 0.75 ms to move the bytes over loopback gloo).
    """

    def __init__(self, peer: int, *, depth: int = 2, device: torch.device | str = "cpu", group=None,
                 timeout_s: float = 60.0, abort_check: Callable[[], str | None] | None = None):
        self._end = _Endpoint(peer, depth, device, group, timeout_s, abort_check)
        self._pool = BufferPool(self._end.cond, self._end.device)
        self._pending: deque[tuple[Kind, list, list[torch.Tensor], list[torch.Tensor]]] = deque()
        self._in_flight = 0
        self._closed = False
        self._promised = HEADER_BYTES  # the size of the next envelope, as the receiver expects it
        self.reset_stats()
        self._thread = self._end.start(self._complete_sends, "ffpipe-send")

    def send(self, kind: Kind, step: int, epoch: int, tensors: Sequence[torch.Tensor] = (), *,
             tags: Sequence[int] = (), copy: bool = True) -> None:
        """Queue one message; `tags`: small integers that travel in the header and arrive as `Message.tags`."""
        end = self._end
        kind = Kind(kind)
        if self._closed:
            raise FFPipeError(f"cannot send {kind.name} to rank {end.peer}: the channel already ended")
        for i, tensor in enumerate(tensors):
            if tensor.device != end.device:
                raise FFPipeError(f"tensor {i} is on {tensor.device}, but this wire sends from {end.device}")
        specs = specs_of(tensors)
        inline = envelope_bytes(specs) <= self._promised
        header = encode_header(kind, step, epoch, tensors, inline, next_envelope_bytes(specs), tags)
        self._blocked_s += end.wait_for(lambda: self._in_flight < end.depth,
                                        f"sending {kind.name} step {step} (all {end.depth} send slots busy)")
        envelope = self._pool.envelope(self._promised)
        envelope.write(header, tensors if inline else (), specs)
        pooled, held = [envelope], []
        if not inline:
            for t in tensors:
                if copy:
                    pooled.append(self._pool.tensor(tuple(t.shape), t.dtype).copy_(t.detach()))
                else:
                    held.append(t.detach().contiguous())
        buffers = [envelope.buffer, *pooled[1:], *held]
        staged = None  # host-staged: the completion thread copies and sends, after the caller's stream
        try:
            if end.host_staged:
                staged = torch.cuda.Event()
                staged.record()
                works = [t for t in buffers if t.numel()]
            else:
                works = [end.isend(t) for t in buffers if t.numel()]
        except RuntimeError as exc:
            end.fail_from(exc, f"sending {kind.name} step {step}")
            raise end.error from None
        with end.cond:
            self._in_flight += 1
            self._pending.append((kind, works, staged, pooled, held))
            end.cond.notify_all()
        self._bytes += sum(t.numel() * t.element_size() for t in buffers)
        self._messages += 1
        self._promised = header[6]
        self._closed = kind in LAST_KINDS

    def flush(self) -> None:
        """Block until every message sent so far has left."""
        self._blocked_s += self._end.wait_for(lambda: self._in_flight == 0, "flushing sends")

    def close(self) -> None:
        """Wait until the channel's last message (STOP or ERROR, already sent) has been received, then join the
        completion thread, which ends with the channel."""
        if not self._closed:
            raise FFPipeError(f"the channel to rank {self._end.peer} must end with STOP or ERROR before close")
        self.flush()
        self._thread.join(timeout=self._end.timeout_s)

    def stats(self) -> dict:
        return {"bytes": self._bytes, "messages": self._messages, "blocked_s": self._blocked_s,
                "allocations": self._pool.allocations}

    def reset_stats(self) -> None:
        self._bytes, self._messages, self._blocked_s = 0, 0, 0.0

    def _complete_sends(self) -> None:
        end = self._end
        _use_own_stream(end.device)
        while True:
            with end.cond:
                end.cond.wait_for(lambda: self._pending)
                kind, works, staged, pooled, _ = self._pending[0]
            try:
                if staged is not None:
                    works = [end.isend(t) for t in _to_host(works, staged)]
                _complete(works, end.device)
            except BaseException as exc:
                end.fail_from(exc, f"sending {kind.name}")
                return
            self._pool.give_back(pooled, None)
            with end.cond:
                self._pending.popleft()  # drops the references to handed-over tensors too
                self._in_flight -= 1
                end.cond.notify_all()
            if kind in LAST_KINDS:
                return


class Receiver:
    """Receives messages from `peer`, up to `depth` of them ahead of the caller.

    `recv()` returns tensors that are views of reused receive buffers: they stay valid until the next
    `recv()` call, after which the pump may receive into them again. Copy what must live longer.
    Buffers are pooled by (shape, dtype), so once the shapes have been seen nothing is allocated;
    `stats()["allocations"]` counts the buffers ever made.
    """

    def __init__(self, peer: int, *, depth: int = 2, device: torch.device | str = "cpu", group=None,
                 timeout_s: float = 60.0, abort_check: Callable[[], str | None] | None = None):
        self._end = _Endpoint(peer, depth, device, group, timeout_s, abort_check)
        self._pool = BufferPool(self._end.cond, self._end.device)
        self._ready: deque[tuple[Message, list, int]] = deque()  # message, its buffers, bytes
        self._held = 0  # messages the pump is receiving or has ready, not yet taken by recv()
        self._lent: list = []  # the buffers of the message the caller holds
        self._ended = False
        self.reset_stats()
        self._thread = self._end.start(self._pump, "ffpipe-recv")

    def recv(self) -> Message:
        end = self._end
        if self._ended:
            raise FFPipeError(f"no more messages from rank {end.peer}: the channel ended or was closed")
        self._give_back_lent()
        # What already arrived is delivered before a failure of the pump is reported.
        idle = 0.0 if self._ready else end.wait_for(lambda: bool(self._ready), "waiting for the next message")
        with end.cond:
            message, self._lent, nbytes = self._ready.popleft()
            self._held -= 1
            end.cond.notify_all()
        self._idle_s += idle
        self._bytes += nbytes
        self._messages += 1
        self._ended = message.kind in LAST_KINDS
        return message

    def stats(self) -> dict:
        return {"bytes": self._bytes, "messages": self._messages, "idle_s": self._idle_s,
                "allocations": self._pool.allocations}

    def reset_stats(self) -> None:
        self._bytes, self._messages, self._idle_s = 0, 0, 0.0

    def close(self) -> None:
        """End this side of the channel after the sender's last message (STOP or ERROR).

        If the caller has not received it yet, it is received here (within the timeout): a channel ends
        because its sender said so, never because the process exits with a receive still posted, which gloo
        answers with std::terminate when the process group is torn down under the waiting pump. Any other
        message arriving here means the caller stopped reading too early, and is a `PeerError`. The pump
        stops by itself after the last message; this joins it.
        """
        end = self._end
        while not self._ended:
            message = self.recv()
            if message.kind not in LAST_KINDS:
                raise PeerError(f"rank {end.peer} sent {message.kind.name} step {message.step} after this side "
                                "stopped reading", end.peer)
        self._give_back_lent()
        self._thread.join(timeout=end.timeout_s)
        if self._thread.is_alive():
            raise PeerError(f"the receive thread for rank {end.peer} did not end with its channel", end.peer)

    def _give_back_lent(self) -> None:
        """Return the caller's buffers to the pool; on CUDA with an event marking the caller's last use."""
        if not self._lent:
            return
        event = None
        if self._end.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self._end.device))
        self._pool.give_back(self._lent, event)
        self._lent = []

    def _receive_into(self, tensors: list[torch.Tensor]) -> None:
        """Receive the next tensors from the peer into `tensors`, through pinned host buffers when staged."""
        end = self._end
        if not end.host_staged:
            _complete([end.irecv(t) for t in tensors], end.device)
            return
        hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        _complete([end.irecv(h) for h in hosts], torch.device("cpu"))
        for t, h in zip(tensors, hosts):
            t.copy_(h, non_blocking=True)
        torch.cuda.current_stream(end.device).synchronize()

    def _pump(self) -> None:
        end = self._end
        _use_own_stream(end.device)
        size, what = HEADER_BYTES, "receiving a message"
        try:
            while True:
                with end.cond:
                    end.cond.wait_for(lambda: self._held < end.depth)
                    self._held += 1
                envelope = self._pool.envelope(size)
                self._receive_into([envelope.buffer])
                header = decode_header(envelope.header(), end.peer)
                buffers, nbytes = [envelope], size
                if header.inline:
                    tensors = envelope.views(header.specs)
                else:
                    what = f"receiving the tensors of {header.kind.name} step {header.step}"
                    tensors = [self._pool.tensor(shape, dtype) for shape, dtype in header.specs]
                    self._receive_into([t for t in tensors if t.numel()])
                    buffers += tensors
                    nbytes += sum(t.numel() * t.element_size() for t in tensors)
                message = Message(header.kind, header.step, header.epoch, tensors, header.tags)
                with end.cond:
                    self._ready.append((message, buffers, nbytes))
                    end.cond.notify_all()
                if header.kind in LAST_KINDS:
                    return
                size, what = header.next_bytes, "receiving a message"
        except BaseException as exc:
            end.fail_from(exc, what)
