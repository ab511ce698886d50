"""The sequential runner: every stage of the network, one after another, in one process.

It is the reference the pipeline is proven against, and the way to debug a partition: the stages are the
very `Stage` objects a pipeline would run, called in order on each packet; the `joint` head error is applied
right after the last stage, so here the head is exactly the papers' classifier. Between two stages the
packet crosses a boundary as it would cross the wire (`Packet.at_boundary`: rounded to `pipeline.wire_dtype`),
training and evaluation packets alike, as the pipeline sends both. Also home of `evaluate`, the one
sequential pass over a split that `ffpipe eval` and the lab's probes use too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ffpipe.config import Config, from_dict
from ffpipe.data import Split
from ffpipe.device import choose_device
from ffpipe.errors import FFPipeError
from ffpipe.ff.head import Tally, joint_error, views_for
from ffpipe.ff.packet import Packet, PacketSource
from ffpipe.ff.stage import Stage
from ffpipe.run import loop
from ffpipe.run.checkpoint import latest_checkpoint, resolve_checkpoint
from ffpipe.run.loop import EpochTally, Step
from ffpipe.run.measure import DeviceTimer, MemoryMeter
from ffpipe.run.model import Model
from ffpipe.run.plots import save_confusion
from ffpipe.run.records import BlockMeter


def evaluate(cfg: Config, stages: list[Stage], source: PacketSource, split: Split) -> Tally:
    """Every readout of `cfg` on `split`, the stages run one after another on each batch, the packet crossing
    each boundary between them as the pipeline's evaluation packets cross the wire."""
    tally = Tally(list(cfg.head.readouts), sorted(stages[-1].readout))
    wire = cfg.pipeline.wire_dtype
    for view in views_for(cfg):
        t0 = time.perf_counter()
        for packet in source.eval_packets(split, view):
            for k, stage in enumerate(stages):
                packet = stage.evaluate(packet.at_boundary(wire) if k else packet)
            tally.add(packet)
        tally.add_time(view, time.perf_counter() - t0)
    return tally


class SequentialRunner:
    leader = True
    progress_bar = True
    world = 1

    def __init__(self, cfg: Config):
        self.cfg, self.cpu0 = cfg, time.process_time()  # `cpu_s` counts from here (records.py)
        self.model = Model.build(cfg, choose_device(cfg.train.device)[0])
        self.stages = self.model.stages()
        self.source = self.model.source()
        self.steps_per_epoch = self.source.steps_per_epoch
        self.timer = DeviceTimer(self.model.device)
        self._test: Tally | None = None

    def live(self, console) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def start(self, run_dir: Path, resume: bool) -> int:
        previous = latest_checkpoint(run_dir) if resume else None
        step = self.model.load(previous, self.stages)["step"] if previous is not None else 0
        # after data load and model build: see MemoryMeter
        self.memory = MemoryMeter(self.model.device, self.cfg.train.tensor_memory)
        return step

    def set_epoch(self, epoch: int) -> float:
        for stage in self.stages:
            stage.set_epoch(epoch, self.cfg.train.epochs)
        self.meters = [BlockMeter(stage.stat_names) for stage in self.stages]
        self.memory.new_epoch()
        self.timer.reset()
        return self.stages[0].lr

    def batches(self, epoch: int, offset: int) -> Iterator[Packet]:
        return self.source.train_packets(epoch, offset)

    def train_step(self, step: int, packet: Packet) -> Step:
        """One step through all stages, then the joint head's error; the loss is the blocks' mean (a tensor:
        no host sync)."""
        losses, wire, n = [], self.cfg.pipeline.wire_dtype, packet.n
        with self.memory.step(self.stages, packet):  # the epoch's first step is its sample
            for k, (stage, meter) in enumerate(zip(self.stages, self.meters)):
                computed = stage.step(packet.at_boundary(wire) if k else packet, self.timer)
                meter.add(computed.blocks, n)
                losses += [block.stats[0] for block in computed.blocks]
                packet = computed.out
            if packet.logits is not None and self.cfg.head.mode == "joint":
                error = joint_error(packet.logits, packet.y)
                for stage in self.stages:
                    stage.apply_head_error(step, error)
        return Step(torch.stack(losses).mean(), packet.head_hits(), n)

    def end_epoch(self, epoch: int, step: int, evaluate_now: bool, tally: EpochTally) -> tuple[dict, dict | None]:
        for stage in self.stages:
            stage.check_finite(epoch)
        train_s, seen = tally.train_s, tally.seen
        fields = {"train_s": train_s, "samples_per_s": seen / train_s if train_s > 0 else 0.0,
                  "head_train_acc": float(tally.correct) / seen if seen and self.cfg.head.mode != "none" else None,
                  "blocks": [row for meter in self.meters for row in meter.rows(self.timer.totals())],
                  **self.memory.read()}
        val = evaluate(self.cfg, self.stages, self.source, self.model.dataset.val).result() if evaluate_now else None
        return {**fields, "cpu_s": time.process_time() - self.cpu0}, val

    def checkpoint(self, run_dir: Path, epoch: int, step: int) -> None:
        for stage in self.stages:
            self.model.save_shard(run_dir, epoch, stage)
        self.model.complete_checkpoint(run_dir, epoch, step)

    def test(self, step: int) -> dict:
        self._test = evaluate(self.cfg, self.stages, self.source, self.model.dataset.test)
        return self._test.result()

    def finish(self, run_dir: Path) -> None:
        found = self._test.confusion(self.model.dataset.num_classes) if self._test else None
        if found is not None:
            save_confusion(found[1], self.model.dataset.class_names, run_dir / "confusion.json",
                           run_dir / "confusion.png")


def train(cfg: Config, out: str | None = None, resume: bool = False) -> dict:
    """Train `cfg` sequentially in this process; returns the summary {run_dir, step, val, test}.

    A checkpoint is written at every epoch end and where `train.max_steps` stops the run; `resume` continues
    from the newest one, mid-epoch if need be (data order and negatives depend only on seed, epoch and step).
    """
    return loop.train(SequentialRunner(cfg), loop.run_dir_for(cfg, out), resume)


def load_checkpoint_model(path: str | Path, data_dir: str | None = None) -> tuple[Model, list[Stage], dict]:
    """Rebuild a run's network from a checkpoint's own config, as one stage on the CPU, whatever partition
    and device it trained with (checkpoints are keyed by global block index); returns it with the manifest."""
    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "manifest.json").read_text())
    cfg = from_dict(meta["config"])
    cfg.pipeline = dataclasses.replace(cfg.pipeline, stages=1, replicas=1, partition="flops")
    cfg.train = dataclasses.replace(cfg.train, device="cpu", compile=False)
    if data_dir is not None:
        cfg.data.dir = data_dir
    model = Model.build(cfg, torch.device("cpu"))
    stages = model.stages()
    model.load(ckpt, stages)
    return model, stages, {**meta, "checkpoint": str(ckpt)}


def evaluate_checkpoint(path: str, split: str = "test", readout: str = "all", data_dir: str | None = None) -> dict:
    """`ffpipe eval`: score a checkpoint on a split with the readouts it trained."""
    model, stages, meta = load_checkpoint_model(path, data_dir)
    cfg = model.cfg
    if readout != "all":
        if readout not in cfg.head.readouts:
            raise FFPipeError(f"readout '{readout}' was not trained in this run; it has {cfg.head.readouts}")
        cfg.head.readouts = [readout]
    result = evaluate(cfg, stages, model.source(), model.dataset.split(split)).result()
    accuracy = {k: v for k, v in result.items() if k in ("linear", "goodness", "group")}
    return {"split": split, "accuracy": accuracy, "n": result["n"], "exit": result["exit"],
            "epoch": meta["epoch"], "checkpoint": meta["checkpoint"]}
