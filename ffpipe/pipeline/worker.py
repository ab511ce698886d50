"""What one pipeline stage does with each message. When messages come is `schedule.py`'s business; how their
bytes move is `wire.py`'s.

Every process runs one `Stage` — the very object the sequential runner runs — on each training packet:
receive → `Stage.compute` → send the outputs on → `Stage.apply` → the head channel's step. The outputs leave
*before* the update, so the next stage starts early, and they equal what sequential FF computes, because
`compute` uses the weights as they were before this step's update. At EPOCH_END every stage applies its owed
head errors, reports its epoch (per-block statistics, compute, idle and send-blocked time, bytes, memory)
through the control plane and writes its checkpoint shard. Nothing ever flows to an FF block from a later
stage; the one backward message is the joint head's error (`head_channel`).

No host sync in a training step (what a GPU stage needs to run ahead of its kernels): statistics and the
head's correct count stay on the device until the epoch's end, the live snapshot reads them only when one is
due (once a second), a packet's metadata travels as header tags (`Message.tags`, host integers), and time is
taken with a `DeviceTimer` (events on a GPU, read at the epoch's end), never a device-wide synchronize.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.config import Config
from ffpipe.ff.head import Tally
from ffpipe.ff.packet import VIEWS, Packet, narrows
from ffpipe.pipeline.control import SPLITS, Close, Control
from ffpipe.pipeline.head_channel import HeadChannel
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import Kind, Message, Receiver, Sender
from ffpipe.run.measure import DeviceTimer, MemoryMeter
from ffpipe.run.model import Model
from ffpipe.run.plots import save_confusion
from ffpipe.run.records import BlockMeter

STAGE_SPAN = "stage"  # the timer key of the stage's whole step (blocks, head, optimizer steps)


def pack(p: Packet, split: str = "val", wire_dtype: str = "float32") -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """A packet as wire tensors and header tags. Tensors: x, y, the accumulators (absent ones as empty
    tensors: the wire sends no bytes), then the shortcut tensors; x and the shortcut tensors in
    `pipeline.wire_dtype` (`Packet.to_wire`: bfloat16 sends half the bytes). Tags: the view, the split and
    the source blocks of the shortcut tensors in flight. Every tensor is fresh or a clone (`unpack`), and
    nothing modifies a packet's tensors after they are sent, so the worker hands them to the wire without a
    staging copy (`Sender.send(copy=False)`)."""
    p = p.to_wire(wire_dtype)
    empty = torch.empty(0, device=p.x.device)
    accumulators = [t if t is not None else empty for t in (p.logits, p.scores, p.exits)]
    return [p.x, p.y, *accumulators, *p.shortcuts.values()], (VIEWS.index(p.view), SPLITS.index(split), *p.shortcuts)


def unpack(msg: Message, wire_dtype: str = "float32") -> tuple[Packet, str]:
    """Receive buffers are reused by the wire, so everything that outlives this step is cloned: all but x,
    which the stage consumes before the next receive. After a narrowing wire, `Packet.from_wire` widens x and
    the shortcut tensors into fresh float32 tensors, which is their copy."""
    x, y, logits, scores, exits, *carried = msg.tensors
    view, split, *sources = msg.tags
    view, split = VIEWS[view], SPLITS[split]
    keep = [t.clone() if t.numel() else None for t in (y, logits, scores, exits)]
    widened = narrows(wire_dtype)
    shortcuts = {src: t if widened else t.clone() for src, t in zip(sources, carried)}
    packet = Packet(view, x, keep[0], msg.step, msg.epoch, keep[1], keep[2], keep[3], shortcuts)
    return packet.from_wire(wire_dtype), split


@dataclass
class Links:
    """This stage's channels: activations in and out, and the joint head's error channel."""

    prev: Receiver | None
    next: Sender | None
    head: HeadChannel

    def close(self) -> None:
        """Orderly end of every channel: each has carried its STOP; senders wait until it was received,
        receivers until it arrived (see `Receiver.close`)."""
        if self.next is not None:
            self.next.close()
        self.head.close()
        if self.prev is not None:
            self.prev.close()


def _fault_step(stage: int) -> int | None:
    """FFPIPE_FAULT=STAGE:STEP crashes that stage at that step, once (first attempt only): for restart tests."""
    spec = os.environ.get("FFPIPE_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    stage_of_fault, step = (int(v) for v in spec.split(":"))
    return step if stage_of_fault == stage else None


class StageWorker:
    def __init__(self, cfg: Config, model: Model, topology: Topology, control: Control, links: Links,
                 run_dir: Path, average_grads=None):
        self.cfg, self.model, self.topology, self.control, self.links = cfg, model, topology, control, links
        self.cpu0 = time.process_time()  # `cpu_s` counts from here (`ffpipe.run.records`)
        self.stage = model.stage(topology.stage, average_grads)
        self.index = topology.stage
        self.wire_dtype = cfg.pipeline.wire_dtype
        self.reports = topology.replica == 0  # replicas hold equal weights: replica 0 evaluates, reports, saves
        self.run_dir = run_dir
        self.timer = DeviceTimer(model.device)
        self.fault_step = _fault_step(self.index)
        self.memory: MemoryMeter | None = None

    def start(self) -> None:
        """After the data, the stage and the wire are built, before the first step: see MemoryMeter."""
        self.memory = MemoryMeter(self.stage.device, self.cfg.train.tensor_memory)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.memory.new_epoch()  # the stage's first training step of the epoch is its memory sample
        self.meter = BlockMeter(self.stage.stat_names)
        self.timer.reset()
        self.seen, self.head_correct = 0, torch.zeros((), device=self.stage.device)
        self.tally = {split: Tally(list(self.cfg.head.readouts), sorted(self.model.network.readout))
                      for split in SPLITS}
        self.t0 = self.train_end = time.perf_counter()
        self.train_idle = 0.0

    # -- one message ---------------------------------------------------------------------------------------
    def train_step(self, packet: Packet) -> None:
        if packet.step == self.fault_step:
            raise RuntimeError(f"injected fault (FFPIPE_FAULT) at step {packet.step}")
        # the epoch's first step is its memory sample, measured in two parts, compute and apply: the sends and
        # the head channel's step (the last stage's joint-head update) stay outside (`MemoryMeter.window`)
        sampled = self.memory.sample()
        start = self.timer.mark()
        with self.memory.window(sampled, self.stage, packet):
            computed = self.stage.compute(packet, self.timer)
        self.timer.add(STAGE_SPAN, start)
        out = computed.out
        if self.links.next is not None:
            tensors, tags = pack(out, wire_dtype=self.wire_dtype)
            self.links.next.send(Kind.TRAIN, packet.step, packet.epoch, tensors, tags=tags, copy=False)
        due = self.links.head.receive_due()  # a wait, not work: outside the timed spans
        start = self.timer.mark()
        with self.memory.window(sampled, self.stage, packet, computed):  # no send inside: `MemoryMeter.window`
            self.stage.apply(computed, self.timer)
        self.links.head.after_step(self.stage, out, due)
        self.timer.add(STAGE_SPAN, start)
        self.meter.add(computed.blocks, packet.n)
        self.seen += packet.n
        if self.topology.last and out.logits is not None:
            self.head_correct += out.head_hits()
        self.train_end = time.perf_counter()
        self.train_idle = self.links.prev.stats()["idle_s"] if self.links.prev is not None else 0.0
        if self.reports and self.control.live_due():
            self._publish_live(packet, computed.blocks)

    def _publish_live(self, packet: Packet, blocks) -> None:
        stats = dict(zip(self.stage.stat_names, torch.stack([b.stats for b in blocks]).mean(dim=0).tolist()))
        headline = "acc_pair" if "acc_pair" in stats else "acc"
        elapsed = time.perf_counter() - self.t0
        self.control.publish_live({"step": packet.step, "epoch": packet.epoch, "samples_per_s": self.seen / elapsed,
                                   "idle": self.train_idle / elapsed, "loss": stats["loss"], "acc": stats[headline],
                                   "acc_name": headline})

    def eval_step(self, packet: Packet, split: str) -> None:
        out = self.stage.evaluate(packet)
        if self.links.next is not None:
            tensors, tags = pack(out, split, self.wire_dtype)
            self.links.next.send(Kind.EVAL, 0, packet.epoch, tensors, tags=tags, copy=False)
        else:
            self.tally[split].add(out)

    def send_control(self, kind: Kind, step: int, epoch: int, tags: tuple[int, ...] = ()) -> None:
        if self.links.next is not None:
            self.links.next.send(kind, step, epoch, tags=tags)

    # -- epoch boundary ---------------------------------------------------------------------------------------
    def end_epoch(self, close: Close) -> None:
        """Apply the epoch's owed head errors; publish the stage's report and its checkpoint shard (a training
        epoch) and, at the last stage, the readouts of the split it closes."""
        self.links.head.drain(self.stage)
        if close.trained:
            self.stage.check_finite(close.epoch)
        if not self.reports:
            self._reset_epoch()
            return
        if close.trained:
            prev = self.links.prev.stats() if self.links.prev else {"idle_s": 0.0, "bytes": 0}
            nxt = self.links.next.stats() if self.links.next else {"blocked_s": 0.0, "bytes": 0}
            seconds = self.timer.totals()
            self.control.put_report(close, self.index, {
                "stage": self.index, "blocks": self.meter.rows(seconds), "steps": self.meter.steps,
                "samples": self.seen, "wall_s": self.train_end - self.t0, "compute_s": seconds.get(STAGE_SPAN, 0.0),
                "idle_s": self.train_idle,
                "send_blocked_s": nxt["blocked_s"], "bytes_in": prev["bytes"], "bytes_out": nxt["bytes"],
                "cpu_s": time.process_time() - self.cpu0, **self.memory.read()})
            for link in (self.links.prev, self.links.next):
                if link is not None:
                    link.reset_stats()
            self.model.save_shard(self.run_dir, close.epoch, self.stage)
            self.control.put_shard_written(close, self.index)
        if self.topology.last:
            tally = self.tally[close.split] if close.split is not None else None
            self.control.put_readouts(close, tally.result() if tally is not None and tally.seen else None,
                                      float(self.head_correct))
            found = tally.confusion(self.model.dataset.num_classes) if close.split == "test" and tally.seen else None
            if found is not None:
                save_confusion(found[1], self.model.dataset.class_names, self.run_dir / "confusion.json",
                               self.run_dir / "confusion.png")
        self._reset_epoch()
