"""Reader for the CIFAR-10 "python version" batches (`data_batch_1..5`, `test_batch`).

Each batch is a pickled dict with b"data", a uint8 array [N, 3072] whose rows hold the 1024 red, then 1024
green, then 1024 blue pixels of a 32 x 32 image in row-major order (so a plain reshape gives [N, 3, 32, 32]),
and b"labels", a list of N ints in 0..9 (Krizhevsky 2009, the dataset's web page).

Unpickling runs whatever the file names, and a data directory can come from anywhere, so the unpickler here
only resolves the few globals a numpy array needs; any other global is reported as a corrupt file instead of
being imported.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ffpipe.data.idx import check_label_range
from ffpipe.errors import FFPipeError

PIXELS = 3 * 32 * 32

_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only what pickled numpy arrays and Python 2 byte strings refer to."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR-10 batch never does")
        # numpy 2 moved numpy.core to numpy._core; old pickles name the first, new ones the second.
        for candidate in (
            module.replace("numpy.core", "numpy._core"),
            module.replace("numpy._core", "numpy.core"),
        ):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which this numpy lacks")


def _load_pickle(path: Path) -> object:
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise FFPipeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except EOFError:
        raise FFPipeError(f"{path}: truncated CIFAR-10 batch (the pickle ends early)") from None
    except Exception as exc:  # a damaged pickle can raise nearly anything while being decoded
        raise FFPipeError(f"{path}: corrupt CIFAR-10 batch ({type(exc).__name__}: {exc})") from None


def _entry(path: Path, batch: dict, key: str) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise FFPipeError(f"{path}: not a CIFAR-10 batch (no {key!r} entry)")


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file as uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    path = Path(path)
    batch = _load_pickle(path)
    if not isinstance(batch, dict):
        raise FFPipeError(f"{path}: not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict)")
    data = _entry(path, batch, "data")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS
    ):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise FFPipeError(
            f"{path}: corrupt CIFAR-10 batch ('data' is {dtype} {shape}, expected uint8 [N, {PIXELS}])"
        )
    try:
        labels = torch.as_tensor(np.asarray(_entry(path, batch, "labels"), dtype=np.int64))
    except (TypeError, ValueError, OverflowError) as exc:
        raise FFPipeError(f"{path}: corrupt CIFAR-10 batch ('labels' are not integers: {exc})") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise FFPipeError(
            f"{path}: corrupt CIFAR-10 batch ({data.shape[0]} images but {tuple(labels.shape)} labels)"
        )
    check_label_range(path, labels, num_classes)
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, labels


def read_cifar_batches(paths: list[Path], num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Several batch files concatenated in the given order (the official training set is batches 1..5)."""
    parts = [read_cifar_batch(p, num_classes) for p in paths]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
