"""Datasets for ffpipe: readers, lookup, download, fixed splits and fast in-memory batching.

`load_dataset(name)` returns a `Dataset` whose three `Split`s hold uint8 images [N, C, H, W] and int64
labels; `epoch_batches` turns a split into float32 batches in a per-(seed, epoch) reproducible order.
`fashion_mnist_small` ships inside the package, so ffpipe runs without any data set up.
"""

from ffpipe.data.batches import epoch_batches, num_batches, to_device
from ffpipe.data.catalog import DATASETS
from ffpipe.data.dataset import Dataset, Split
from ffpipe.data.info import data_info, format_info
from ffpipe.data.loading import load_dataset, load_for_config

__all__ = [
    "DATASETS",
    "Dataset",
    "Split",
    "data_info",
    "epoch_batches",
    "format_info",
    "load_dataset",
    "load_for_config",
    "num_batches",
    "to_device",
]
