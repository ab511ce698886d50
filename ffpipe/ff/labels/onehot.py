"""Hinton's one-hot label overlay (Hinton 2022; seed 000 Fig. 1 A-B).

The first `num_classes` values of the flattened image are overwritten by the one-hot code of the label. For
MNIST those are the first ten pixels of the top row, which are black in practically every digit, so nothing of
the digit is lost. For a multi-channel image we take the first values of the flattened C*H*W tensor, i.e. the
start of channel 0's top row: the same rule for every shape, and what a fully connected first layer sees as
"the first inputs".

Seed 000 §2.1 explains why this is a poor fit for convolutions: the code lives in a 1x10 strip, so most
kernel positions never see it. It is here as the baseline for MLPs and to reproduce Hinton's setup.
"""

import torch
from torch import Tensor

from ffpipe.ff.labels.base import LabelEncoder


class OneHotEncoder(LabelEncoder):
    """First C values of the flattened image := one-hot(label); neutral := 1/C in each of them.

    The neutral value 1/C is Hinton's choice for the label-free pass of a softmax readout: it has the same sum
    as a one-hot code and prefers no class.
    """

    overlays = True

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], device: torch.device) -> None:
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.device = device
        self.description = "one-hot"
        self._codes = torch.eye(num_classes, device=device)

    def encode(self, x: Tensor, y: Tensor) -> Tensor:
        self._check_labels(x, y)
        flat = x.reshape(x.shape[0], -1).clone()
        flat[:, : self.num_classes] = self._codes[y].to(x.dtype)
        return flat.view(x.shape)

    def neutral(self, x: Tensor) -> Tensor:
        self._check_images(x)
        flat = x.reshape(x.shape[0], -1).clone()
        flat[:, : self.num_classes] = 1.0 / self.num_classes
        return flat.view(x.shape)

    def encode_all(self, x: Tensor) -> Tensor:
        self._check_images(x)
        batch = x.shape[0]
        flat = x.reshape(1, batch, -1).repeat(self.num_classes, 1, 1)
        flat[:, :, : self.num_classes] = self._codes[:, None, :].to(x.dtype)
        return flat.view(self.num_classes * batch, *x.shape[1:])
