"""The in-memory form of a dataset: three splits, each one uint8 image tensor and one label tensor.

Images stay uint8 [N, C, H, W] (a quarter of the memory of float32, and the exact file values) and become
float only per batch (`ffpipe.data.batches`). The validation split is a seeded random subset of the official
training set; seed 000 §2.2 holds out 10,000 of MNIST's 60,000 training images this way. Which images are
held out must not drift with the torch version, because it defines the experiment, so the permutation comes
from numpy's PCG64 `default_rng`, whose streams numpy keeps stable. Train and val keep the file order; the
per-epoch shuffle happens later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch

from ffpipe.config.sections import ValSplit
from ffpipe.errors import FFPipeError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset. `source` is the folder its files were read from."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise FFPipeError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)


def check_split_seed(split_seed: int) -> None:
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise FFPipeError(f"split_seed must be a non-negative integer, got {split_seed!r}")


VAL_SPLITS = get_args(ValSplit)


def split_train_val(
    images: torch.Tensor, labels: torch.Tensor, val_size: int, split_seed: int, how: str = "random"
) -> tuple[Split, Split]:
    """Hold out `val_size` images of the official training set; both parts keep file order.

    `random` (ours, seed 000 §2.2 does not say which 10,000): a subset drawn with `split_seed`. `last`: the
    last `val_size` images of the file, as loeweX's code holds out MNIST images 50,000..59,999, so curves
    compare like for like with it (that block is easier than a random draw: the file is not shuffled).
    """
    check_split_seed(split_seed)
    n = int(labels.shape[0])
    if not 0 < val_size < n:
        raise FFPipeError(f"cannot hold out {val_size} validation samples from {n} training samples")
    if how not in VAL_SPLITS:
        raise FFPipeError(f"data.val_split '{how}' is not one of {', '.join(VAL_SPLITS)}")
    is_val = torch.zeros(n, dtype=torch.bool)
    if how == "last":
        is_val[n - val_size:] = True
    else:
        is_val[torch.from_numpy(np.random.default_rng(split_seed).permutation(n)[:val_size])] = True
    return Split(images[~is_val], labels[~is_val]), Split(images[is_val], labels[is_val])
