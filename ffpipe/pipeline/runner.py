"""The pipeline as THE epoch loop sees it: the `Runner` of the ranks that drive (stage 0 of each replica).

A driving rank streams the training packets of its replica's shard of each global batch through its stage
and on down the pipeline, streams the validation and test packets (replica 0 only: replicas hold equal
weights), and closes each epoch with EPOCH_END. Rank 0 (the leader) then assembles the epoch's record from
what every stage reported through the control plane: the per-block statistics, and per stage its compute,
idle and send-blocked time, bytes and memory, with the bottleneck bound — with c_k the compute time per step
of stage k (blocks, head and optimizer steps, device-synchronized), no schedule can beat B / max_k c_k
samples/s — and the fraction of it the epoch achieved. Only after every stage reported its shard does rank 0
write the manifest, so a checkpoint is complete or ignored, never half.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console

from ffpipe.ff.head import views_for
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import Kind
from ffpipe.pipeline.worker import StageWorker
from ffpipe.run.checkpoint import latest_checkpoint
from ffpipe.run.console import LiveTable, TrainView


def stage_summary(row: dict) -> dict:
    wall = max(row["wall_s"], 1e-9)
    steps = max(row["steps"], 1)
    return {"stage": row["stage"], "blocks": [b["index"] for b in row["blocks"]],
            "compute_s_per_step": row["compute_s"] / steps, "idle_pct": 100 * row["idle_s"] / wall,
            "send_blocked_pct": 100 * row["send_blocked_s"] / wall, "samples_per_s": row["samples"] / wall,
            "bytes_in": row["bytes_in"], "bytes_out": row["bytes_out"], "peak_memory_bytes": row["peak_memory_bytes"],
            "train_memory_bytes": row["train_memory_bytes"], "peak_tensor_bytes": row["peak_tensor_bytes"],
            "cpu_s": row["cpu_s"]}


class PipelineRunner:
    progress_bar = False  # the live per-stage table takes its place

    def __init__(self, worker: StageWorker, topology: Topology, control: Control):
        self.worker, self.topology, self.control = worker, topology, control
        self.cfg = worker.cfg
        self.leader = topology.leader
        self.source = worker.model.source()
        self.steps_per_epoch = self.source.steps_per_epoch
        self._result: dict | None = None

    def live(self, console: Console):
        if not self.leader:
            return contextlib.nullcontext()
        return LiveTable(lambda: self.control.read_live(self.topology.stages), self.cfg.train.progress, console)

    def start(self, run_dir: Path, resume: bool) -> int:
        return start_stage(self.worker, run_dir, resume)

    def set_epoch(self, epoch: int) -> float:
        self.worker.stage.set_epoch(epoch, self.cfg.train.epochs)
        return self.worker.stage.lr

    def train(self, epoch: int, start: int, stop: int, view: TrainView) -> None:
        for packet in self.source.train_packets(epoch, start % self.steps_per_epoch):
            self.worker.train_step(packet.shard(self.topology.replica, self.topology.replicas))
            if packet.step == stop:
                break

    def _stream_eval(self, split: str, epoch: int) -> None:
        if not self.worker.reports:
            return
        data = getattr(self.source.dataset, split)
        for view in views_for(self.cfg):
            for packet in self.source.eval_packets(data, view):
                packet.epoch = epoch
                self.worker.eval_step(packet, split)

    def _close(self, step: int, epoch: int, split: str | None) -> dict | None:
        """Evaluate (if `split`), end the epoch down the pipeline; the leader returns the last stage's result."""
        if split is not None:
            self._stream_eval(split, epoch)
        self.worker.send_control(Kind.EPOCH_END, step, epoch)
        self.worker.end_epoch(step, epoch, split is not None)
        return self.control.get(f"epoch/{epoch}/{step}/result") if self.leader else None

    def end_epoch(self, epoch: int, step: int, evaluate: bool) -> tuple[dict, dict | None]:
        result = self._close(step, epoch, "val" if evaluate else None)
        if not self.leader:
            return {}, None
        key = f"epoch/{epoch}/{step}"
        rows = [self.control.get(f"{key}/stage/{k}") for k in range(self.topology.stages)]
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
                  "head_train_acc": result["head_correct"] / samples if samples and self.cfg.head.mode != "none"
                  else None,
                  "blocks": [b for r in rows for b in r["blocks"]], "stages": [stage_summary(r) for r in rows],
                  "bottleneck": {"bound_samples_per_s": bound, "fraction": achieved / bound if bound else 0.0,
                                 "slowest_stage": per_step.index(max(per_step))}}
        b = fields["bottleneck"]
        idle = ", ".join(f"{s['idle_pct']:.0f}%" for s in fields["stages"])
        print(f"bottleneck bound {b['bound_samples_per_s']:,.0f} samples/s (stage {b['slowest_stage']}); achieved "
              f"{achieved:,.0f} = {b['fraction']:.2f} of it; idle per stage: {idle}", flush=True)
        return fields, result["eval"] if evaluate else None

    def checkpoint(self, run_dir: Path, epoch: int, step: int) -> None:
        """Every stage wrote its shard at EPOCH_END; the leader completes the checkpoint once all are there."""
        if self.leader:
            for k in range(self.topology.stages):
                self.control.get(f"epoch/{epoch}/{step}/shard/{k}")
            self.worker.model.complete_checkpoint(run_dir, epoch, step)

    def test(self, step: int) -> dict | None:
        result = self._close(step, 0, "test")
        self.worker.send_control(Kind.STOP, step, 0)
        return result["eval"] if result is not None else None

    def finish(self, run_dir: Path) -> None:
        """The last stage, which holds the test predictions, wrote the confusion matrix."""


def start_stage(worker: StageWorker, run_dir: Path, resume: bool) -> int:
    """Load this stage's blocks from the newest complete checkpoint (of any partition) when resuming, then
    start the stage's meters; returns the step to continue after. Every stage does this for itself."""
    previous = latest_checkpoint(run_dir) if resume else None
    step = worker.model.load(previous, [worker.stage])["step"] if previous is not None else 0
    worker.start()
    return step
