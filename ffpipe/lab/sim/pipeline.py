"""An event-driven simulator of ffpipe's pipeline schedule, with the wire's bounded queues.

It runs the loop of `ffpipe.pipeline.worker` for every stage k, in simulated time:

    receive packet t from stage k-1 (blocking; stage 0 reads data)  ->  forward (f_k)
    ->  send to stage k+1 (returns at once unless `depth` sends are in flight)  ->  update (u_k + all-reduce)
    ->  [joint head] the last stage sends step t's error to every earlier stage; stage k applies the error of
        step t - (P-1-k) after its own step t (blocking), the rest at the end.

and the channel of `ffpipe.pipeline.wire` between two stages: the sender has at most `depth` messages in
flight (a send completes when its transfer ends); the receiver's pump holds at most `depth` messages being
received or received but not yet taken; one message at a time crosses the link, for latency + bytes /
bandwidth (`ffpipe.lab.sim.links`). With R replicas per stage every replica runs the same schedule on its B/R
shard, so one replica chain is simulated, and each update adds a ring all-reduce of each trained block's
gradients over the R replicas; their links are assumed separate from the pipeline's. The engine makes one
flattened all-reduce per step (`pipeline.topology.averager`), so the model pays the latency once per block
where the engine pays it once per step: about 2% of a CNN-14 replica step at the measured CPU latency.

Stage times may be one number or a sequence cycled by step (deterministic jitter). Throughput is measured in
steady state: the completion rate of the last stage's steps over a window after `warmup` steps, the window
trimmed to a multiple of the jitter cycles so that a periodic regime is measured exactly.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim.links import Link, link_preset, ring_allreduce_s

Times = float | Sequence[float]
WAITS = ("idle", "send", "error")


@dataclass(frozen=True)
class StageSpec:
    """One stage of one replica: seconds per step (a number, or a cycle by step) and bytes it sends on."""

    forward_s: Times
    update_s: Times
    out_bytes: float = 0.0  # the message to the next stage (unused for the last stage)
    grad_bytes: tuple[float, ...] = ()  # per block: what the replicas all-reduce (0: nothing to sync)
    blocks: tuple[int, ...] = ()

    def cycle(self, which: str) -> tuple[float, ...]:
        value = getattr(self, which)
        values = (float(value),) if isinstance(value, int | float) else tuple(float(v) for v in value)
        if not values or any(not v >= 0 or math.isinf(v) for v in values):
            raise FFPipeError(f"stage {which} must be finite seconds >= 0 (or a non-empty cycle of them), got {value}")
        return values


@dataclass
class StageStats:
    stage: int
    blocks: list[int]
    compute_s_per_step: float  # forward + update + all-reduce, mean over the jitter cycle
    utilisation: float  # fraction of the steady-state window spent computing
    idle_pct: float  # waiting for the previous stage's packet
    send_blocked_pct: float  # waiting for a free send slot
    error_wait_pct: float  # waiting for the joint head's error


@dataclass
class SimResult:
    throughput: float  # samples/s, all replicas
    step_s: float  # steady-state seconds per step
    batch: int  # samples per step, all replicas
    stages: list[StageStats]
    bound_samples_per_s: float  # batch / max stage compute per step, as the coordinator reports it
    fraction: float  # throughput / bound (0 when no stage computes)
    slowest_stage: int
    link_bound_samples_per_s: float  # batch / max message time: each link carries one message per step
    limit: str  # the tighter bound, or "dependency cycle" (queue depth, latency, joint-head errors) below both
    transfer_s: list[float]  # per activation link
    allreduce_s: list[float]  # per stage, per step
    steps: int
    window: int  # steps measured after warm-up

    def to_dict(self) -> dict:
        return asdict(self)


# -- the engine ------------------------------------------------------------------------------------------------
class _Engine:
    def __init__(self):
        self.now = 0.0
        self._heap: list = []
        self._order = itertools.count()  # equal times run in scheduling order

    def at(self, time: float, action) -> None:
        heapq.heappush(self._heap, (time, next(self._order), action))

    def run(self) -> None:
        while self._heap:
            self.now, _, action = heapq.heappop(self._heap)
            action()


class _Channel:
    """One direction of a wire (a Sender and its Receiver) over its own link."""

    def __init__(self, engine: _Engine, depth: int, transfer_s: float):
        self.engine, self.depth, self.transfer_s = engine, depth, transfer_s
        self.in_flight = 0  # sender: sent, transfer not finished
        self.held = 0  # receiver: being received or ready, not yet taken
        self.queued: deque[int] = deque()  # sent, transfer not started
        self.ready: deque[int] = deque()
        self.busy = False
        self.receiver: _Process | None = None
        self.sender: tuple[_Process, int] | None = None

    def send(self, step: int) -> bool:
        if self.in_flight >= self.depth:
            return False
        self.in_flight += 1
        self.queued.append(step)
        self._start()
        return True

    def recv(self) -> int | None:
        if not self.ready:
            return None
        self.held -= 1
        step = self.ready.popleft()
        self._start()
        return step

    def _start(self) -> None:
        if self.busy or not self.queued or self.held >= self.depth:
            return
        self.busy = True
        self.held += 1
        step = self.queued.popleft()
        self.engine.at(self.engine.now + self.transfer_s, lambda: self._arrive(step))

    def _arrive(self, step: int) -> None:
        self.busy = False
        self.in_flight -= 1
        self.ready.append(step)
        if self.receiver is not None:
            proc, self.receiver = self.receiver, None
            proc.wake(self.recv())
        if self.sender is not None:
            (proc, waiting), self.sender = self.sender, None
            self.send(waiting)
            proc.wake(None)
        self._start()


class _Process:
    """A stage's loop as a generator of requests: ("compute", s), ("send", ch, t), ("recv", ch, why), ("mark",)."""

    def __init__(self, engine: _Engine, script: Iterator):
        self.engine, self.script = engine, script
        self.spans: dict[str, list[tuple[float, float]]] = {"compute": [], **{w: [] for w in WAITS}}
        self.marks: list[float] = []
        self._since, self._why = 0.0, ""

    def start(self) -> None:
        self.engine.at(0.0, lambda: self._run(None))

    def wake(self, value) -> None:
        self.spans[self._why].append((self._since, self.engine.now))
        self.engine.at(self.engine.now, lambda: self._run(value))

    def _block(self, why: str) -> None:
        self._since, self._why = self.engine.now, why

    def _run(self, value) -> None:
        now = self.engine.now
        while True:
            try:
                request = self.script.send(value)
            except StopIteration:
                return
            value = None
            op = request[0]
            if op == "compute":
                self.spans["compute"].append((now, now + request[1]))
                self.engine.at(now + request[1], lambda: self._run(None))
                return
            if op == "mark":
                self.marks.append(now)
            elif op == "send":
                channel, step = request[1], request[2]
                if not channel.send(step):
                    channel.sender = (self, step)
                    self._block("send")
                    return
            else:  # recv
                channel = request[1]
                value = channel.recv()
                if value is None:
                    channel.receiver = self
                    self._block(request[2])
                    return


def _stage_script(spec: StageSpec, steps: int, inbox: _Channel | None, outbox: _Channel | None,
                  errors_in: _Channel | None, errors_out: list[_Channel], lag: int, allreduce_s: float) -> Iterator:
    forward, update = spec.cycle("forward_s"), spec.cycle("update_s")
    for t in range(steps):
        if inbox is not None:
            yield ("recv", inbox, "idle")
        yield ("compute", forward[t % len(forward)])
        if outbox is not None:
            yield ("send", outbox, t)
        yield ("compute", update[t % len(update)] + allreduce_s)
        yield ("mark",)
        for channel in errors_out:
            yield ("send", channel, t)
        if errors_in is not None and t >= lag:
            yield ("recv", errors_in, "error")
    for _ in range(min(lag, steps) if errors_in is not None else 0):
        yield ("recv", errors_in, "error")


def _mean(values: tuple[float, ...]) -> float:
    return sum(values) / len(values)


def _overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


def simulate_pipeline(stages: Sequence[StageSpec], batch: int, *, link: Link | None = None, queue_depth: int = 2,
                      replicas: int = 1, allreduce_link: Link | None = None, head_error_bytes: float | None = None,
                      steps: int = 400, warmup: int | None = None) -> SimResult:
    """Simulate `steps` training steps of the pipeline `stages` (one replica's times, at `batch` samples/step).

    link: between consecutive stages (default: free); allreduce_link: between replicas (default: `link`);
    head_error_bytes: the joint head's [B, classes] error message, or None for `head.mode: local` (no backward
    channel). Throughput counts all `replicas`: replicas x batch / step_s.
    """
    link = link or link_preset("ideal")
    allreduce_link = allreduce_link or link
    if not stages:
        raise FFPipeError("a pipeline needs at least one stage")
    for name, value, least in (("batch", batch, 1), ("queue depth", queue_depth, 1), ("replicas", replicas, 1)):
        if value < least:
            raise FFPipeError(f"{name} must be at least {least}, got {value}")
    warmup = steps // 2 if warmup is None else warmup
    cycle = math.lcm(*(len(s.cycle(w)) for s in stages for w in ("forward_s", "update_s")))
    window = (steps - warmup) // cycle * cycle
    if warmup < 1 or window < 1:
        raise FFPipeError(f"simulate more steps: {steps} steps with {warmup} of warm-up leave no window that "
                          f"spans whole jitter cycles of {cycle} steps")
    P = len(stages)
    engine = _Engine()
    transfer = [link.transfer_s(s.out_bytes) for s in stages[:-1]]
    channels = [_Channel(engine, queue_depth, t) for t in transfer]
    error_s = link.transfer_s(head_error_bytes) if head_error_bytes is not None else None
    errors = [_Channel(engine, queue_depth, error_s) for _ in range(P - 1)] if error_s is not None else []
    allreduce = [sum(ring_allreduce_s(g, replicas, allreduce_link) for g in s.grad_bytes if g > 0) for s in stages]
    procs = []
    for k, spec in enumerate(stages):
        last = k == P - 1
        script = _stage_script(spec, steps, channels[k - 1] if k else None, None if last else channels[k],
                               errors[k] if errors and not last else None, errors if last else [], P - 1 - k,
                               allreduce[k])
        procs.append(_Process(engine, script))
        procs[-1].start()
    engine.run()
    stuck = [k for k, p in enumerate(procs) if len(p.marks) < steps]
    if stuck:
        raise RuntimeError(f"the simulated schedule deadlocked at stages {stuck}")  # a bug, not a user error

    marks = procs[-1].marks
    start, end = marks[steps - window - 1], marks[steps - 1]
    if end <= start:
        raise FFPipeError("every stage and link takes zero time: throughput is unbounded")
    step_s = (end - start) / window
    global_batch = batch * replicas
    compute = [sum(_mean(spec.cycle(w)) for w in ("forward_s", "update_s")) + allreduce[k]
               for k, spec in enumerate(stages)]
    stats = []
    for k, (spec, proc) in enumerate(zip(stages, procs)):
        a, b = proc.marks[steps - window - 1], proc.marks[steps - 1]  # this stage's own steady-state window
        pct = {name: 100 * _overlap(spans, a, b) / (b - a) for name, spans in proc.spans.items()}
        stats.append(StageStats(k, list(spec.blocks), compute[k], pct["compute"] / 100, pct["idle"], pct["send"],
                                pct["error"]))
    slowest = max(range(P), key=compute.__getitem__)
    bound = global_batch / compute[slowest] if compute[slowest] > 0 else math.inf
    messages = {f"link {k}->{k + 1}": t for k, t in enumerate(transfer)}
    if errors:
        messages["joint-head error links"] = error_s
    busiest = max(messages, key=messages.__getitem__, default=None)
    link_bound = global_batch / messages[busiest] if busiest and messages[busiest] > 0 else math.inf
    throughput = global_batch / step_s
    limit = f"stage {slowest} compute" if bound <= link_bound else busiest
    if throughput < (1 - 1e-9) * min(bound, link_bound):
        limit = "dependency cycle"
    return SimResult(throughput, step_s, global_batch, stats, bound, throughput / bound if bound < math.inf else 0.0,
                     slowest, link_bound, limit, transfer, allreduce, steps, window)
