"""The wire between real processes: gloo over loopback TCP, 2 or 3 ranks, one torch thread each.

Children come from a forkserver that imported torch once, so a test pays for process start-up, not for
importing torch in every rank. Each rank reports one result through a queue; nothing sleeps to wait.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist

from ffpipe.errors import FFPipeError
from ffpipe.pipeline.envelope import (
    HEADER_BYTES,
    INLINE_MAX_BYTES,
    MAX_NDIM,
    MAX_TAGS,
    MAX_TENSORS,
    Envelope,
    decode_header,
    encode_header,
    envelope_bytes,
    next_envelope_bytes,
    specs_of,
)
from ffpipe.pipeline.wire import Kind, PeerError, Receiver, Sender

STEPS = 50
_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "torch.distributed", "ffpipe.pipeline.wire"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(target, rank: int, world: int, port: int, results, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        results.put((rank, target(rank, *args)))
    except BaseException as exc:
        results.put((rank, {"crash": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}))


def _launch(target, world: int, *args, reporting: tuple[int, ...] | None = None, timeout_s: float = 20.0):
    """Run target(rank, *args) in `world` processes; return ({rank: result}, {rank: exit code})."""
    reporting = tuple(range(world)) if reporting is None else reporting
    results = _CTX.Queue()
    port = _free_port()
    procs = [_CTX.Process(target=_rank_main, args=(target, rank, world, port, results, args))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout_s
    got = {}
    try:
        while len(got) < len(reporting):
            try:
                rank, result = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"ranks {sorted(set(reporting) - set(got))} did not report within {timeout_s} s")
            got[rank] = result
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert not hung, f"ranks {hung} did not end"
    crashes = {rank: r["crash"] for rank, r in got.items() if isinstance(r, dict) and "crash" in r}
    assert not crashes, crashes
    return got, {rank: proc.exitcode for rank, proc in enumerate(procs)}


def _payload(step: int) -> list[torch.Tensor]:
    """Mixed dtypes and ranks; the first tensor changes shape halfway through the stream."""
    gen = torch.Generator().manual_seed(step)
    rows = 4 if step < STEPS // 2 else 7
    return [torch.randn(rows, 6, generator=gen),
            torch.randn(3, 2, 5, generator=gen).to(torch.bfloat16),
            torch.randn(9, generator=gen).to(torch.float16),
            torch.randint(0, 10, (rows,), generator=gen),
            torch.tensor(float(step))]


def _kind(step: int) -> Kind:
    return Kind.EVAL if step % 5 == 4 else Kind.TRAIN


def _stage_chain(rank: int, depth: int) -> object:
    """0 produces, 1 doubles the floats and forwards the labels as received, 2 records."""
    if rank == 0:
        out = Sender(1, depth=depth, timeout_s=10)
        for step in range(STEPS):
            out.send(_kind(step), step, step // 20, _payload(step))
        out.send(Kind.EPOCH_END, STEPS, 2)
        out.send(Kind.STOP, STEPS, 2)
        out.flush()
        return out.stats()
    if rank == 1:
        inp, out = Receiver(0, depth=depth, timeout_s=10), Sender(2, depth=depth, timeout_s=10)
        while True:
            msg = inp.recv()
            floats = [t * 2 for t in msg.tensors if t.is_floating_point()]
            labels = [t for t in msg.tensors if not t.is_floating_point()]
            out.send(msg.kind, msg.step, msg.epoch, floats + labels)
            if msg.kind == Kind.STOP:
                out.flush()
                inp.close()
                return inp.stats()
    inp = Receiver(1, depth=depth, timeout_s=10)
    seen, wrong = [], []
    while True:
        msg = inp.recv()
        seen.append((int(msg.kind), msg.step, msg.epoch))
        if msg.kind in (Kind.TRAIN, Kind.EVAL):
            sent = _payload(msg.step)
            want = [t * 2 for t in sent if t.is_floating_point()] + [sent[3]]
            if len(want) != len(msg.tensors) or not all(
                    w.dtype == g.dtype and w.shape == g.shape and torch.equal(w, g)
                    for w, g in zip(want, msg.tensors, strict=True)):
                wrong.append(msg.step)
        elif msg.tensors:
            wrong.append(("tensors on", int(msg.kind)))
        if msg.kind == Kind.STOP:
            inp.close()
            return {"seen": seen, "wrong": wrong, "stats": inp.stats()}


def _expected_kinds() -> list[tuple[int, int, int]]:
    stream = [(int(_kind(step)), step, step // 20) for step in range(STEPS)]
    return stream + [(int(Kind.EPOCH_END), STEPS, 2), (int(Kind.STOP), STEPS, 2)]


def _payload_bytes(step: int) -> int:
    return sum(t.numel() * t.element_size() for t in _payload(step))


def test_header_round_trip_and_limits():
    tensors = [torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros((), dtype=torch.int64),
               torch.zeros([1] * MAX_NDIM, dtype=torch.float16), torch.zeros(0, 4)]
    values = encode_header(Kind.EVAL, 7, 3, tensors, inline=True, next_bytes=4096, tags=(2, 0, 5))
    header = decode_header(values, peer=1)
    assert (header.kind, header.step, header.epoch, header.tags) == (Kind.EVAL, 7, 3, (2, 0, 5))
    assert header.specs == [(tuple(t.shape), t.dtype) for t in tensors]
    assert header.inline and header.next_bytes == 4096
    full = decode_header(encode_header(Kind.TRAIN, 1, 1, [torch.zeros(1)] * MAX_TENSORS, tags=range(MAX_TAGS)), 0)
    assert full.tags == tuple(range(MAX_TAGS)) and len(full.specs) == MAX_TENSORS
    with pytest.raises(FFPipeError, match="at most"):
        encode_header(Kind.TRAIN, 0, 0, [torch.zeros(1)] * (MAX_TENSORS + 1))
    with pytest.raises(FFPipeError, match="at most"):
        encode_header(Kind.TRAIN, 0, 0, [], tags=[0] * (MAX_TAGS + 1))
    with pytest.raises(FFPipeError, match="dimensions"):
        encode_header(Kind.TRAIN, 0, 0, [torch.zeros([1] * (MAX_NDIM + 1))])
    with pytest.raises(FFPipeError, match="dtype"):
        encode_header(Kind.TRAIN, 0, 0, [torch.zeros(2, dtype=torch.complex64)])
    with pytest.raises(PeerError, match="rank 1"):
        decode_header([v + 1 for v in values], peer=1)


def test_an_envelope_carries_mixed_dtypes_inline_at_aligned_offsets():
    tensors = [torch.arange(3, dtype=torch.int16), torch.tensor([True, False]), torch.randn(2, 3).bfloat16(),
               torch.zeros(0), torch.arange(5, dtype=torch.float64).reshape(5, 1)[::2]]  # a strided view too
    specs = specs_of(tensors)
    size = envelope_bytes(specs)
    assert size == HEADER_BYTES + 8 + 8 + 16 + 0 + 24
    sent, received = Envelope(size, torch.device("cpu")), Envelope(size, torch.device("cpu"))
    sent.write(encode_header(Kind.TRAIN, 1, 0, tensors, inline=True, next_bytes=size), tensors, specs)
    received.buffer.copy_(sent.buffer)  # what the wire does between the two processes
    header = decode_header(received.header(), peer=0)
    for got, want in zip(received.views(header.specs), tensors, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    big = specs_of([torch.zeros(INLINE_MAX_BYTES // 4 + 1)])
    assert next_envelope_bytes(specs) == size and next_envelope_bytes(big) == HEADER_BYTES


def test_three_stage_chain_delivers_every_message_exactly():
    got, _ = _launch(_stage_chain, 3, 2)
    assert got[2]["wrong"] == []
    assert got[2]["seen"] == _expected_kinds()
    sent = got[0]
    assert sent["messages"] == STEPS + 2
    # each envelope has the size the previous message promised: the first just a header (its payload
    # follows it), every later one room for the previous payload (rank 0 sends the payloads of _payload)
    sizes = [HEADER_BYTES] + [envelope_bytes(specs_of(_payload(step))) for step in range(STEPS)] + [HEADER_BYTES]
    assert sent["bytes"] == sum(sizes) + _payload_bytes(0) + _payload_bytes(STEPS // 2)
    assert got[1]["messages"] == STEPS + 2 and got[1]["bytes"] == sent["bytes"]


def _depths(rank: int) -> object:
    """Every depth carries the same stream, and the receiver fetches `depth` messages before the first
    recv(); returns per depth what rank 1 saw."""
    seen = {}
    for depth in (1, 2, 4):
        if rank == 0:
            out = Sender(1, depth=depth, timeout_s=5)
            for step in range(30):
                out.send(Kind.TRAIN, step, depth, _payload(step))
                if step == depth - 1:
                    out.flush()  # completes only if rank 1's receiver took `depth` messages unasked
                    dist.barrier()
            out.send(Kind.STOP, 30, depth)
            out.flush()
            with pytest.raises(FFPipeError, match="ended"):
                out.send(Kind.TRAIN, 31, depth)
            continue
        inp = Receiver(0, depth=depth, timeout_s=5)
        dist.barrier()
        trace = []
        while (msg := inp.recv()).kind != Kind.STOP:
            trace.append((msg.step, msg.epoch, [t.double().sum().item() for t in msg.tensors]))
        with pytest.raises(FFPipeError, match="ended"):
            inp.recv()
        seen[depth] = trace
    return seen


def test_every_depth_delivers_the_same_stream_in_order():
    got, _ = _launch(_depths, 2)
    want = [(step, [t.double().sum().item() for t in _payload(step)]) for step in range(30)]
    for depth, trace in got[1].items():
        assert [(step, sums) for step, _, sums in trace] == want, depth
        assert {epoch for _, epoch, _ in trace} == {depth}


def _counting(step: int, rows: int) -> list[torch.Tensor]:
    return [torch.full((rows, 32), float(step)), torch.arange(8) + step]


def _reuse(rank: int, rows: int) -> object:
    """A steady stream allocates nothing: the caller holds one message and the pump at most `depth` = 2 more,
    so at most three messages' buffers ever exist. Returns the allocation count after every recv(), the
    distinct buffers message tensors lived in (message 0 aside, which is sent before the receiver knows its
    size), and whether every message arrived intact."""
    if rank == 0:
        out = Sender(1, depth=2, timeout_s=10)
        for step in range(40):
            out.send(Kind.TRAIN, step, 0, _counting(step, rows))
        out.send(Kind.STOP, 40, 0)
        out.flush()
        return out.stats()
    inp = Receiver(0, depth=2, timeout_s=10)
    allocations, pointers, ok = [], set(), True
    while (msg := inp.recv()).kind != Kind.STOP:
        allocations.append(inp.stats()["allocations"])
        if msg.step:
            pointers.add(msg.tensors[0].data_ptr())
        ok &= all(torch.equal(got, want) for got, want in zip(msg.tensors, _counting(msg.step, rows), strict=True))
    return {"allocations": allocations, "pointers": len(pointers), "ok": ok}


@pytest.mark.parametrize("rows", [64, 4096], ids=["inline", "separate"])
def test_receive_and_send_buffers_are_reused_after_warm_up(rows):
    got, _ = _launch(_reuse, 2, rows)
    assert got[1]["ok"]
    # Inline (8 KiB per message): three envelopes in circulation, plus message 0's header-only envelope and
    # its two tensors, which it carried separately. Separate (512 KiB, over INLINE_MAX_BYTES): three
    # messages of a header-only envelope and two tensors each.
    most = 3 + 1 + 2 if rows == 64 else 3 * 3
    assert len(got[1]["allocations"]) == 40 and max(got[1]["allocations"]) <= most
    assert got[1]["pointers"] <= 3
    assert got[0]["allocations"] <= most  # at most depth messages in flight, likewise


def _dead_middle(rank: int) -> object:
    """1 dies after forwarding 5 messages; 0 (sending) and 2 (receiving) must both get PeerError."""
    start = time.monotonic()
    try:
        if rank == 0:
            out = Sender(1, depth=2, timeout_s=5)
            for step in range(100_000):
                out.send(Kind.TRAIN, step, 0, [torch.randn(16)])
            out.flush()
        elif rank == 1:
            inp, out = Receiver(0, timeout_s=5), Sender(2, timeout_s=5)
            for _ in range(5):
                msg = inp.recv()
                out.send(msg.kind, msg.step, msg.epoch, msg.tensors)
            out.flush()
            os._exit(3)
        else:
            inp = Receiver(1, timeout_s=5)
            for _ in range(6):
                inp.recv()
    except PeerError as exc:
        return {"error": str(exc), "peer": exc.peer, "seconds": time.monotonic() - start}
    return {"error": None}


def test_a_dead_peer_raises_peer_error_on_both_neighbours():
    got, codes = _launch(_dead_middle, 3, reporting=(0, 2))
    assert codes[1] == 3
    for rank in (0, 2):
        assert got[rank]["error"] is not None, f"rank {rank} never noticed"
        assert got[rank]["peer"] == 1 and "rank 1" in got[rank]["error"]
        assert got[rank]["seconds"] < 5, got[rank]


def _aborts(rank: int) -> object:
    """Rank 1 stays silent; rank 0's recv and send must end by abort_check or by timeout, not hang."""
    if rank == 1:
        dist.barrier()
        return None
    bad_input = []
    on_meta = [torch.zeros(2, device="meta")]
    for make in [lambda: Sender(0), lambda: Receiver(2), lambda: Sender(1, depth=0),
                 lambda: Receiver(1, timeout_s=0), lambda: Sender(1).send(Kind.TRAIN, 0, 0, on_meta)]:
        try:
            make()
        except FFPipeError as exc:
            bad_input.append(str(exc))
    calls = []

    def third_call_fails() -> str | None:
        calls.append(time.monotonic())
        return "stage 2 reported a failure" if len(calls) >= 3 else None

    outcome = {}
    for name, make in [("recv", lambda: Receiver(1, timeout_s=30, abort_check=third_call_fails)),
                       ("send", lambda: Sender(1, depth=1, timeout_s=30, abort_check=third_call_fails)),
                       ("timeout", lambda: Receiver(1, timeout_s=0.5))]:
        calls.clear()
        end = make()
        start = time.monotonic()
        try:
            if isinstance(end, Receiver):
                end.recv()
            else:
                for step in range(3):
                    end.send(Kind.TRAIN, step, 0, [torch.zeros(4)])
            outcome[name] = None
        except PeerError as exc:
            outcome[name] = (str(exc), len(calls), time.monotonic() - start)
    dist.barrier()
    return {**outcome, "bad_input": bad_input}


def test_abort_check_and_timeout_end_blocked_calls_promptly():
    got, _ = _launch(_aborts, 2)
    for name in ("recv", "send"):
        message, calls, seconds = got[0][name]
        assert "stage 2 reported a failure" in message and "rank 1" in message
        assert calls == 3 and seconds < 2.0
    assert len(got[0]["bad_input"]) == 5, got[0]["bad_input"]
    message, calls, seconds = got[0]["timeout"]
    assert "nothing from rank 1 for 0.5 s" in message and 0.5 <= seconds < 2.0
