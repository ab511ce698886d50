"""How a class label enters an FF network: one-hot overlay, Fourier waves (seed 000 §2.1), or not at all."""

from ffpipe.ff.labels.base import LabelEncoder
from ffpipe.ff.labels.factory import ENCODINGS, make_encoder
from ffpipe.ff.labels.negatives import sample_distinct_negatives, sample_hard_negatives, sample_negatives
from ffpipe.ff.labels.waves import fourier_patterns

__all__ = [
    "ENCODINGS",
    "LabelEncoder",
    "fourier_patterns",
    "make_encoder",
    "sample_hard_negatives",
    "sample_distinct_negatives",
    "sample_negatives",
]
