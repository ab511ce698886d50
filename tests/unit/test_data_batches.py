"""epoch_batches: one reproducible order per (seed, epoch), exact [0, 1] floats, and resumable epochs."""

from __future__ import annotations

import pytest
import torch

from ffpipe.data import Split, epoch_batches, num_batches
from ffpipe.errors import FFPipeError


@pytest.fixture
def split() -> Split:
    n = 103
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 3, 3), dtype=torch.uint8, generator=generator)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # sample id, to check coverage
    return Split(images, torch.arange(n) % 10)


def ids(batches) -> list[int]:
    return [int(v) for x, _ in batches for v in (x[:, 0, 0, 0] * 255).round()]


def test_num_batches():
    assert num_batches(103, 10) == 10
    assert num_batches(103, 10, drop_last=False) == 11
    assert num_batches(100, 10, drop_last=False) == 10
    with pytest.raises(FFPipeError, match="batch size must be at least 1"):
        num_batches(10, 0)


def test_types_values_and_labels_follow_images(split):
    batches = list(epoch_batches(split, 10, seed=0, epoch=0))
    assert len(batches) == 10
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape == (10, 1, 3, 3) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        idx = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(x, split.images[idx].float() / 255)
        assert torch.equal(y, split.labels[idx])


def test_same_seed_and_epoch_same_order_regardless_of_global_rng(split):
    first = ids(epoch_batches(split, 10, seed=7, epoch=3))
    torch.manual_seed(999)
    torch.rand(10)
    assert ids(epoch_batches(split, 10, seed=7, epoch=3)) == first


def test_order_changes_across_epochs_and_seeds(split):
    orders = [ids(epoch_batches(split, 10, seed=s, epoch=e)) for s, e in ((0, 0), (0, 1), (1, 0), (1, 1))]
    assert len({tuple(o) for o in orders}) == 4
    assert ids(epoch_batches(split, 10, seed=0, epoch=1)) != ids(epoch_batches(split, 10, seed=1, epoch=0))


def test_each_sample_once_per_epoch(split):
    assert sorted(ids(epoch_batches(split, 10, seed=0, epoch=0, drop_last=False))) == list(range(103))
    assert len(set(ids(epoch_batches(split, 10, seed=0, epoch=0)))) == 100


def test_no_shuffle_keeps_file_order_and_last_batch(split):
    batches = list(epoch_batches(split, 10, seed=0, epoch=5, shuffle=False, drop_last=False))
    assert ids(batches) == list(range(103))
    assert batches[-1][0].shape[0] == 3


def test_start_batch_resumes_mid_epoch(split):
    full = list(epoch_batches(split, 10, seed=2, epoch=4))
    resumed = list(epoch_batches(split, 10, seed=2, epoch=4, start_batch=6))
    assert len(resumed) == 4
    for (x, y), (rx, ry) in zip(full[6:], resumed, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    with pytest.raises(FFPipeError, match="start_batch must be in 0..10"):
        epoch_batches(split, 10, seed=2, epoch=4, start_batch=11)


def test_batches_do_not_alias_the_split(split):
    before = split.labels.clone()
    for x, y in epoch_batches(split, 10, seed=0, epoch=0, shuffle=False):
        x.zero_()
        y.zero_()
    assert torch.equal(split.labels, before)
