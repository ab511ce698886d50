"""Training-image augmentation: random shifts and mirror images, drawn per batch from a generator that is a
pure function of (seed, epoch, batch) (`ffpipe.data.batches.augment_generator`).

Why here and in this form: the batch is still uint8 on the CPU, so an augmentation is two gathers over a few
hundred kilobytes, cheaper than any block's forward; and because its generator is seeded from the batch's
coordinates alone (as `batches.epoch_order` is from the epoch's), a run resumed mid-epoch, the pipeline's
stage 0, the sequential trainer and the BP baseline all see the same augmented images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffpipe.config import AugmentConfig


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """`x` [B, C, H, W] (any dtype, CPU) with each image mirrored with probability 1/2 (`cfg.flip`) and then
    translated by (dy, dx), each uniform in [-shift, shift], the uncovered border filled with zeros."""
    b, c, h, w = x.shape
    if cfg.flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    s = cfg.shift
    if s:
        padded = F.pad(x, (s, s, s, s))
        dy, dx = torch.randint(0, 2 * s + 1, (2, b), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * s)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    return x
