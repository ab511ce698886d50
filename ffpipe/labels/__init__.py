"""How a class label enters an FF network: one-hot overlay, Fourier waves (seed 000 §2.1), or not at all."""

from ffpipe.labels.base import LabelEncoder
from ffpipe.labels.factory import ENCODINGS, make_encoder
from ffpipe.labels.negatives import sample_distinct_negatives, sample_hard_negatives, sample_negatives
from ffpipe.labels.render import render_label_grid
from ffpipe.labels.waves import fourier_patterns

__all__ = [
    "ENCODINGS",
    "LabelEncoder",
    "fourier_patterns",
    "make_encoder",
    "render_label_grid",
    "sample_hard_negatives",
    "sample_distinct_negatives",
    "sample_negatives",
]
