"""THE epoch loop: every training run of ffpipe is this loop driving a `Runner`.

The sequential FF runner (`ffpipe.run.sequential`), the pipeline's driving ranks (`ffpipe.pipeline.schedule`)
and the BP baseline (`ffpipe.baselines.ddp`) differ in how a step runs and where its numbers come from; the
loop alone decides everything else, once: the run directory and its config, where a resumed run starts, the
epoch and step arithmetic (`train.epochs`, `train.max_steps`), the learning rate of each epoch, when to
evaluate (`train.eval_every`, and always after the last step), the steps of each epoch (where a resumed run
picks up inside one, when the epoch or `train.max_steps` stops, when the progress bar updates), the records
(`ffpipe.run.records`), when to checkpoint (every epoch end, and where `max_steps` stops the run), the final
test with the block range that validation chose, and the curves. Only the leader (rank 0) writes files and
prints; every rank of a distributed runner runs the loop, so collectives line up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console

from ffpipe.config import Config, dump_config
from ffpipe.ff.head import with_selected_ranges
from ffpipe.ff.stage import NonFiniteLoss
from ffpipe.run.console import TrainView
from ffpipe.run.plots import plot_curves
from ffpipe.run.records import MetricsLog, epoch_record, error_record, read_records, test_record

VIEW_EVERY = 10  # steps between progress-bar updates (each reads the step's loss off the device)


@dataclass
class Step:
    """What one training step tells the loop: its mean loss and its head's correct count (device tensors,
    read only when the view is due), and the samples it trained on in this process."""

    loss: torch.Tensor
    correct: torch.Tensor | None
    n: int


@dataclass
class EpochTally:
    """The loop's count of an epoch's training in this process: wall seconds, samples, and the sums of
    loss × samples and of the head's correct answers (device tensors until the epoch's record reads them)."""

    train_s: float = 0.0
    seen: int = 0
    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | float = 0.0

    def add(self, step: Step) -> None:
        self.seen += step.n
        self.loss_sum = self.loss_sum + step.loss.detach() * step.n
        if step.correct is not None:
            self.correct = self.correct + step.correct


class Runner(Protocol):
    """One way of training, as the loop drives it."""

    cfg: Config
    leader: bool  # writes the run's files (rank 0)
    steps_per_epoch: int
    progress_bar: bool  # False where the runner shows a live view of its own (`live`)
    world: int  # processes that each train on a shard of every batch: the progress bar's rate counts them all

    def live(self, console: Console) -> contextlib.AbstractContextManager:
        """The runner's own live view on the run's console, for the run's duration (or a null context)."""

    def start(self, run_dir: Path, resume: bool) -> int:
        """Ready to train (a resumed run loads its newest complete checkpoint); the step to continue after."""

    def set_epoch(self, epoch: int) -> float:
        """Start `epoch` (1-indexed): its learning rates and counters; return the blocks' rate, for the record."""

    def batches(self, epoch: int, offset: int) -> Iterable:
        """The epoch's training batches from batch `offset` (0-indexed) on; the loop takes what it needs."""

    def train_step(self, step: int, batch) -> Step | None:
        """Train on `batch` as step `step` (1-indexed over the run); None where the runner reports no step
        (a pipeline's stages report at the epoch's end)."""

    def end_epoch(self, epoch: int, step: int, evaluate: bool, tally: EpochTally) -> tuple[dict, dict | None]:
        """Close the epoch: the record's fields (`EPOCH_FIELDS` but epoch, step and lr, and the runner's own)
        from `tally` and the runner's meters and, when `evaluate`, the validation readouts. Raises
        `NonFiniteLoss` when a loss went non-finite."""

    def checkpoint(self, run_dir: Path, epoch: int, step: int) -> None:
        """Write a complete checkpoint of the state after `step`."""

    def test(self, step: int) -> dict | None:
        """The test readouts (the leader gets them; other ranks may get None)."""

    def finish(self, run_dir: Path) -> None:
        """The leader's closing files beside the test record (the confusion matrix)."""


def run_dir_for(cfg: Config, out: str | None) -> Path:
    """`--out`, else `run.out_dir/run.name`, else `run.out_dir/<date-time>`: one rule for every trainer."""
    if out:
        return Path(out)
    return Path(cfg.run.out_dir) / (cfg.run.name or time.strftime("%Y%m%d-%H%M%S"))


def last_step(cfg: Config, steps_per_epoch: int) -> int:
    total = cfg.train.epochs * steps_per_epoch
    return min(total, cfg.train.max_steps or total)


def evaluation_due(cfg: Config, epoch: int, step: int, last: int) -> bool:
    return epoch % cfg.train.eval_every == 0 or step == last


def train_epoch(runner: Runner, epoch: int, start: int, stop: int, view: TrainView) -> EpochTally:
    """Steps start+1 .. stop, all within `epoch`; a resumed run starts inside the epoch, at its offset."""
    tally, t0 = EpochTally(), time.perf_counter()
    # range first: zip stops on it without drawing one batch too many
    for step, batch in zip(range(start + 1, stop + 1), runner.batches(epoch, start % runner.steps_per_epoch)):
        done = runner.train_step(step, batch)
        if done is None:
            continue
        tally.add(done)
        if view.live and (step % VIEW_EVERY == 0 or step == stop):
            view.update(step, epoch, float(done.loss), float(tally.correct) / tally.seen,
                        tally.seen * runner.world / (time.perf_counter() - t0))
    tally.train_s = time.perf_counter() - t0
    return tally


def train(runner: Runner, run_dir: Path, resume: bool = False) -> dict:
    """Train with `runner` to the end; returns the summary {run_dir, step, val, test}."""
    cfg = runner.cfg
    log = None
    if runner.leader:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir / "metrics.jsonl")
    step = runner.start(run_dir, resume)
    spe, epochs = runner.steps_per_epoch, cfg.train.epochs
    last = last_step(cfg, spe)
    val = None
    bar = runner.leader and cfg.train.progress and runner.progress_bar
    with TrainView(last, epochs, enabled=bar) as view, runner.live(view.console):
        while step < last:
            epoch = step // spe + 1
            t0 = time.perf_counter()
            lr = runner.set_epoch(epoch)
            stop = min(epoch * spe, last)
            tally = train_epoch(runner, epoch, step, stop, view)
            step = stop
            evaluate = evaluation_due(cfg, epoch, step, last)
            try:
                fields, epoch_val = runner.end_epoch(epoch, step, evaluate, tally)
            except NonFiniteLoss as exc:
                if log is not None:
                    log.write(error_record(epoch, step, str(exc)))
                raise
            if runner.leader:
                record = epoch_record(epoch=epoch, step=step, lr=lr, wall_s=time.perf_counter() - t0, **fields)
                if epoch_val is not None:
                    record["val"] = val = epoch_val
                log.write(record)
                view.epoch_summary(record)
            runner.checkpoint(run_dir, epoch, step)
        test = runner.test(step)
    if runner.leader:
        test = with_selected_ranges(test, val)
        log.write(test_record(step, test))
        records = [r for r in read_records(run_dir / "metrics.jsonl") if "blocks" in r]
        if records:
            plot_curves(records, run_dir / "curves.png")
        runner.finish(run_dir)
    return {"run_dir": str(run_dir), "step": step, "val": val, "test": test}
