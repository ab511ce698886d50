"""`load_dataset`: find a dataset's files, read them, check them against the catalog, and split them.

The counts and image shape are checked against the catalog as well as against each other, because a folder
that holds, say, Fashion-MNIST under `mnist/` or a half-copied file would otherwise train silently on the
wrong data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

import ffpipe.data.catalog as catalog
from ffpipe.data.catalog import DatasetSpec, get_spec
from ffpipe.data.cifar import read_cifar_batches
from ffpipe.data.dataset import Dataset, Split, check_split_seed, split_train_val
from ffpipe.data.idx import read_idx_pair
from ffpipe.data.locate import Location, locate
from ffpipe.errors import FFPipeError


def _check(spec: DatasetSpec, files: str, images: torch.Tensor, expected: int) -> None:
    shape = tuple(images.shape[1:])
    if shape != spec.image_shape:
        raise FFPipeError(f"{files}: images are {shape}, but {spec.name} images are {spec.image_shape}")
    if images.shape[0] != expected:
        raise FFPipeError(f"{files}: {images.shape[0]} samples, but {spec.name} has {expected} there")


def _read_official(spec: DatasetSpec, files: dict[str, Path]) -> tuple[Split, Split]:
    """The official training and test sets, validated."""
    k = spec.num_classes
    if spec.format == "idx":
        train = read_idx_pair(files["train_images"], files["train_labels"], k)
        test = read_idx_pair(files["test_images"], files["test_labels"], k)
        train_desc, test_desc = str(files["train_images"]), str(files["test_images"])
    else:
        train_paths = [files[b] for b in catalog.CIFAR10_TRAIN_BATCHES]
        train = read_cifar_batches(train_paths, k)
        test = read_cifar_batches([files[catalog.CIFAR10_TEST_BATCH]], k)
        train_desc = f"{train_paths[0].parent}/data_batch_1..5"
        test_desc = str(files[catalog.CIFAR10_TEST_BATCH])
    _check(spec, train_desc, train[0], spec.train_size + spec.val_size)
    _check(spec, test_desc, test[0], spec.test_size)
    return Split(*train), Split(*test)


def _read_embedded(spec: DatasetSpec) -> Dataset:
    """The packaged slice: its three splits are its files, so there is nothing to look up or split."""
    splits = {}
    for split, size in (("train", spec.train_size), ("val", spec.val_size), ("test", spec.test_size)):
        images_path = catalog.EMBEDDED_DIR / catalog.EMBEDDED_FILES[f"{split}_images"]
        labels_path = catalog.EMBEDDED_DIR / catalog.EMBEDDED_FILES[f"{split}_labels"]
        images, labels = read_idx_pair(images_path, labels_path, spec.num_classes)
        _check(spec, str(images_path), images, size)
        splits[split] = Split(images, labels)
    return Dataset(
        spec.name,
        splits["train"],
        splits["val"],
        splits["test"],
        spec.num_classes,
        spec.class_names,
        str(catalog.EMBEDDED_DIR),
    )


def load_located(
    name: str, data_dir: str | os.PathLike | None = None, split_seed: int = 0, download: bool = True,
    val_split: str = "random",
) -> tuple[Dataset, Location]:
    """`load_dataset`, also returning how the files were found (for `data_info`)."""
    spec = get_spec(name)
    check_split_seed(split_seed)
    if spec.format == "embedded":
        dataset = _read_embedded(spec)
        return dataset, Location(catalog.EMBEDDED_DIR, "package", {})
    location = locate(spec, data_dir, download)
    official_train, test = _read_official(spec, location.files)
    train, val = split_train_val(official_train.images, official_train.labels, spec.val_size, split_seed,
                                 val_split)
    dataset = Dataset(spec.name, train, val, test, spec.num_classes, spec.class_names, str(location.path))
    return dataset, location


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, split_seed: int = 0, download: bool = True,
    val_split: str = "random",
) -> Dataset:
    """Load dataset `name` (one of `DATASETS`) with its fixed train/val/test split.

    `data_dir` is searched first (see `ffpipe.data.locate` for the full order); `split_seed` picks the
    validation subset of the official training set (`val_split`: see `split_train_val`); `download=False`
    turns a missing dataset into an error instead of a fetch. `fashion_mnist_small` is read from the package
    and ignores all four.
    """
    return load_located(name, data_dir, split_seed, download, val_split)[0]


def shape_for_config(data) -> tuple[int, int, int]:
    """The (C, H, W) a run's blocks see: the catalog's, or `data.resize` square."""
    c, h, w = get_spec(data.name).image_shape
    return (c, h, w) if data.resize is None else (c, data.resize, data.resize)


def resize_split(split: Split, size: int) -> Split:
    """Bilinear resize of uint8 images, rounded back to uint8 so the pipeline's input stays the same type."""
    images = F.interpolate(split.images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return Split(images.round().clamp(0, 255).to(split.images.dtype), split.labels)


def load_for_config(data) -> Dataset:
    """The dataset a run's `data` config section asks for: `load_dataset`; then, if `train_subset` is set, the
    first `train_subset` training images of a permutation seeded by `split_seed` (our choice, for experiments
    that sweep many models on a CPU; val and test are never cut; class balance is left to the draw); then,
    if `data.resize` is set, every split resized (after the cut, so only the images kept are resized)."""
    dataset = load_dataset(data.name, data.dir, data.split_seed, val_split=data.val_split)
    train, val, test = dataset.train, dataset.val, dataset.test
    n = data.train_subset
    if n is not None:
        if n > len(train.labels):
            raise FFPipeError(f"data.train_subset={n} is more than the {len(train.labels)} training images "
                              f"of {data.name}")
        keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(data.split_seed))[:n]
        keep = keep.sort().values
        train = Split(train.images[keep], train.labels[keep])
    if data.resize is not None:
        train, val, test = (resize_split(s, data.resize) for s in (train, val, test))
    return Dataset(dataset.name, train, val, test, dataset.num_classes, dataset.class_names, dataset.source)
