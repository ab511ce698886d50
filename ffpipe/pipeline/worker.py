"""The schedule: what one pipeline stage does, and when. How the bytes move is `wire.py`'s business.

Every process runs one `Stage` — the very object the sequential trainer runs — in a loop:
receive a packet → `Stage.forward` → send the outputs on → `Stage.update`. The outputs leave *before* the
local update, so the next stage starts early, and they equal what sequential FF computes, because
`forward` uses the weights as they were before this step's update. Stage 0 reads the data and drives: it
decides when an epoch ends, when to evaluate and when to stop, and the other stages follow its messages:

    TRAIN × steps  →  EVAL × packets (validation, when due)  →  EPOCH_END  → … → EVAL (test) → STOP

Nothing ever flows to an FF block from a later stage. The one backward message is the `joint` head's error,
`[B, classes]`, which the last stage sends to each earlier stage that owns head slices, on its own channel,
and which `Stage.head_backward` applies to those slices only. Stage k applies the error of step t − (P−1−k)
right after its own step t, so its staleness is exactly P−1−k steps (0 for the last stage), the same in
every run; the last P−1−k errors of an epoch are applied at EPOCH_END. With `head.mode: local` there is no
backward channel at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.checkpoint import checkpoint_dir, save_shard
from ffpipe.config import Config
from ffpipe.heads import joint_error
from ffpipe.metrics import MemoryMeter
from ffpipe.packet import VIEWS, Packet
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.wire import Kind, Message, Receiver, Sender
from ffpipe.readout import Tally, readout_blocks, views_for
from ffpipe.source import PacketSource
from ffpipe.stage import Stage

SPLITS = ("val", "test")


def pack(p: Packet, split: str = "val") -> list[torch.Tensor]:
    """A packet as wire tensors; absent accumulators travel as empty tensors (the wire sends no bytes).
    Every tensor is fresh or a clone (`unpack`), and nothing modifies a packet's tensors after they are
    sent, so the worker hands them to the wire without a staging copy (`Sender.send(copy=False)`)."""
    empty = torch.empty(0, device=p.x.device)
    meta = torch.tensor([VIEWS.index(p.view), SPLITS.index(split)], dtype=torch.long, device=p.x.device)
    return [p.x, p.y, meta] + [t if t is not None else empty for t in (p.logits, p.scores, p.exits)]


def unpack(msg: Message) -> tuple[Packet, str]:
    """Receive buffers are reused by the wire, so everything that outlives this step is cloned."""
    x, y, meta, logits, scores, exits = msg.tensors
    view, split = VIEWS[int(meta[0])], SPLITS[int(meta[1])]
    keep = [t.clone() if t.numel() else None for t in (y, logits, scores, exits)]
    return Packet(view, x, keep[0], msg.step, msg.epoch, keep[1], keep[2], keep[3]), split


@dataclass
class Links:
    """This stage's channels: activations in and out, and the joint head's error channel(s)."""

    prev: Receiver | None
    next: Sender | None
    errors_in: Receiver | None
    errors_out: dict[int, Sender]

    def close(self) -> None:
        """Orderly end of every channel: each has carried its STOP; senders wait until it was received,
        receivers until it arrived (see `Receiver.close`)."""
        for sender in [self.next, *self.errors_out.values()]:
            if sender is not None:
                sender.close()
        for receiver in (self.prev, self.errors_in):
            if receiver is not None:
                receiver.close()


class StageWorker:
    def __init__(self, cfg: Config, stage: Stage, index: int, replica: int, control: Control, links: Links,
                 source: PacketSource | None, run_dir: Path, class_names: tuple[str, ...]):
        stages = cfg.pipeline.stages
        self.cfg, self.stage, self.index, self.stages, self.replica = cfg, stage, index, stages, replica
        self.reports = replica == 0  # replicas hold equal weights: replica 0 evaluates, reports and saves
        self.control, self.links, self.source = control, links, source
        self.run_dir, self.class_names = run_dir, class_names
        self.last = index == stages - 1
        self.lag = stages - 1 - index
        self.has_error_channel = links.errors_in is not None
        self.fault_step: int | None = None
        # made after the data, the stage and the wire are built, before the first step: see MemoryMeter
        self.memory = MemoryMeter(stage.device)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.steps = self.errors_applied = self.seen = 0
        self.head_correct = 0.0
        self.tally = {split: Tally(list(self.cfg.head.readouts), readout_blocks(self.cfg, self.stage.num_blocks))
                      for split in SPLITS}
        self.t0 = self.train_end = time.perf_counter()
        self.train_idle = 0.0

    # -- one message ---------------------------------------------------------------------------------------
    def train_step(self, packet: Packet) -> None:
        if packet.step == self.fault_step:
            raise RuntimeError(f"injected fault (FFPIPE_FAULT) at step {packet.step}")
        out, pending = self.stage.forward(packet)
        if self.links.next is not None:
            self.links.next.send(Kind.TRAIN, packet.step, packet.epoch, pack(out), copy=False)
        metrics = self.stage.update(pending, packet)
        self.steps += 1
        self.seen += packet.n
        if self.last and out.logits is not None:
            self.head_correct += float((out.logits.argmax(dim=1) == out.y).sum())
            if self.cfg.head.mode == "joint":
                error = joint_error(out.logits, out.y)
                for sender in self.links.errors_out.values():
                    sender.send(Kind.TRAIN, packet.step, packet.epoch, [error], copy=False)
                self.stage.head_backward(packet.step, error)
        if self.has_error_channel and self.steps > self.lag:
            self._apply_error()
        self.train_end = time.perf_counter()
        wait = self.links.prev.stats()["idle_s"] if self.links.prev is not None else 0.0
        self.train_idle = wait
        if not self.reports:
            return
        stats = dict(zip(self.stage.stat_names, metrics.stats.mean(dim=0).tolist()))
        headline = "acc_pair" if "acc_pair" in stats else "acc"
        elapsed = time.perf_counter() - self.t0
        self.control.publish_live({"step": packet.step, "epoch": packet.epoch, "samples_per_s": self.seen / elapsed,
                                   "idle": wait / elapsed, "loss": stats["loss"], "acc": stats[headline],
                                   "acc_name": headline})

    def _apply_error(self) -> None:
        msg = self.links.errors_in.recv()
        self.stage.head_backward(msg.step, msg.tensors[0].clone())
        self.errors_applied += 1

    def eval_step(self, packet: Packet, split: str) -> None:
        out = self.stage.evaluate(packet)
        if self.links.next is not None:
            self.links.next.send(Kind.EVAL, 0, packet.epoch, pack(out, split), copy=False)
        else:
            self.tally[split].add(out)

    # -- stage 0 drives ---------------------------------------------------------------------------------------
    def drive(self, start_step: int, last_step: int, coordinator) -> None:
        """Stage 0: stream the epochs' packets, evaluations and control messages through the pipeline."""
        spe, epochs = self.source.steps_per_epoch, self.cfg.train.epochs
        step = start_step
        while step < last_step:
            epoch, start = step // spe + 1, step % spe
            self.stage.set_epoch(epoch, epochs)
            for packet in self.source.train_packets(epoch, start):
                self.train_step(packet.shard(self.replica, self.cfg.pipeline.replicas))
                step = packet.step
                if step == last_step:
                    break
            evaluate = epoch % self.cfg.train.eval_every == 0 or step == last_step
            if evaluate:
                self.stream_eval("val", epoch)
            self.send_control(Kind.EPOCH_END, step, epoch)
            self.end_epoch(step, epoch, evaluate)
            if coordinator is not None:
                coordinator.epoch_done(step, epoch, evaluate)
        self.stream_eval("test", 0)
        self.send_control(Kind.EPOCH_END, step, 0)
        self.end_epoch(step, 0, True)
        if coordinator is not None:
            coordinator.finished(step)
        self.send_control(Kind.STOP, step, 0)

    def stream_eval(self, split: str, epoch: int) -> None:
        if not self.reports:
            return
        data = getattr(self.source.dataset, split)
        for view in views_for(self.cfg):
            for packet in self.source.eval_packets(data, view):
                packet.epoch = epoch
                self.eval_step(packet, split)

    def send_control(self, kind: Kind, step: int, epoch: int) -> None:
        if self.links.next is not None:
            self.links.next.send(kind, step, epoch)

    # -- the other stages follow ------------------------------------------------------------------------------
    def follow(self) -> None:
        epoch_seen = 0
        while True:
            msg = self.links.prev.recv()
            if msg.kind == Kind.TRAIN:
                if msg.epoch != epoch_seen:
                    epoch_seen = msg.epoch
                    self.stage.set_epoch(msg.epoch, self.cfg.train.epochs)
                self.train_step(unpack(msg)[0])
            elif msg.kind == Kind.EVAL:
                self.eval_step(*unpack(msg))
            elif msg.kind == Kind.EPOCH_END:
                self.send_control(Kind.EPOCH_END, msg.step, msg.epoch)
                self.end_epoch(msg.step, msg.epoch, True)
            elif msg.kind == Kind.STOP:
                self.send_control(Kind.STOP, msg.step, msg.epoch)
                for sender in self.links.errors_out.values():
                    sender.send(Kind.STOP, msg.step, msg.epoch)
                return

    # -- epoch boundary ---------------------------------------------------------------------------------------
    def end_epoch(self, step: int, epoch: int, evaluated: bool) -> None:
        """Apply the epoch's remaining head errors, publish metrics, results and the checkpoint shard."""
        while self.has_error_channel and self.errors_applied < self.steps:
            self._apply_error()
        key = f"epoch/{epoch}/{step}"
        if not self.reports:
            self._reset_epoch()
            return
        if epoch:
            prev = self.links.prev.stats() if self.links.prev else {"idle_s": 0.0, "bytes": 0}
            nxt = self.links.next.stats() if self.links.next else {"blocked_s": 0.0, "bytes": 0}
            blocks = self.stage.epoch_metrics()
            self.control.put(f"{key}/stage/{self.index}", {
                "stage": self.index, "blocks": blocks, "steps": self.steps, "samples": self.seen,
                "wall_s": self.train_end - self.t0, "compute_s": sum(b["compute_s"] for b in blocks),
                "idle_s": self.train_idle, "send_blocked_s": nxt["blocked_s"], "bytes_in": prev["bytes"],
                "bytes_out": nxt["bytes"], **self.memory.read()})
            for link in (self.links.prev, self.links.next):
                if link is not None:
                    link.reset_stats()
            save_shard(checkpoint_dir(self.run_dir, epoch), self.stage.state_dict())
            self.control.put(f"{key}/shard/{self.index}", True)
        if self.last:
            split = "val" if epoch else "test"
            tally = self.tally[split]
            result = tally.result() if evaluated and tally.seen else None
            self.control.put(f"{key}/result", {"eval": result, "head_correct": self.head_correct})
            if not epoch:
                tally.save_confusion(self.run_dir, self.class_names)
        self._reset_epoch()
