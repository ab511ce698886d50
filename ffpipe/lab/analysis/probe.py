"""Looking inside a trained network: a checkpoint rebuilt from its own config, and each block's activity.

The network is rebuilt by `ffpipe.run.sequential.load_checkpoint_model`, as `ffpipe eval` does: one stage on
the CPU, whatever partition or device it trained with. Block activity comes from `Stage.features`, the
stage's own forward pass, so class activation maps and t-SNE see exactly what training and the readouts see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ffpipe.config import Config
from ffpipe.data import Dataset
from ffpipe.errors import FFPipeError
from ffpipe.ff.packet import PacketSource
from ffpipe.ff.stage import Stage
from ffpipe.run.sequential import load_checkpoint_model

STREAMS = ("neutral", "positive")


@dataclass
class Probe:
    cfg: Config
    dataset: Dataset
    stage: Stage
    source: PacketSource
    checkpoint: Path
    epoch: int

    @property
    def run_dir(self) -> Path:
        """The run a checkpoint belongs to (RUN/checkpoints/epoch-N → RUN)."""
        return self.checkpoint.parent.parent

    @property
    def heads(self) -> dict[int, nn.Linear]:
        """The linear head's slices by block index."""
        return self.stage.head.slices

    @property
    def num_blocks(self) -> int:
        return len(self.stage.indices)

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
        or `positive` (the image with its true label), normalized as training normalizes it."""
        if stream not in STREAMS:
            raise FFPipeError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        encoder = self.source.encoder
        shown = encoder.neutral(x) if stream == "neutral" else encoder.encode(x, y)
        return self.source.network_input(shown)

    def activations(self, inp: torch.Tensor, batch: int = 500) -> list[torch.Tensor]:
        """The normalized output of every block, [N, *out_shape] each, computed `batch` samples at a time."""
        parts = [self.stage.features(inp[start:start + batch]) for start in range(0, len(inp), batch)]
        return [torch.cat(per_block) for per_block in zip(*parts)]


def load_probe(path: str | Path, data_dir: str | None = None) -> Probe:
    """Rebuild the network of a run (its latest checkpoint) or of a checkpoint directory, in eval mode."""
    model, (stage,), meta = load_checkpoint_model(path, data_dir)
    return Probe(model.cfg, model.dataset, stage, model.source(), Path(meta["checkpoint"]), meta["epoch"])
