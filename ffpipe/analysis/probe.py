"""Looking inside a trained network: a checkpoint rebuilt from its own config, and each block's activity.

Like `ffpipe eval`, the config comes from the checkpoint manifest and the network is built as one sequential
stage on the CPU, whatever partition or device it was trained with (checkpoints are keyed by global block
index). The forward pass is `Stage.evaluate`'s, kept per block: input → RMS norm (seed 000 eq. 2) → for each
block y = block(x), x = norm(y), where `norm` is the between-block normalization the run trained with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ffpipe.checkpoint import resolve_checkpoint
from ffpipe.config import Config, from_dict
from ffpipe.data import Dataset
from ffpipe.errors import FFPipeError
from ffpipe.labels.base import LabelEncoder
from ffpipe.nn import BlockSpec, make_norm, rms_norm
from ffpipe.trainer import Network

STREAMS = ("neutral", "positive")


@dataclass
class Probe:
    cfg: Config
    dataset: Dataset
    specs: list[BlockSpec]
    blocks: list[nn.Module]
    heads: dict[int, nn.Linear]
    encoder: LabelEncoder
    norm: Callable[[torch.Tensor], torch.Tensor]
    checkpoint: Path
    epoch: int

    @property
    def run_dir(self) -> Path:
        """The run a checkpoint belongs to (RUN/checkpoints/epoch-N → RUN)."""
        return self.checkpoint.parent.parent

    def images(self, split: str, n: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images (float [n, C, H, W] in [0, 1]) and labels of `split`: the first n, or a seeded random
        subset; all of the split when it has fewer than n."""
        data = self.dataset.split(split)
        index = torch.arange(len(data))
        if seed is not None:
            index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        index = index[:n]
        return data.images[index].float() / 255.0, data.labels[index]

    def inputs(self, x: torch.Tensor, y: torch.Tensor, stream: str) -> torch.Tensor:
        """The network input of a stream: `neutral` (the neutral-label overlay, what the linear head reads)
        or `positive` (the image with its true label); RMS-normalized like `PacketSource` does."""
        if stream not in STREAMS:
            raise FFPipeError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        shown = self.encoder.neutral(x) if stream == "neutral" else self.encoder.encode(x, y)
        return rms_norm(shown, self.cfg.model.eps)

    @torch.no_grad()
    def activations(self, inp: torch.Tensor, batch: int = 500) -> list[torch.Tensor]:
        """The normalized output of every block, [N, *out_shape] each, computed `batch` samples at a time."""
        outputs: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        for start in range(0, len(inp), batch):
            x = inp[start:start + batch]
            for j, block in enumerate(self.blocks):
                x = self.norm(block(x))
                outputs[j].append(x)
        return [torch.cat(parts) for parts in outputs]


def load_probe(path: str | Path, data_dir: str | None = None) -> Probe:
    """Rebuild the network of a run (its latest checkpoint) or of a checkpoint directory, in eval mode."""
    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "manifest.json").read_text())
    cfg = from_dict(meta["config"])
    cfg.pipeline = dataclasses.replace(cfg.pipeline, stages=1, replicas=1, partition="flops")
    cfg.train = dataclasses.replace(cfg.train, device="cpu", compile=False)
    if data_dir is not None:
        cfg.data.dir = data_dir
    net = Network.build(cfg)
    net.load(ckpt)
    stage = net.stages[0]
    stage.blocks.eval()
    norm = make_norm(cfg.model.norm, net.dataset.num_classes, cfg.model.eps)
    specs = [block.spec for block in stage.blocks]
    return Probe(cfg, net.dataset, specs, list(stage.blocks), dict(stage.heads), net.source.encoder, norm, ckpt,
                 int(meta["epoch"]))
