"""Spatially extended Fourier labels (seed 000 §2.1): superpose a label wave on the image with intensity K.

What K means. Seed 000 calls K "the relative contribution of the label pattern to the total intensity of the
image", adds the label "by pixel-wise addition" (Fig. 1) and then normalizes the images "again" to [0, 1]. Our
reading, taken literally: the labelled image before renormalization is

    z = x + a * p,   with a >= 0 chosen per image so that   K = sum(a * p) / sum(x + a * p),
    i.e.             a = K / (1 - K) * sum(x) / sum(p)                                        (our definition)

where x is the image, p the label pattern (waves.py) and the sums run over all C*H*W values. z is then
min-max renormalized to [0, 1] per image, over all channels jointly so colours keep their balance (seed 000
"normalized to the range 0 to 1"; per-image min-max is our choice). Renormalization is affine; where min(z) is
0, as for an MNIST digit whose black background meets a wave trough, it is a pure scaling and the final image
keeps the fraction K exactly, otherwise nearly.

Why this reading rather than the blend (1 - K) * x + K * p: the text speaks of the share of the total
intensity, not of a mixing weight; the paper needs to renormalize after adding, which a blend of two [0, 1]
images would not need; and K lives in [0, 1) with K -> 1 meaning "all label", which is why K = 1 is rejected.
It also makes the total intensity of a labelled image independent of the label (set 2's off-grid waves have
slightly different means), so a layer cannot tell labels apart by brightness alone.

What K = 0.35 (seed 000's best, §3.1) then means: on an average MNIST digit (mean gray 0.13) a = 0.14, so
the wave spans about an eighth of the final gray range and the digit stays dominant; on CIFAR-10 (mean 0.47)
a is about 0.5. The blend reading would instead give the label two thirds of an MNIST image's intensity at
K = 0.35. K = 0 returns the image unchanged up to the renormalization; as K grows the result approaches the
pattern.

`data.labels.k_reading: blend` selects the blend instead, so the two readings can be compared (seed 000
Fig. 5 puts the best K between 35% and 65%; `benchmarks/results/reproduction/` has the K sweep of both).

A black image (sum(x) = 0) cannot take a share of its own intensity; we treat its mean as 1e-6, so any K > 0
gives it the pure label pattern after renormalization.

The neutral overlay is the mean of all label patterns, superposed by the same rule (our choice): it has the
same intensity budget as every label and prefers none of them.
"""

from numbers import Real
from typing import get_args

import torch
from torch import Tensor

from ffpipe.config.sections import KReading
from ffpipe.errors import FFPipeError
from ffpipe.ff.labels.base import LabelEncoder
from ffpipe.ff.labels.waves import fourier_patterns

DARK_MEAN = 1e-6
_IMAGE_DIMS = (-3, -2, -1)


def check_intensity(k: float) -> float:
    """K as a float in [0, 1), or one clear error."""
    if isinstance(k, bool) or not isinstance(k, Real) or not 0.0 <= float(k) < 1.0:
        raise FFPipeError(f"label intensity K must be a number in [0, 1), got {k!r}")
    return float(k)


def renormalize(z: Tensor) -> Tensor:
    """Min-max scale each image (last three dims together) to [0, 1]; a constant image becomes 0."""
    low = z.amin(dim=_IMAGE_DIMS, keepdim=True)
    span = z.amax(dim=_IMAGE_DIMS, keepdim=True) - low
    return (z - low) / torch.where(span > 0, span, torch.ones_like(span))


def blend(x: Tensor, pattern: Tensor, pattern_mean: Tensor, k: float) -> Tensor:
    """renormalize((1 - K) * x + K * pattern): the other reading of K (module docstring)."""
    del pattern_mean  # the blend does not depend on the image's or the pattern's intensity
    return renormalize((1.0 - k) * x + k * pattern.to(x.dtype))


def superpose(x: Tensor, pattern: Tensor, pattern_mean: Tensor, k: float) -> Tensor:
    """renormalize(x + a * pattern) with a = K/(1-K) * mean(x) / mean(pattern) (module docstring).

    x is [..., C, H, W]; `pattern` broadcasts against x and `pattern_mean` (its mean gray value, float32)
    against x's leading dims, so one call labels a batch ([B] means) or all labels of a batch at once
    (x [1, B, ...] with patterns [L, 1, ...] and means [L, 1]).
    """
    image_mean = torch.mean(x, dim=_IMAGE_DIMS, dtype=torch.float32).clamp_min(DARK_MEAN)
    weight = (k / (1.0 - k)) * image_mean / pattern_mean
    return renormalize(x + weight[..., None, None, None].to(x.dtype) * pattern.to(x.dtype))


K_READINGS = dict(zip(get_args(KReading), (superpose, blend)))  # in the order KReading names them


class FourierEncoder(LabelEncoder):
    """Seed 000's spatially extended labels: a full-image wave per class, superposed with intensity K."""

    overlays = True

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        label_set: int,
        k: float,
        device: torch.device,
        k_reading: str = "share",
    ) -> None:
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.device = device
        self.label_set = label_set
        self.k = check_intensity(k)
        if k_reading not in K_READINGS:
            raise FFPipeError(f"K reading '{k_reading}' is not one of {', '.join(K_READINGS)}")
        self._superpose = K_READINGS[k_reading]
        self.description = f"fourier set {label_set}, K={self.k:g} ({k_reading})"
        self.patterns = fourier_patterns(label_set, image_shape, num_classes).to(device)
        self.pattern_means = self.patterns.mean(dim=(1, 2, 3))
        self.neutral_pattern = self.patterns.mean(dim=0)
        self.neutral_mean = self.neutral_pattern.mean()

    def encode(self, x: Tensor, y: Tensor) -> Tensor:
        self._check_labels(x, y)
        return self._superpose(x, self.patterns[y], self.pattern_means[y], self.k)

    def neutral(self, x: Tensor) -> Tensor:
        self._check_images(x)
        return self._superpose(x, self.neutral_pattern, self.neutral_mean, self.k)

    def encode_all(self, x: Tensor) -> Tensor:
        self._check_images(x)
        labelled = self._superpose(x[None], self.patterns[:, None], self.pattern_means[:, None], self.k)
        return labelled.reshape(self.num_classes * x.shape[0], *x.shape[1:])
