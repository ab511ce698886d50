"""The label-encoder interface shared by every encoding, and the label-free encoder of channel-group mode.

Forward-Forward with labels in the input (Hinton 2022; seed 000 §2.1) shows each layer an image *with* a label
baked into its pixels: the correct label makes positive data, a wrong one negative data, and at goodness
inference every image is shown once per label. An encoder is the one object that knows how a label is put into
an image, so the training loop, the goodness readout and the CLI's `labels show` all call the same four
operations: `encode`, `neutral`, `encode_all` and the `overlays` flag.
"""

from abc import ABC, abstractmethod
from numbers import Integral

import torch
from torch import Tensor

from ffpipe.errors import FFPipeError


class LabelEncoder(ABC):
    """Puts a class label into a batch of images `x` (float [B, C, H, W] in [0, 1]).

    Encoders are stateless after construction (all label patterns are precomputed on `device`), so one
    instance can serve every stage of a pipeline that lives on that device. Inputs must already be on
    `device`; moving them here would hide a copy in every step.
    """

    num_classes: int
    overlays: bool
    image_shape: tuple[int, int, int]
    device: torch.device
    description: str

    @abstractmethod
    def encode(self, x: Tensor, y: Tensor) -> Tensor:
        """`x` with label `y[b]` in image b (y int64 [B]); same shape and dtype as `x`."""

    @abstractmethod
    def neutral(self, x: Tensor) -> Tensor:
        """`x` with the label-neutral overlay (Hinton's "neutral label" for a label-free forward pass)."""

    @abstractmethod
    def encode_all(self, x: Tensor) -> Tensor:
        """Every label on every image: [num_classes*B, C, H, W], label-major (rows k*B:(k+1)*B carry label k).

        Label-major order lets goodness inference (seed 000 eq. 4) reshape the per-row goodness to
        [num_classes, B] and take the argmax over dim 0 without any gather.
        """

    def _check_images(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise FFPipeError(
                f"{self.description} labels expect images of shape [B, {expected}], got {list(x.shape)}"
            )

    def _check_labels(self, x: Tensor, y: Tensor) -> None:
        self._check_images(x)
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise FFPipeError(
                f"labels must be an integer tensor of shape [{x.shape[0]}], got {y.dtype} {list(y.shape)}"
            )


class ChannelGroupEncoder(LabelEncoder):
    """Encoding "none": channel-group models (CwComp, seed 001 eqs. 2-3; DeeperForward) take no label input.

    Their layers split the channels into one group per class and train a cross-entropy over the group
    goodnesses, so the label goes to the loss, never into the pixels. The encoder hands images through
    untouched so the rest of the engine needs no special case.
    """

    overlays = False

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], device: torch.device) -> None:
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.device = device
        self.description = "none (channel-group)"

    def encode(self, x: Tensor, y: Tensor) -> Tensor:
        self._check_labels(x, y)
        return x

    def neutral(self, x: Tensor) -> Tensor:
        self._check_images(x)
        return x

    def encode_all(self, x: Tensor) -> Tensor:
        """The same image once per label: there is nothing label-specific to add."""
        self._check_images(x)
        return x.repeat(self.num_classes, 1, 1, 1)


def check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """`image_shape` as a (C, H, W) tuple of positive ints, or one clear error."""
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else ()
    if len(shape) != 3 or not all(isinstance(d, Integral) and not isinstance(d, bool) for d in shape):
        raise FFPipeError(f"image shape must be three positive integers (C, H, W), got {image_shape!r}")
    if min(shape) < 1:
        raise FFPipeError(f"image shape must be three positive integers (C, H, W), got {image_shape!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))
