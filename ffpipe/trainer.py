"""The sequential trainer: every stage of the network, one after another, in one process.

It is the reference the pipeline is proven against, and the way to debug a partition: the stages are the
very `Stage` objects a pipeline would run, called in order on each packet; the `joint` head error is applied
right after the last stage, so here the head is exactly the papers' classifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_shard,
    write_manifest,
)
from ffpipe.config import Config, dump_config, to_dict
from ffpipe.data import Dataset, Split, load_for_config
from ffpipe.heads import joint_error
from ffpipe.metrics import MemoryMeter, MetricsLog, TrainView, read_records
from ffpipe.network import (
    build_stages,
    fingerprint,
    measure_block_seconds,
    resolve_device,
    specs_for,
    stage_bounds,
)
from ffpipe.plots import plot_curves
from ffpipe.readout import Tally, readout_blocks, views_for, with_selected_ranges
from ffpipe.source import PacketSource
from ffpipe.stage import NonFiniteLoss, Stage


@dataclass
class Network:
    """A config made concrete: data, stream source and stages, on one device."""

    cfg: Config
    dataset: Dataset
    source: PacketSource
    stages: list[Stage]
    fingerprint: dict

    @classmethod
    def build(cls, cfg: Config) -> Network:
        device = resolve_device(cfg.train.device)
        dataset = load_for_config(cfg.data)
        specs = specs_for(cfg, dataset.image_shape)
        seconds = measure_block_seconds(cfg, dataset, specs, device) if cfg.pipeline.partition == "measured" else None
        stages = build_stages(cfg, specs, stage_bounds(cfg, specs, seconds), dataset.num_classes, device)
        fp = fingerprint(cfg, dataset.image_shape, dataset.num_classes)
        return cls(cfg, dataset, PacketSource(cfg, dataset, device), stages, fp)

    def train_step(self, packet) -> tuple[torch.Tensor, torch.Tensor]:
        """One step through all stages; returns (mean block loss, head-correct count) as tensors (no sync)."""
        losses = []
        for stage in self.stages:
            packet, metrics = stage.step(packet)
            losses.append(metrics.stats[:, 0])
        correct = torch.zeros((), device=packet.y.device)
        if packet.logits is not None:
            if self.cfg.head.mode == "joint":
                error = joint_error(packet.logits, packet.y)
                for stage in self.stages:
                    stage.head_backward(packet.step, error)
            correct = (packet.logits.argmax(dim=1) == packet.y).sum()
        return torch.cat(losses).mean(), correct

    def evaluate(self, split: Split) -> Tally:
        tally = Tally(list(self.cfg.head.readouts), readout_blocks(self.cfg, self.stages[-1].last))
        for view in views_for(self.cfg):
            t0 = time.perf_counter()
            for packet in self.source.eval_packets(split, view):
                for stage in self.stages:
                    packet = stage.evaluate(packet)
                tally.add(packet)
            tally.add_time(view, time.perf_counter() - t0)
        return tally

    def save(self, run_dir: Path, epoch: int, step: int) -> Path:
        ckpt = checkpoint_dir(run_dir, epoch)
        for stage in self.stages:
            save_shard(ckpt, stage.state_dict())
        write_manifest(ckpt, {"epoch": epoch, "step": step, "num_blocks": self.stages[-1].last,
                              "fingerprint": self.fingerprint, "config": to_dict(self.cfg)})
        prune_checkpoints(run_dir, keep=self.cfg.run.keep_checkpoints)
        return ckpt

    def load(self, ckpt: Path) -> dict:
        meta, blocks = load_checkpoint(ckpt, self.fingerprint)
        for stage in self.stages:
            stage.load_state_dict(blocks)
        return meta


def run_dir_for(cfg: Config, out: str | None) -> Path:
    if out:
        return Path(out)
    name = cfg.run.name or time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.out_dir) / name


def train(cfg: Config, out: str | None = None, resume: bool = False) -> dict:
    """Train with `cfg`, writing metrics, checkpoints and plots under the run dir; returns the summary.

    A checkpoint is written at every epoch end and where `train.max_steps` stops the run; `resume` continues
    from the newest one, mid-epoch if need be (data order and negatives depend only on seed, epoch and step).
    """
    run_dir = run_dir_for(cfg, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    net = Network.build(cfg)
    step = 0
    previous = latest_checkpoint(run_dir) if resume else None
    if previous is not None:
        step = net.load(previous)["step"]
    dump_config(cfg, run_dir / "config.yaml")
    log = MetricsLog(run_dir / "metrics.jsonl")
    epochs, spe = cfg.train.epochs, net.source.steps_per_epoch
    last_step = min(epochs * spe, cfg.train.max_steps or epochs * spe)
    val = None
    memory = MemoryMeter(net.stages[0].device)  # after data load and model build: see MemoryMeter
    with TrainView(last_step, epochs, enabled=cfg.train.progress) as view:
        while step < last_step:
            epoch, start = step // spe + 1, step % spe
            for stage in net.stages:
                stage.set_epoch(epoch, epochs)
            t0, seen, correct_sum = time.perf_counter(), 0, 0.0
            for packet in net.source.train_packets(epoch, start):
                try:
                    loss, correct = net.train_step(packet)
                except NonFiniteLoss as exc:
                    log.write({"kind": "error", "epoch": epoch, "step": packet.step, "error": str(exc)})
                    raise
                step, seen = packet.step, seen + packet.n
                correct_sum += correct
                if step % 10 == 0 or step == last_step:
                    view.update(step, epoch, float(loss), float(correct_sum) / seen,
                                seen / (time.perf_counter() - t0))
                if step == last_step:
                    break
            train_s = time.perf_counter() - t0
            record = {"epoch": epoch, "step": step, "lr": net.stages[0].lr, "train_s": train_s,
                      "samples_per_s": seen / train_s if train_s > 0 else 0.0,
                      "head_train_acc": float(correct_sum) / seen if seen else None,
                      "blocks": [row for stage in net.stages for row in stage.epoch_metrics()], **memory.read()}
            if epoch % cfg.train.eval_every == 0 or step == last_step:
                val = net.evaluate(net.dataset.val).result()
                record["val"] = val
            record["wall_s"] = time.perf_counter() - t0
            log.write(record)
            view.epoch_summary(record)
            net.save(run_dir, epoch, step)
    return finish(net, run_dir, log, val, step)


def finish(net: Network, run_dir: Path, log: MetricsLog, val: dict | None, step: int) -> dict:
    """Final test evaluation, confusion matrix and curves; the summary also goes to metrics.jsonl."""
    tally = net.evaluate(net.dataset.test)
    test = with_selected_ranges(tally.result(), val)
    primary = tally.save_confusion(run_dir, net.dataset.class_names)
    record_test(run_dir, log, step, test)
    return {"run_dir": str(run_dir), "step": step, "val": val, "test": test, "primary": primary}


def record_test(run_dir: Path, log: MetricsLog, step: int, test: dict) -> None:
    """The closing `{"kind": "test"}` record and the curves PNG; shared with the pipeline's coordinator."""
    log.write({"kind": "test", "step": step, "test": test})
    records = [r for r in read_records(run_dir / "metrics.jsonl") if "blocks" in r]
    if records:
        plot_curves(records, run_dir / "curves.png")
