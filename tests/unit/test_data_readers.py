"""IDX and CIFAR-10 readers: round trips on files written here, and one clear error per kind of damage."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from ffpipe.data.cifar import read_cifar_batch, read_cifar_batches
from ffpipe.data.idx import read_idx_images, read_idx_labels, read_idx_pair
from ffpipe.errors import FFPipeError


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 5, 4), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([3, 0, 9, 1, 1, 7, 2], dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, images, labels, gz):
    ipath = write(tmp_path / "img", idx_bytes(2051, images), gz)
    lpath = write(tmp_path / "lab", idx_bytes(2049, labels), gz)
    x, y = read_idx_pair(ipath, lpath)
    assert x.dtype == torch.uint8 and x.shape == (7, 1, 5, 4)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_idx_gzip_is_detected_by_content_not_name(tmp_path, labels):
    raw_named_gz = write(tmp_path / "lab.gz", idx_bytes(2049, labels), gz=False)
    gz_named_raw = write(tmp_path / "lab", idx_bytes(2049, labels), gz=True)
    assert read_idx_labels(raw_named_gz).tolist() == read_idx_labels(gz_named_raw).tolist() == labels.tolist()


def test_idx_bad_magic_names_file(tmp_path, labels):
    path = write(tmp_path / "labels-as-images", idx_bytes(2049, labels), gz=True)
    with pytest.raises(FFPipeError, match=r"labels-as-images: not an IDX image file \(magic number 2049"):
        read_idx_images(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_payload(tmp_path, images, gz):
    path = write(tmp_path / "short", idx_bytes(2051, images)[:-5], gz)
    with pytest.raises(FFPipeError, match=r"short: truncated IDX file \(header says 7 x 5 x 4 = 140 bytes"):
        read_idx_images(path)


def test_idx_truncated_header(tmp_path):
    path = write(tmp_path / "stub", struct.pack(">iI", 2051, 3), gz=False)
    with pytest.raises(FFPipeError, match="stub: truncated IDX file"):
        read_idx_images(path)


def test_idx_truncated_gzip_stream(tmp_path, images):
    data = gzip.compress(idx_bytes(2051, images), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FFPipeError, match=r"cut.gz: truncated gzip file"):
        read_idx_images(path)


def test_idx_corrupt_gzip_stream(tmp_path, images):
    data = bytearray(gzip.compress(idx_bytes(2051, images), mtime=0))
    data[-6] ^= 0xFF  # inside the CRC-32 trailer
    path = tmp_path / "flipped.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(FFPipeError, match=r"flipped.gz: corrupt gzip file"):
        read_idx_images(path)


def test_idx_trailing_bytes(tmp_path, labels):
    path = write(tmp_path / "long", idx_bytes(2049, labels) + b"\0\0", gz=False)
    with pytest.raises(FFPipeError, match=r"long: corrupt IDX file \(2 bytes after"):
        read_idx_labels(path)


def test_idx_label_out_of_range(tmp_path):
    path = write(tmp_path / "lab", idx_bytes(2049, np.array([1, 2, 10, 3])), gz=True)
    with pytest.raises(FFPipeError, match=r"lab: label 10 at index 2 is outside 0..9"):
        read_idx_labels(path)
    assert read_idx_labels(path, num_classes=11).tolist() == [1, 2, 10, 3]


def test_idx_count_mismatch_names_both_files(tmp_path, images, labels):
    ipath = write(tmp_path / "img", idx_bytes(2051, images), gz=True)
    lpath = write(tmp_path / "lab", idx_bytes(2049, labels[:-1]), gz=True)
    with pytest.raises(FFPipeError, match=r"img holds 7 images but .*lab holds 6 labels"):
        read_idx_pair(ipath, lpath)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FFPipeError, match=r"nothing-here: cannot read"):
        read_idx_images(tmp_path / "nothing-here")


def cifar_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"labels": rng.integers(0, 10, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
    }


def write_pickle(path, obj, protocol: int = 2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_round_trip_and_channel_layout(tmp_path, protocol):
    batch = cifar_batch(6)
    x, y = read_cifar_batch(write_pickle(tmp_path / "data_batch_1", batch, protocol))
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == batch[b"labels"]
    data = batch[b"data"]
    for channel in range(3):  # rows are 1024 red, then 1024 green, then 1024 blue values, row-major
        expected = data[4, channel * 1024 : (channel + 1) * 1024].reshape(32, 32)
        assert np.array_equal(x[4, channel].numpy(), expected)


def test_cifar_batches_concatenate_in_order(tmp_path):
    paths = [write_pickle(tmp_path / f"b{i}", cifar_batch(3, seed=i)) for i in range(3)]
    x, y = read_cifar_batches(paths)
    assert x.shape[0] == 9
    assert y.tolist() == sum((cifar_batch(3, seed=i)[b"labels"] for i in range(3)), [])


def test_cifar_truncated(tmp_path):
    path = write_pickle(tmp_path / "data_batch_2", cifar_batch(4))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FFPipeError, match=r"data_batch_2: (truncated|corrupt) CIFAR-10 batch"):
        read_cifar_batch(path)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2, 3], "not a CIFAR-10 batch \\(holds a list"),
        ({b"labels": [1]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [1, 2]}, "'data' is uint8 \\(2, 1024\\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, "'data' is float32"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but \\(1,\\) labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "label 10 at index 1"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "'labels' are not integers"),
    ],
)
def test_cifar_malformed_batches(tmp_path, obj, message):
    path = write_pickle(tmp_path / "test_batch", obj)
    with pytest.raises(FFPipeError, match=f"test_batch: .*{message}"):
        read_cifar_batch(path)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "created-by-pickle"
    path = write_pickle(tmp_path / "data_batch_3", {b"data": _Exploit(marker), b"labels": []})
    with pytest.raises(FFPipeError, match=r"data_batch_3: corrupt CIFAR-10 batch .*mkdir"):
        read_cifar_batch(path)
    assert not marker.exists()
