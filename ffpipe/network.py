"""Building a network from a config: block specs, the stage partition, the stages, and its fingerprint.

Shared by the sequential trainer, `ffpipe eval` and the pipeline worker, so every entry point builds the
same blocks with the same seeds, whatever the partition.
"""

from __future__ import annotations

import dataclasses

import torch

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.nn import BlockSpec, block_specs
from ffpipe.packet import negative_streams
from ffpipe.partition import partition
from ffpipe.source import PacketSource
from ffpipe.stage import Stage


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FFPipeError("train.device is cuda but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def specs_for(cfg: Config, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    return block_specs(cfg.model, input_shape)


def stage_bounds(cfg: Config, specs: list[BlockSpec], seconds: list[float] | None = None) -> list[tuple[int, int]]:
    return partition(specs, cfg.pipeline.stages, cfg.pipeline.partition, negative_streams(cfg), seconds)


def measure_block_seconds(cfg: Config, dataset, specs: list[BlockSpec], device: torch.device,
                          steps: int = 6) -> list[float]:
    """Median seconds per training step of each block (forward + update), on a throwaway one-stage copy of
    the network run for a few real steps, for `pipeline.partition: measured`. The first step is a warm-up."""
    stage = Stage(cfg, specs, 0, len(specs), dataset.num_classes, device)
    samples = []
    for i, packet in enumerate(PacketSource(cfg, dataset, device).train_packets(epoch=1)):
        if i > steps:
            break
        seconds = stage.step(packet)[1].seconds
        if i:
            samples.append(seconds)
    return [sorted(column)[len(column) // 2] for column in zip(*samples)]


def build_stages(cfg: Config, specs: list[BlockSpec], bounds: list[tuple[int, int]], num_classes: int,
                 device: torch.device) -> list[Stage]:
    return [Stage(cfg, specs, first, last, num_classes, device) for first, last in bounds]


def fingerprint(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """What must match for a checkpoint to load: the blocks and what hangs on them, never the partition."""
    fp = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()}
    fp.update({"input_shape": list(input_shape), "num_classes": num_classes, "loss.family": cfg.loss.family,
               "loss.significance": cfg.loss.significance, "loss.peer_weight>0": cfg.loss.peer_weight > 0,
               "head.mode": cfg.head.mode != "none", "head.exclude_first": cfg.head.exclude_first})
    return fp
