"""A config made concrete: the data, the block specs, the partition into stages, the stages, the fingerprint.

Every entry point builds its network here — the sequential runner, each pipeline worker, `ffpipe eval` and
the probes of the lab tools — so all of them get the same blocks with the same seeds, whatever the
partition, and write checkpoints with the same manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ffpipe.config import Config, to_dict
from ffpipe.data import Dataset, load_for_config
from ffpipe.ff.blocks import block_specs
from ffpipe.ff.head import GradAverage
from ffpipe.ff.network import Network
from ffpipe.ff.packet import PacketSource
from ffpipe.ff.partition import partition
from ffpipe.ff.stage import Recipe, Stage
from ffpipe.run.checkpoint import checkpoint_dir, load_checkpoint, prune_checkpoints, save_shard, write_manifest
from ffpipe.run.measure import DeviceTimer


@dataclass
class Model:
    cfg: Config
    dataset: Dataset
    network: Network  # the specs and what the stages share, derived once here, handed to every stage
    bounds: list[tuple[int, int]]
    device: torch.device
    seconds: list[float] | None = None  # the measured block times, for `pipeline.partition: measured`

    @classmethod
    def build(cls, cfg: Config, device: torch.device, seconds: list[float] | None = None) -> Model:
        """`seconds`: per-block times for `pipeline.partition: measured`; measured here when not given."""
        dataset = load_for_config(cfg.data)
        specs = block_specs(cfg.model, dataset.image_shape)
        network = Network.derive(cfg, specs, dataset.num_classes)
        if cfg.pipeline.partition == "measured" and seconds is None:
            seconds = measure_block_seconds(cfg, dataset, network, device)
        bounds = partition(specs, cfg.pipeline.stages, cfg.pipeline.partition, network.negatives, seconds)
        return cls(cfg, dataset, network, bounds, device, seconds)

    @property
    def num_blocks(self) -> int:
        return len(self.network)

    def stage(self, k: int, average_grads: GradAverage | None = None) -> Stage:
        first, last = self.bounds[k]
        return Stage(Recipe.of(self.cfg), self.network, first, last, self.device, average_grads)

    def owns_head(self) -> list[bool]:
        """Per stage, whether it holds a head slice (the joint head's error channel reaches those)."""
        return [self.network.owns_head(first, last) for first, last in self.bounds]

    def stages(self) -> list[Stage]:
        return [self.stage(k) for k in range(len(self.bounds))]

    def source(self) -> PacketSource:
        return PacketSource(self.cfg, self.dataset, self.device)

    @property
    def fingerprint(self) -> dict:
        """What must match for a checkpoint to load: the blocks and what hangs on them, never the partition."""
        cfg = self.cfg
        fp = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()}
        fp.update({"input_shape": list(self.dataset.image_shape), "num_classes": self.dataset.num_classes,
                   "loss.family": cfg.loss.family, "loss.significance": cfg.loss.significance,
                   "loss.peer_weight>0": cfg.loss.peer_weight > 0, "head.mode": cfg.head.mode != "none",
                   "head.exclude_first": cfg.head.exclude_first})
        return fp

    def save_shard(self, run_dir: Path, epoch: int, stage: Stage) -> None:
        save_shard(checkpoint_dir(run_dir, epoch), stage.state_dict())

    def complete_checkpoint(self, run_dir: Path, epoch: int, step: int) -> Path:
        """Write the manifest of epoch `epoch`'s checkpoint, once every stage's shard is on disk, and prune."""
        ckpt = checkpoint_dir(run_dir, epoch)
        write_manifest(ckpt, {"epoch": epoch, "step": step, "num_blocks": self.num_blocks,
                              "fingerprint": self.fingerprint, "config": to_dict(self.cfg),
                              "stages": len(self.bounds)})
        prune_checkpoints(run_dir, keep=self.cfg.run.keep_checkpoints)
        return ckpt

    def load(self, ckpt: Path, stages: list[Stage]) -> dict:
        """Load a checkpoint of any partition into `stages`; returns its manifest."""
        meta, blocks = load_checkpoint(ckpt, self.fingerprint)
        for stage in stages:
            stage.load_state_dict(blocks)
        return meta


def measure_block_seconds(cfg: Config, dataset: Dataset, network: Network, device: torch.device,
                          steps: int = 6) -> list[float]:
    """Median seconds per training step of each block (compute + apply, as `DeviceTimer` measures them), on a throwaway
    one-stage copy of the network run for a few real steps, for `pipeline.partition: measured`. The first
    step is a warm-up."""
    stage = Stage(Recipe.of(cfg), network, 0, len(network), device)
    timer, samples = DeviceTimer(device), []
    for i, packet in enumerate(PacketSource(cfg, dataset, device).train_packets(epoch=1)):
        if i > steps:
            break
        timer.reset()
        stage.step(packet, timer)
        if i:
            seconds = timer.totals()
            samples.append([seconds[k] for k in range(len(network))])
    return [sorted(column)[len(column) // 2] for column in zip(*samples)]
