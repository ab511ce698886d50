"""Rank 0's bookkeeping for a pipelined run: epoch records, the live per-stage table, manifests, the summary.

Every stage publishes its epoch metrics and "shard written" through the control plane; rank 0 (which also
runs stage 0) assembles the same `metrics.jsonl` record the sequential trainer writes, plus a per-stage view
(compute, idle and send-blocked time, bytes, memory) and the bottleneck bound: with c_k the compute time per
step of stage k, no schedule can beat B / max_k c_k samples/s, so we print that bound and the fraction of it
the epoch achieved. Only after every stage reported its shard does rank 0 write the manifest, so a checkpoint
is complete or ignored, never half.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ffpipe.checkpoint import checkpoint_dir, prune_checkpoints, write_manifest
from ffpipe.config import Config, to_dict
from ffpipe.metrics import MetricsLog, TrainView
from ffpipe.pipeline.control import Control
from ffpipe.readout import with_selected_ranges
from ffpipe.trainer import record_test


def stage_summary(row: dict) -> dict:
    wall = max(row["wall_s"], 1e-9)
    steps = max(row["steps"], 1)
    return {"stage": row["stage"], "blocks": [b["index"] for b in row["blocks"]],
            "compute_s_per_step": row["compute_s"] / steps, "idle_pct": 100 * row["idle_s"] / wall,
            "send_blocked_pct": 100 * row["send_blocked_s"] / wall, "samples_per_s": row["samples"] / wall,
            "bytes_in": row["bytes_in"], "bytes_out": row["bytes_out"], "peak_memory_bytes": row["peak_memory_bytes"],
            "train_memory_bytes": row["train_memory_bytes"]}


class LiveTable:
    """One row per stage, refreshed about once a second from the stages' store snapshots."""

    def __init__(self, control: Control, stages: int, enabled: bool, console: Console):
        self.control, self.stages = control, stages
        self.console = console  # shared with the epoch summaries, which rich then prints above the live table
        self.enabled = enabled and self.console.is_terminal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _table(self) -> Table:
        """Per stage: its blocks' mean loss and local accuracy (`acc_pair` for pos/neg families, the group
        accuracy `acc` for group_ce)."""
        snaps = self.control.read_live(self.stages)
        acc_name = next((s["acc_name"] for s in snaps if s is not None), "acc_pair")
        table = Table(title="ffpipe pipeline")
        for name in ("stage", "epoch", "step", "samples/s", "idle %", "loss", acc_name.replace("_", " ")):
            table.add_column(name, justify="right")
        for k, snap in enumerate(snaps):
            if snap is None:
                table.add_row(str(k), *["-"] * 6)
                continue
            table.add_row(str(k), str(snap["epoch"]), str(snap["step"]), f"{snap['samples_per_s']:,.0f}",
                          f"{100 * snap['idle']:.1f}", f"{snap['loss']:.4f}", f"{snap['acc']:.3f}")
        return table

    def _run(self) -> None:
        with Live(self._table(), console=self.console, refresh_per_second=2) as live:
            while not self._stop.wait(1.0):
                live.update(self._table())

    def __enter__(self) -> LiveTable:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True, name="ffpipe-live")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Coordinator:
    def __init__(self, cfg: Config, run_dir: Path, control: Control, stages: int, fingerprint: dict,
                 num_blocks: int, lr_of_epoch):
        self.cfg, self.run_dir, self.control, self.stages = cfg, run_dir, control, stages
        self.fingerprint, self.num_blocks, self.lr_of_epoch = fingerprint, num_blocks, lr_of_epoch
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        self.view = TrainView(1, cfg.train.epochs, enabled=False)
        self.summary: dict = {}
        self.last_val: dict | None = None

    def epoch_done(self, step: int, epoch: int, evaluated: bool) -> dict:
        key = f"epoch/{epoch}/{step}"
        rows = [self.control.get(f"{key}/stage/{k}") for k in range(self.stages)]
        result = self.control.get(f"{key}/result")
        samples = rows[-1]["samples"]  # replica 0's share; every replica runs the same number of steps
        wall = max(r["wall_s"] for r in rows)
        per_step = [r["compute_s"] / max(r["steps"], 1) for r in rows]
        bound = self.cfg.data.batch_size / max(per_step) if max(per_step) > 0 else 0.0
        achieved = samples * self.cfg.pipeline.replicas / wall if wall > 0 else 0.0
        record = {"epoch": epoch, "step": step, "lr": self.lr_of_epoch(epoch), "train_s": wall,
                  "samples_per_s": achieved, "head_train_acc": result["head_correct"] / samples if samples else None,
                  "blocks": [b for r in rows for b in r["blocks"]], "stages": [stage_summary(r) for r in rows],
                  "bottleneck": {"bound_samples_per_s": bound, "fraction": achieved / bound if bound else 0.0,
                                 "slowest_stage": per_step.index(max(per_step))}}
        if evaluated and result["eval"] is not None:
            record["val"] = self.last_val = result["eval"]
        record["wall_s"] = wall
        self.log.write(record)
        self.view.epoch_summary(record)
        b = record["bottleneck"]
        idle = ", ".join(f"{s['idle_pct']:.0f}%" for s in record["stages"])
        self.view.console.print(f"bottleneck bound {b['bound_samples_per_s']:,.0f} samples/s (stage "
                                f"{b['slowest_stage']}); achieved {achieved:,.0f} = {b['fraction']:.2f} of it; "
                                f"idle per stage: {idle}")
        for k in range(self.stages):
            self.control.get(f"{key}/shard/{k}")
        write_manifest(checkpoint_dir(self.run_dir, epoch),
                       {"epoch": epoch, "step": step, "num_blocks": self.num_blocks, "fingerprint": self.fingerprint,
                        "config": to_dict(self.cfg), "stages": self.stages})
        prune_checkpoints(self.run_dir, keep=self.cfg.run.keep_checkpoints)
        return record

    def finished(self, step: int) -> None:
        test = with_selected_ranges(self.control.get(f"epoch/0/{step}/result")["eval"], self.last_val)
        record_test(self.run_dir, self.log, step, test)
        self.summary = {"run_dir": str(self.run_dir), "step": step, "test": test}
