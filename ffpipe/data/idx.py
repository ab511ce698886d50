"""Reader for the IDX files of MNIST and Fashion-MNIST, gzip-compressed or raw.

IDX (LeCun et al.) is a big-endian header followed by raw bytes: a 4-byte magic number whose third byte is the
element type (0x08 = unsigned byte) and whose fourth is the number of dimensions, then one uint32 per
dimension. Image files have magic 2051 (0x00000803, N x H x W) and label files 2049 (0x00000801, N).

Whole files are decompressed in one call and turned into a tensor with one copy, because a per-image loop
would cost seconds on 60,000 images. Whether a file is gzip is decided by its first two bytes, not its name,
so a `.gz` that was unpacked in place (or a raw file named `.gz`) still reads. Every way a file can be broken
ends in one `FFPipeError` that names the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import torch

from ffpipe.errors import FFPipeError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: Path) -> bytes:
    """The decompressed content of `path`; gzip is detected from the content."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != GZIP_MAGIC:
                fh.seek(0)
                return fh.read()
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                return gz.read()
    except EOFError:
        raise FFPipeError(f"{path}: truncated gzip file (the compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise FFPipeError(f"{path}: corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise FFPipeError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse(path: Path, data: bytes, magic: int, kind: str) -> tuple[tuple[int, ...], memoryview]:
    """Check the header of an IDX file and return its dimensions and its payload."""
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < 4:
        raise FFPipeError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise FFPipeError(f"{path}: not an IDX {kind} file (magic number {found}, expected {magic})")
    if len(data) < header_len:
        raise FFPipeError(f"{path}: truncated IDX file ({len(data)} bytes, header needs {header_len})")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = 1
    for d in dims:
        expected *= d
    payload = len(data) - header_len
    if payload < expected:
        shape = " x ".join(map(str, dims))
        raise FFPipeError(
            f"{path}: truncated IDX file (header says {shape} = {expected} bytes of data, found {payload})"
        )
    if payload > expected:
        raise FFPipeError(f"{path}: corrupt IDX file ({payload - expected} bytes after the declared data)")
    return dims, memoryview(data)[header_len:]


def _uint8(payload: memoryview) -> torch.Tensor:
    """One copy from the decompressed bytes into a writable tensor (torch.frombuffer rejects empty input)."""
    if len(payload) == 0:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def read_idx_images(path: str | Path) -> torch.Tensor:
    """Images of an IDX image file as uint8 [N, 1, H, W]."""
    path = Path(path)
    dims, payload = _parse(path, read_file_bytes(path), IMAGES_MAGIC, "image")
    n, h, w = dims
    if n and (h == 0 or w == 0):
        raise FFPipeError(f"{path}: corrupt IDX image file (image size {h} x {w})")
    return _uint8(payload).view(n, 1, h, w)


def read_idx_labels(path: str | Path, num_classes: int = 10) -> torch.Tensor:
    """Labels of an IDX label file as int64 [N], each checked to lie in [0, num_classes)."""
    path = Path(path)
    (n,), payload = _parse(path, read_file_bytes(path), LABELS_MAGIC, "label")
    labels = _uint8(payload).to(torch.int64)
    check_label_range(path, labels, num_classes)
    return labels


def check_label_range(path: Path, labels: torch.Tensor, num_classes: int) -> None:
    """Labels outside [0, num_classes) mean a wrong or damaged file; say which value and where."""
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise FFPipeError(f"{path}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1}")


def read_idx_pair(
    images_path: str | Path, labels_path: str | Path, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image file and its label file, checked to hold the same number of samples."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if images.shape[0] != labels.shape[0]:
        raise FFPipeError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    return images, labels
