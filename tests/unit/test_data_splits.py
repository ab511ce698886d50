"""Fixed seeded splits, the shipped Fashion-MNIST slice, data_info, and the real datasets when present."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ffpipe.config import load_config
from ffpipe.data import DATASETS, Split, catalog, data_info, format_info, load_dataset, locate
from ffpipe.data.build_embedded import build
from ffpipe.data.dataset import split_train_val
from ffpipe.data.loading import load_for_config, resize_split, shape_for_config
from ffpipe.errors import FFPipeError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
needs_shared_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="no shared MNIST copy")
needs_system_fashion = pytest.mark.skipif(not FASHION_SYSTEM.is_dir(), reason="dataset-fashion-mnist absent")


def toy(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n) % 10


def test_split_sizes_disjoint_and_complete():
    images, labels = toy()
    train, val = split_train_val(images, labels, val_size=20, split_seed=0)
    assert (len(train), len(val)) == (80, 20)
    ids = torch.cat([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).to(torch.int64)
    assert sorted(ids.tolist()) == list(range(100))
    assert torch.equal(train.labels, train.images[:, 0, 0, 0].to(torch.int64) % 10)  # labels stay with images
    assert bool((train.images[1:, 0, 0, 0] > train.images[:-1, 0, 0, 0]).all())  # file order kept


def test_split_depends_on_seed_only():
    images, labels = toy()
    first = split_train_val(images, labels, 20, split_seed=3)[1].labels
    torch.manual_seed(123)  # the global torch RNG must not matter
    assert torch.equal(first, split_train_val(images, labels, 20, split_seed=3)[1].labels)
    other = split_train_val(images, labels, 20, split_seed=4)[1].images
    assert not torch.equal(split_train_val(images, labels, 20, split_seed=3)[1].images, other)


def test_last_split_holds_out_the_end_of_the_file_like_loewex():
    images, labels = toy()
    train, val = split_train_val(images, labels, 20, split_seed=7, how="last")
    assert val.images[:, 0, 0, 0].tolist() == list(range(80, 100))
    assert train.images[:, 0, 0, 0].tolist() == list(range(80))
    with pytest.raises(FFPipeError, match="val_split 'first' is not one of random, last"):
        split_train_val(images, labels, 20, split_seed=0, how="first")


@needs_shared_mnist
def test_mnist_last_split_is_images_50000_to_59999():
    last = load_dataset("mnist", SHARED_DATA / "mnist", val_split="last")
    assert (len(last.train), len(last.val)) == (50_000, 10_000)
    assert last.val.labels[:10].tolist() == [3, 8, 6, 9, 6, 4, 5, 3, 8, 4]


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_split_seed(seed):
    with pytest.raises(FFPipeError, match="split_seed must be a non-negative integer"):
        split_train_val(*toy(), 20, split_seed=seed)


def test_split_rejects_inconsistent_tensors():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        Split(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))


def test_embedded_slice_is_balanced_and_small():
    dataset = load_dataset("fashion_mnist_small")
    assert dataset.image_shape == (1, 28, 28) and dataset.num_classes == 10
    assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
    for name, per_class in (("train", 600), ("val", 100), ("test", 100)):
        split = dataset.split(name)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.class_counts(10) == [per_class] * 10
    size = sum(p.stat().st_size for p in catalog.EMBEDDED_DIR.iterdir())
    assert size <= 5 * 2**20
    license_text = (catalog.EMBEDDED_DIR / "LICENSE").read_text()
    assert "Copyright (c) 2017 Zalando SE" in license_text and "MIT License" in license_text
    assert "https://github.com/zalandoresearch/fashion-mnist" in license_text


def test_resize_makes_every_split_square_uint8_and_keeps_the_labels():
    """`data.resize` (DeeperForward feeds 28x28 digits at 32x32): bilinear, rounded back to uint8; a constant
    image stays constant, so the resize adds no structure of its own."""
    cfg = load_config(None, ["data.resize=32"]).data
    plain, resized = load_dataset("fashion_mnist_small"), load_for_config(cfg)
    assert shape_for_config(cfg) == (1, 32, 32) == resized.image_shape
    for name in ("train", "val", "test"):
        before, after = plain.split(name), resized.split(name)
        assert after.images.dtype == torch.uint8 and after.images.shape[2:] == (32, 32)
        assert torch.equal(after.labels, before.labels)
    flat = Split(torch.full((1, 1, 28, 28), 77, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
    assert torch.equal(resize_split(flat, 32).images, torch.full((1, 1, 32, 32), 77, dtype=torch.uint8))


def test_unknown_split_name():
    with pytest.raises(FFPipeError, match="unknown split 'dev'; choose one of: train, val, test"):
        load_dataset("fashion_mnist_small").split("dev")


def test_data_info_and_table_for_embedded():
    info = data_info("fashion_mnist_small")
    assert json.loads(json.dumps(info)) == info
    assert info["splits"]["train"] == {"size": 6000, "class_counts": [600] * 10}
    assert info["train_val_class_counts"] == [700] * 10
    assert info["found_via"] == "package" and info["split_seed"] is None
    table = format_info(info)
    assert "9 Ankle boot" in table and "shipped inside ffpipe" in table
    assert table.splitlines()[-1].split() == ["total", "6000", "1000", "1000", "7000"]


def test_catalog_is_complete():
    assert DATASETS == ("fashion_mnist_small", "mnist", "fashion_mnist", "cifar10")
    for name in DATASETS:
        spec = catalog.SPECS[name]
        assert len(spec.class_names) == 10
        assert name == "fashion_mnist_small" or (catalog.MIRRORS[name] and catalog.MD5S[name])


@needs_shared_mnist
def test_real_mnist_from_ffpipe_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(locate.ENV_VAR, str(SHARED_DATA))
    info = data_info("mnist")
    assert info["source"] == str(SHARED_DATA / "mnist") and info["found_via"] == "FFPIPE_DATA_DIR"
    assert info["train_val_class_counts"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert info["splits"]["test"]["class_counts"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert [info["splits"][s]["size"] for s in ("train", "val", "test")] == [50000, 10000, 10000]
    dataset = load_dataset("mnist", data_dir=SHARED_DATA / "mnist")  # the folder itself
    assert dataset.val.class_counts(10) == info["splits"]["val"]["class_counts"]
    assert dataset.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert dataset.source == str(SHARED_DATA / "mnist")


def test_embedded_readme_lists_the_shipped_checksums():
    readme = (catalog.EMBEDDED_DIR / "README.md").read_text()
    for name in catalog.EMBEDDED_FILES.values():
        digest = hashlib.sha256((catalog.EMBEDDED_DIR / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme


@needs_system_fashion
def test_embedded_slice_rebuilds_byte_identical(tmp_path):
    build(FASHION_SYSTEM, tmp_path)
    for name in catalog.EMBEDDED_FILES.values():
        assert (tmp_path / name).read_bytes() == (catalog.EMBEDDED_DIR / name).read_bytes(), name


def test_train_subset_is_seeded_and_leaves_val_and_test_alone():
    from ffpipe.config import DataConfig
    from ffpipe.data import load_for_config
    from ffpipe.errors import FFPipeError

    full = load_for_config(DataConfig())
    a, b = load_for_config(DataConfig(train_subset=600)), load_for_config(DataConfig(train_subset=600))
    c = load_for_config(DataConfig(train_subset=600, split_seed=1))
    assert len(a.train.labels) == 600 and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.labels, c.train.labels)
    assert torch.equal(a.val.images, full.val.images) and torch.equal(a.test.images, full.test.images)
    with pytest.raises(FFPipeError, match="train_subset"):
        load_for_config(DataConfig(train_subset=10**6))
