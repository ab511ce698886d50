"""data.augment: shifts move each image by at most `shift` pixels with zero fill, mirrors are exact, and the
draws are a pure function of (seed, epoch, batch), so a resumed epoch sees the same images."""

from __future__ import annotations

import torch

from ffpipe.config import AugmentConfig
from ffpipe.data import Split, epoch_batches
from ffpipe.data.augment import augment
from ffpipe.data.batches import augment_generator as batch_generator


def dots(n: int, size: int = 11) -> torch.Tensor:
    """n images with one bright pixel at the centre and one dimmer pixel right of it."""
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[:, 0, size // 2, size // 2] = 200
    x[:, 0, size // 2, size // 2 + 1] = 100
    return x


def where(x: torch.Tensor, value: int) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in (img[0] == value).nonzero()[0]) for img in x]


def test_shift_moves_every_image_within_the_window_and_keeps_its_pixels():
    x = dots(256)
    out = augment(x, AugmentConfig(shift=2), batch_generator(0, 1, 0))
    moves = {(r - 5, c - 5) for r, c in where(out, 200)}
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # all 25 shifts drawn
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing crosses the border from the centre
    assert [(r, c + 1) for r, c in where(out, 200)] == where(out, 100)  # the image moves as one


def test_shift_fills_the_uncovered_border_with_zeros():
    x = torch.full((64, 1, 6, 6), 255, dtype=torch.uint8)
    out = augment(x, AugmentConfig(shift=1), batch_generator(0, 1, 0))
    lost = 36 - (out[:, 0] == 255).sum((1, 2))
    assert set(lost.tolist()) <= {0, 6, 11} and 0 in lost and 11 in lost  # none, one edge, or a corner
    assert set(out.unique().tolist()) == {0, 255}


def test_flip_mirrors_about_half_of_the_images_exactly():
    x = dots(400)
    out = augment(x, AugmentConfig(flip=True), batch_generator(3, 2, 1))
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    assert all(torch.equal(o, i) or m for o, i, m in zip(out, x, mirrored))
    assert 160 < int(mirrored.sum()) < 240


def test_draws_depend_on_seed_epoch_and_batch_alone():
    x = dots(64)
    cfg = AugmentConfig(shift=2, flip=True)
    first = augment(x, cfg, batch_generator(0, 1, 5))
    assert torch.equal(first, augment(x, cfg, batch_generator(0, 1, 5)))
    for other in ((1, 1, 5), (0, 2, 5), (0, 1, 6)):
        assert not torch.equal(first, augment(x, cfg, batch_generator(*other)))


def test_epoch_batches_augment_training_batches_and_resume_to_the_same_images():
    split = Split(dots(100), torch.arange(100) % 10)
    cfg = AugmentConfig(shift=2)
    plain = list(epoch_batches(split, 10, seed=0, epoch=1))
    full = list(epoch_batches(split, 10, seed=0, epoch=1, augment=cfg))
    resumed = list(epoch_batches(split, 10, seed=0, epoch=1, start_batch=4, augment=cfg))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[4:], resumed, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, full))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, full))  # labels follow, unchanged
    off = list(epoch_batches(split, 10, seed=0, epoch=1, augment=AugmentConfig()))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, off))
