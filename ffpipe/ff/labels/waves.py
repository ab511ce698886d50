"""Fourier label patterns: one full-size gray-value wave per class (seed 000 §2.1, Figs. 1 C-D, 2 and 7).

Seed 000 builds each label "starting from an empty 2D Fourier space of the same size as the image" and
sets "a single 2D Fourier mode to a finite amplitude"; the inverse transform is a plane wave with a fixed
frequency, orientation and phase that covers the whole image, so every position of a convolution kernel sees
the label. We evaluate that plane wave directly:

    p(r, c) = 1/2 + 1/2 * cos(2*pi * (kx * c / W - ky * r / H) + phase)        (values in [0, 1])

for pixel row r (downwards) and column c (rightwards). (kx, ky) is the mode in cycles per image width and
height, i.e. in DFT-index units; for an integer mode this is exactly the real part of the inverse FFT of
that single mode, rescaled to [0, 1]. The orientation is the angle of (kx, ky) counter-clockwise from the +x
axis as the image is displayed, so 0 deg varies along x (vertical stripes) and 90 deg along y (horizontal
stripes). The pattern is the same gray wave in every channel. For non-square images angles are measured in
Fourier-index space (equal to pixel space when H == W); that keeps set 1's modes exact grid modes at any
size.

Set 1 (seed 000 Fig. 2; used for the paper's best 99.14 %): 4 orientations x 3 frequencies = 12 combinations
for 10 labels. The paper gives neither the frequencies nor the mapping ("a matter of choice"), so both are
ours. On a square grid a single mode at 45 deg is (k, k), so "frequency" here is the mode index
k in {2, 4, 6}: 0 deg -> (k, 0), 45 deg -> (k, k), 90 deg -> (0, k), 135 deg -> (-k, k). The diagonal modes
oscillate sqrt(2) faster than the axis modes with the same k. k = 2 is the lowest index that still shows full
stripes (two periods) rather than a brightness gradient; k = 6 keeps the axis period at 4.7 px on 28 px
images (5.3 px on 32 px), well above the 2 px Nyquist limit and wider than an MNIST stroke.

    label  mode (kx, ky)  orientation  cycles/side      label  mode (kx, ky)  orientation  cycles/side
      0      (2, 0)          0 deg        2.00            5      (4, 4)         45 deg        5.66
      1      (2, 2)         45 deg        2.83            6      (0, 4)         90 deg        4.00
      2      (0, 2)         90 deg        2.00            7     (-4, 4)        135 deg        5.66
      3     (-2, 2)        135 deg        2.83            8      (6, 0)          0 deg        6.00
      4      (4, 0)          0 deg        4.00            9      (0, 6)         90 deg        6.00

The two combinations left out are 45 and 135 deg at k = 6, i.e. modes (6, 6) and (-6, 6): at 8.49 cycles per
side (a 3.3 px period on 28 px images) they are the two highest spatial frequencies of the twelve, the closest
to Nyquist, where the sampled wave degrades into a pixel-scale texture of the same scale as the strokes and is
the first thing any smoothing removes. The 10 labels are therefore the 10 lowest spatial frequencies, ordered
frequency-major (k = 2: 0/45/90/135 deg, k = 4: same, k = 6: 0/90 deg) so a label grid reads row by row. All
ten are distinct DFT modes, hence exactly orthogonal after removing their mean.

Set 2 (seed 000 Fig. 7): one frequency, 10 equidistant orientations theta_j = 18 deg * j, j = 0..9, in
[0, 180). Only 0 deg (and 90 deg, which is not among them) lies on the DFT grid, so these modes are in general
off-grid: we keep the paper's exact angles and frequency rather than rounding each mode to the nearest grid
point (which would make the angles unequal). The frequency, 6 cycles per side along the wave, is our choice:
among integer frequencies 3..8 it gives the smallest largest correlation between any two set-2 patterns on
28 x 28 and 32 x 32 images (0.064, against 0.12-0.18 for 3..5), and it equals set 1's highest axis frequency.

All phases are 0 (the mode's amplitude is real, so every wave has a crest at pixel (0, 0)); the paper lists
phase as a free parameter, but frequency and orientation already tell the ten labels apart. A consequence for
set 1 (all k even): every pattern also has a crest at the image centre, which shows as a bright centre in the
neutral (mean) pattern.
"""

import math
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import Tensor

from ffpipe.errors import FFPipeError
from ffpipe.ff.labels.base import check_image_shape

LABEL_SETS = (1, 2)
MAX_CLASSES = 10
SET2_CYCLES = 6.0


@dataclass(frozen=True)
class Wave:
    """One label's Fourier mode: (kx, ky) in cycles per image width/height (ky upwards) and a phase in rad."""

    kx: float
    ky: float
    phase: float = 0.0

    @property
    def cycles(self) -> float:
        """Spatial frequency along the wave, in cycles per image side (for square images)."""
        return math.hypot(self.kx, self.ky)

    @property
    def angle_deg(self) -> float:
        """Orientation of the wave vector in [0, 180): a wave and its opposite are the same stripes."""
        return math.degrees(math.atan2(self.ky, self.kx)) % 180.0


SET1 = (
    Wave(2, 0), Wave(2, 2), Wave(0, 2), Wave(-2, 2),
    Wave(4, 0), Wave(4, 4), Wave(0, 4), Wave(-4, 4),
    Wave(6, 0), Wave(0, 6),
)  # fmt: skip
SET2 = tuple(
    Wave(SET2_CYCLES * math.cos(math.pi * j / MAX_CLASSES), SET2_CYCLES * math.sin(math.pi * j / MAX_CLASSES))
    for j in range(MAX_CLASSES)
)


def label_waves(label_set: int) -> tuple[Wave, ...]:
    """The ten waves of seed 000's label set 1 or 2, label 0 first."""
    if isinstance(label_set, bool) or not isinstance(label_set, Integral) or label_set not in LABEL_SETS:
        raise FFPipeError(f"Fourier label set must be 1 or 2, got {label_set!r}")
    return SET1 if label_set == 1 else SET2


def render_wave(wave: Wave, height: int, width: int) -> Tensor:
    """The wave as a float64 [height, width] gray image in [0, 1] (formula in the module docstring)."""
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None, :]
    phase = 2.0 * math.pi * (wave.kx * cols / width - wave.ky * rows / height) + wave.phase
    return 0.5 + 0.5 * torch.cos(phase)


def fourier_patterns(label_set: int, image_shape: tuple[int, int, int], num_classes: int = 10) -> Tensor:
    """Label patterns of set 1 or 2 as float32 [num_classes, C, H, W] in [0, 1], on the CPU.

    With fewer than ten classes the first `num_classes` labels of the set are used, so label k always means
    the same wave. More than ten is an error: the paper's sets define exactly ten.
    """
    waves = label_waves(label_set)
    channels, height, width = check_image_shape(image_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
        raise FFPipeError(f"number of classes must be a positive integer, got {num_classes!r}")
    if num_classes > MAX_CLASSES:
        raise FFPipeError(
            f"Fourier label set {label_set} has {MAX_CLASSES} labels; {num_classes} classes were asked for"
        )
    planes = torch.stack([render_wave(w, height, width) for w in waves[:num_classes]])
    return planes[:, None].expand(num_classes, channels, height, width).to(torch.float32).contiguous()
