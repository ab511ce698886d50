"""Build the label encoder a run asks for, with one clear error for every bad argument.

The three encodings: "onehot" (Hinton 2022, for MLPs), "fourier" (seed 000 §2.1, for CNNs: a label wave over
the whole image) and "none" (channel-group models such as CwComp, seed 001, whose loss takes the label and
whose input carries none).
"""

from numbers import Integral
from typing import get_args

import torch

from ffpipe.config.sections import Encoding
from ffpipe.errors import FFPipeError
from ffpipe.ff.labels.base import ChannelGroupEncoder, LabelEncoder, check_image_shape
from ffpipe.ff.labels.fourier import FourierEncoder
from ffpipe.ff.labels.onehot import OneHotEncoder

ENCODINGS = get_args(Encoding)


def make_encoder(
    encoding: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    *,
    label_set: int = 1,
    k: float = 0.35,
    k_reading: str = "share",
    device: torch.device | str = "cpu",
) -> LabelEncoder:
    """The encoder for `encoding`, its patterns precomputed on `device`.

    `label_set` (1 or 2), `k` (the label intensity K in [0, 1)) and `k_reading` (how K mixes label and
    image, see fourier.py) only apply to "fourier" and are ignored otherwise. Seed 000's best MNIST result
    uses set 1 with K = 0.35, hence the defaults.
    """
    if encoding not in ENCODINGS:
        raise FFPipeError(f"unknown label encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise FFPipeError(f"a classifier needs at least 2 classes, got {num_classes!r}")
    num_classes = int(num_classes)
    shape = check_image_shape(image_shape)
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise FFPipeError(f"not a torch device: {device!r}") from None

    if encoding == "fourier":
        return FourierEncoder(num_classes, shape, label_set, k, target, k_reading)
    if encoding == "onehot":
        pixels = shape[0] * shape[1] * shape[2]
        if num_classes > pixels:
            raise FFPipeError(
                f"one-hot labels need {num_classes} pixels, but a {shape} image has only {pixels}"
            )
        return OneHotEncoder(num_classes, shape, target)
    return ChannelGroupEncoder(num_classes, shape, target)
