"""Stage 0's job: turn minibatches of images into packets of positive, negative and neutral streams.

With `data.labels.negatives_per_image` = k, every image appears under k distinct wrong labels, one negative
stream each (k = 1 is the papers' setting).

Negative sampling lives here, at the head of the network, with a generator seeded by (seed, step) only, so
the stream of packets is the same whatever the partition into stages and wherever a run was resumed, even
in the middle of an epoch.
The network input gets the same RMS normalization as every block output (seed 000 eq. 2).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ffpipe.config import Config
from ffpipe.data import Dataset, Split, epoch_batches, num_batches
from ffpipe.labels import make_encoder, sample_distinct_negatives
from ffpipe.nn import rms_norm
from ffpipe.packet import Packet, negative_streams


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python `hash`, which is salted per process for str)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 6364136223846793005 + part + 1442695040888963407) % (1 << 63)
    return value


class PacketSource:
    def __init__(self, cfg: Config, dataset: Dataset, device: torch.device | str = "cpu"):
        self.cfg, self.dataset = cfg, dataset
        self.device = torch.device(device)
        lab = cfg.data.labels
        self.encoder = make_encoder(lab.encoding, dataset.num_classes, dataset.image_shape,
                                    label_set=lab.label_set, k=lab.k, k_reading=lab.k_reading,
                                    device=self.device)
        self.overlays = self.encoder.overlays
        self.negatives = negative_streams(cfg)
        self.neutral = cfg.head.mode != "none"

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.dataset.train), self.cfg.data.batch_size, drop_last=True)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.cfg.model.eps)

    def train_packets(self, epoch: int, start_step: int = 0) -> Iterator[Packet]:
        """The packets of one epoch (1-indexed), from its `start_step`-th batch on; `Packet.step` counts
        optimizer steps from the start of training (the first step is 1)."""
        seed = self.cfg.train.seed
        first_step = (epoch - 1) * self.steps_per_epoch
        batches = epoch_batches(self.dataset.train, self.cfg.data.batch_size, seed=seed, epoch=epoch,
                                device=self.device, start_batch=start_step)
        gen = torch.Generator(device=self.device)
        for i, (x, y) in enumerate(batches, start=start_step):
            if self.overlays:
                gen.manual_seed(derived_seed(seed, first_step + i + 1))
                wrong = sample_distinct_negatives(y, self.dataset.num_classes, self.negatives, gen)
                streams = [self.encoder.encode(x, y)] + [self.encoder.encode(x, y_neg) for y_neg in wrong]
                if self.neutral:
                    streams.append(self.encoder.neutral(x))
                x = torch.cat(streams)
            yield Packet("train", self._input(x), y, step=first_step + i + 1, epoch=epoch)

    def eval_packets(self, split: Split, view: str) -> Iterator[Packet]:
        """`plain` (neutral stream, or the bare image for group_ce) or `overlay` (all C labels, batched)."""
        for x, y in epoch_batches(split, self.cfg.data.eval_batch_size, seed=0, epoch=0, shuffle=False,
                                  drop_last=False, device=self.device):
            if view == "overlay":
                x = self.encoder.encode_all(x)
            elif self.overlays:
                x = self.encoder.neutral(x)
            yield Packet(view, self._input(x), y)
