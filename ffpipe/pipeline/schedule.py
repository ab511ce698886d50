"""The pipeline protocol in one place: the driver's epoch and the followers' side of it.

Stage 0 of each replica reads the data and drives the run through THE epoch loop (`ffpipe.run.loop`, via
`PipelineRunner`): it decides when an epoch ends, when to evaluate and when to stop. Every later stage
`follow`s the messages that come down its channel, and does what the driver did, one stage further on:

    TRAIN × steps  →  EVAL × packets (validation, when due)  →  EPOCH_END(split)  → …
                   →  EVAL × packets (test)                   →  EPOCH_END(test)  →  STOP

What a stage does with each message is `StageWorker`'s (`ffpipe.pipeline.worker`); how the bytes move is the
wire's (`ffpipe.pipeline.wire`). EPOCH_END names what it closes (`Close`: a training epoch with or without the
validation readouts, or the final test) in its header tag, so no stage infers it from the epoch number. At
EPOCH_END every stage reports through the control plane (`ffpipe.pipeline.control`), and rank 0 (the leader)
assembles the epoch's record: the per-block statistics, and per stage its compute, idle and send-blocked time,
bytes and memory, with the bottleneck bound — with c_k the compute time per step of stage k (blocks, head and
optimizer steps, device-synchronized), no schedule can beat B / max_k c_k samples/s — and the fraction of it
the epoch achieved. Only after every stage wrote its shard does rank 0 write the manifest, so a checkpoint is
complete or ignored, never half.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from ffpipe.ff.head import views_for
from ffpipe.ff.packet import Packet
from ffpipe.pipeline.control import Close, Control
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import Kind
from ffpipe.pipeline.worker import StageWorker, unpack
from ffpipe.run.checkpoint import latest_checkpoint
from ffpipe.run.console import LiveTable
from ffpipe.run.loop import EpochTally


class PipelineRunner:
    """The driving rank's side (stage 0 of a replica), as THE epoch loop runs it (`ffpipe.run.loop.Runner`)."""

    progress_bar = False  # the live per-stage table takes its place

    def __init__(self, worker: StageWorker, topology: Topology, control: Control):
        self.worker, self.topology, self.control = worker, topology, control
        self.cfg = worker.cfg
        self.leader, self.world = topology.leader, topology.replicas
        self.source = worker.model.source()
        self.steps_per_epoch = self.source.steps_per_epoch
        self.epoch = 0

    def live(self, console: Console):
        if not self.leader:
            return contextlib.nullcontext()
        return LiveTable(lambda: self.control.read_live(self.topology.stages), self.cfg.train.progress, console)

    def start(self, run_dir: Path, resume: bool) -> int:
        return start_stage(self.worker, run_dir, resume)

    def set_epoch(self, epoch: int) -> float:
        self.epoch = epoch
        self.worker.stage.set_epoch(epoch, self.cfg.train.epochs)
        return self.worker.stage.lr

    def batches(self, epoch: int, offset: int) -> Iterator[Packet]:
        return self.source.train_packets(epoch, offset)

    def train_step(self, step: int, packet: Packet) -> None:
        """This replica's shard of the packet, down the pipeline; the stages report at EPOCH_END."""
        self.worker.train_step(packet.shard(self.topology.replica, self.topology.replicas))

    def end_epoch(self, epoch: int, step: int, evaluate: bool, tally: EpochTally) -> tuple[dict, dict | None]:
        close = Close(epoch, step, "val" if evaluate else None)
        readouts = self._close(close)
        if not self.leader:
            return {}, None
        return self._record(self.control.reports(close, self.topology.stages), readouts), readouts["eval"]

    def checkpoint(self, run_dir: Path, epoch: int, step: int) -> None:
        """Every stage wrote its shard at EPOCH_END; the leader completes the checkpoint once all are there."""
        if self.leader:
            self.control.wait_shards(Close(epoch, step, None), self.topology.stages)
            self.worker.model.complete_checkpoint(run_dir, epoch, step)

    def test(self, step: int) -> dict | None:
        readouts = self._close(Close(self.epoch, step, "test"))
        self.worker.send_control(Kind.STOP, step, self.epoch)
        return readouts["eval"] if readouts is not None else None

    def finish(self, run_dir: Path) -> None:
        """The last stage, which holds the test predictions, wrote the confusion matrix."""

    def _close(self, close: Close) -> dict | None:
        """Stream the split's packets (if any), end it down the pipeline; the leader gets the readouts."""
        if close.split is not None and self.worker.reports:  # replica 0 evaluates: replicas hold equal weights
            data = getattr(self.source.dataset, close.split)
            for view in views_for(self.cfg):
                for packet in self.source.eval_packets(data, view):
                    packet.epoch = close.epoch
                    self.worker.eval_step(packet, close.split)
        self.worker.send_control(Kind.EPOCH_END, close.step, close.epoch, tags=(close.tag,))
        self.worker.end_epoch(close)
        return self.control.readouts(close) if self.leader else None

    def _record(self, rows: list[dict], readouts: dict) -> dict:
        """The epoch record's fields from every stage's report, with the bottleneck bound; printed in one line."""
        samples = rows[-1]["samples"]  # replica 0's share; every replica runs the same number of steps
        wall = max(r["wall_s"] for r in rows)
        per_step = [r["compute_s"] / max(r["steps"], 1) for r in rows]
        bound = self.cfg.data.batch_size / max(per_step) if max(per_step) > 0 else 0.0
        achieved = samples * self.topology.replicas / wall if wall > 0 else 0.0
        fields = {"train_s": wall, "samples_per_s": achieved,
                  "cpu_s": sum(r["cpu_s"] for r in rows) * self.topology.replicas,
                  "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
                  "train_memory_bytes": max(r["train_memory_bytes"] for r in rows),
                  "peak_tensor_bytes": max((r["peak_tensor_bytes"] for r in rows), key=lambda v: v or -1),
                  "head_train_acc": readouts["head_correct"] / samples if samples and self.cfg.head.mode != "none"
                  else None,
                  "blocks": [b for r in rows for b in r["blocks"]], "stages": [stage_summary(r) for r in rows],
                  "bottleneck": {"bound_samples_per_s": bound, "fraction": achieved / bound if bound else 0.0,
                                 "slowest_stage": per_step.index(max(per_step))}}
        b = fields["bottleneck"]
        idle = ", ".join(f"{s['idle_pct']:.0f}%" for s in fields["stages"])
        print(f"bottleneck bound {b['bound_samples_per_s']:,.0f} samples/s (stage {b['slowest_stage']}); achieved "
              f"{achieved:,.0f} = {b['fraction']:.2f} of it; idle per stage: {idle}", flush=True)
        return fields


def follow(worker: StageWorker) -> None:
    """A later stage's whole run: do what each message says, pass the control messages on, until STOP."""
    epoch_seen = 0
    while True:
        msg = worker.links.prev.recv()
        if msg.kind == Kind.TRAIN:
            if msg.epoch != epoch_seen:
                epoch_seen = msg.epoch
                worker.stage.set_epoch(msg.epoch, worker.cfg.train.epochs)
            worker.train_step(unpack(msg, worker.wire_dtype)[0])
        elif msg.kind == Kind.EVAL:
            worker.eval_step(*unpack(msg, worker.wire_dtype))
        elif msg.kind == Kind.EPOCH_END:
            worker.send_control(Kind.EPOCH_END, msg.step, msg.epoch, tags=msg.tags)
            worker.end_epoch(Close.from_tag(msg.epoch, msg.step, *msg.tags))
        elif msg.kind == Kind.STOP:
            worker.send_control(Kind.STOP, msg.step, msg.epoch)
            worker.links.head.stop(msg.step)
            return


def stage_summary(row: dict) -> dict:
    wall = max(row["wall_s"], 1e-9)
    steps = max(row["steps"], 1)
    return {"stage": row["stage"], "blocks": [b["index"] for b in row["blocks"]],
            "compute_s_per_step": row["compute_s"] / steps, "idle_pct": 100 * row["idle_s"] / wall,
            "send_blocked_pct": 100 * row["send_blocked_s"] / wall, "samples_per_s": row["samples"] / wall,
            "bytes_in": row["bytes_in"], "bytes_out": row["bytes_out"], "peak_memory_bytes": row["peak_memory_bytes"],
            "train_memory_bytes": row["train_memory_bytes"], "peak_tensor_bytes": row["peak_tensor_bytes"],
            "cpu_s": row["cpu_s"]}


def start_stage(worker: StageWorker, run_dir: Path, resume: bool) -> int:
    """Load this stage's blocks from the newest complete checkpoint (of any partition) when resuming, then
    start the stage's meters; returns the step to continue after. Every stage does this for itself."""
    previous = latest_checkpoint(run_dir) if resume else None
    step = worker.model.load(previous, [worker.stage])["step"] if previous is not None else 0
    worker.start()
    return step
