"""Mini-batches from an in-memory split, shuffled reproducibly per epoch, without a per-sample DataLoader.

Images of 28 x 28 or 32 x 32 pixels are so small that a per-sample Python loop (torch's DataLoader with a
Dataset) costs more than the forward pass, so a batch is one `index_select` on the split's uint8 tensor,
converted to float32 in [0, 1] only then.

The epoch's order comes from a torch.Generator seeded by a hash of (seed, epoch), not from a generator that
advances across epochs. Epoch e's order is then a pure function of (seed, e): a run resumed at epoch e from a
checkpoint replays exactly the batches an uninterrupted run would, with no RNG state in the checkpoint, and
`start_batch` skips into the middle of an epoch without drawing the skipped batches. Hashing (rather than
seed + epoch) keeps run (seed=1, epoch=0) from repeating run (seed=0, epoch=1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from ffpipe.config import AugmentConfig
from ffpipe.data.augment import augment
from ffpipe.data.dataset import Split
from ffpipe.errors import FFPipeError


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """How many batches `epoch_batches` yields for `n` samples."""
    if batch_size < 1:
        raise FFPipeError(f"batch size must be at least 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def _hashed_seed(purpose: str, *parts: int) -> int:
    """A 63-bit generator seed that depends on `purpose` and `parts`, and on nothing else."""
    digest = hashlib.sha256(f"ffpipe-{purpose}:{':'.join(str(int(p)) for p in parts)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s sample order."""
    return _hashed_seed("epoch", seed, epoch)


def augment_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one training batch's augmentation draws: (seed, epoch, batch) and nothing else."""
    return torch.Generator().manual_seed(_hashed_seed("augment", seed, epoch, batch))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of epoch `epoch`: a permutation of range(n), int64, on the CPU."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


def epoch_batches(
    split: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
    device: torch.device | str = "cpu",
    start_batch: int = 0,
    augment: AugmentConfig | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 images [B, C, H, W] in [0, 1], int64 labels [B]) on `device` for one epoch. The batch
    is gathered on the CPU and copied (`to_device`); its order never depends on the device.

    `shuffle=False` keeps file order (evaluation); `drop_last` drops a final short batch (training, so that
    every step sees `batch_size` samples); `start_batch` resumes inside an epoch; `augment` (training only)
    shifts and mirrors each batch as `data.augment` says (`ffpipe.data.augment`).
    """
    total = num_batches(len(split), batch_size, drop_last)
    if not 0 <= start_batch <= total:
        raise FFPipeError(f"start_batch must be in 0..{total}, got {start_batch}")
    device = torch.device(device)
    active = augment if augment is not None and (augment.shift or augment.flip) else None
    return _generate(split, batch_size, seed, epoch, shuffle, total, device, start_batch, active)


def _generate(
    split: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    total: int,
    device: torch.device,
    start_batch: int,
    augmentation: AugmentConfig | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = split.images, split.labels
    order = epoch_order(len(split), seed, epoch) if shuffle else None
    for b in range(start_batch, total):
        lo, hi = b * batch_size, min((b + 1) * batch_size, len(split))
        if order is None:
            x, y = images[lo:hi], labels[lo:hi].clone()  # a view would let callers edit the split
        else:
            idx = order[lo:hi]
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
        if augmentation is not None:
            x = augment(x, augmentation, augment_generator(seed, epoch, b))
        yield to_device(x, device).to(torch.float32).div_(255.0), to_device(y, device)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` (on the CPU) on `device`. To a GPU the copy leaves from pinned memory, asynchronously: the host
    does not wait for it, and the split itself stays on the host (the whole split is never copied)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)
