"""Negative labels: never the true label, uniform over the wrong ones; hard negatives follow the scores."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ffpipe.errors import FFPipeError
from ffpipe.ff.labels import sample_distinct_negatives, sample_hard_negatives, sample_negatives


@settings(max_examples=60, deadline=None)
@given(num_classes=st.integers(2, 20), seed=st.integers(0, 2**31 - 1), true_label=st.integers(0, 19))
def test_negatives_are_never_the_true_label_and_cover_all_wrong_labels(num_classes, seed, true_label):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (256,), generator=generator)
    negatives = sample_negatives(y, num_classes, generator)
    assert negatives.shape == y.shape and negatives.dtype == y.dtype
    assert bool((negatives != y).all()) and int(negatives.min()) >= 0 and int(negatives.max()) < num_classes

    # One fixed true label, 100 draws per class: a missing wrong label has probability < 20 * e^-100.
    fixed = torch.full((100 * num_classes,), true_label % num_classes)
    drawn = set(sample_negatives(fixed, num_classes, generator).tolist())
    assert drawn == set(range(num_classes)) - {true_label % num_classes}


def test_negatives_are_uniform_over_wrong_labels():
    y = torch.zeros(90_000, dtype=torch.int64)
    counts = torch.bincount(sample_negatives(y, 10, torch.Generator().manual_seed(0)), minlength=10)
    assert counts[0] == 0
    expected = 10_000
    assert (counts[1:] - expected).abs().max() < 5 * (expected * (1 - 1 / 9)) ** 0.5  # within 5 sigma


def test_negatives_are_reproducible_with_a_generator():
    y = torch.arange(10).repeat(10)
    first = sample_negatives(y, 10, torch.Generator().manual_seed(3))
    assert torch.equal(first, sample_negatives(y, 10, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, sample_negatives(y, 10, torch.Generator().manual_seed(4)))


def test_hard_negatives_follow_the_scores_and_skip_the_true_label():
    rows = 40_000
    y = torch.full((rows,), 2)
    # The true label has the largest score, yet must never be drawn; label 4 has zero score.
    scores = torch.tensor([1.0, 2.0, 50.0, 3.0, 0.0, 4.0]).repeat(rows, 1)
    drawn = sample_hard_negatives(y, scores, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=6).double()
    assert counts[2] == 0 and counts[4] == 0
    expected = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.0, 4.0], dtype=torch.float64) / 10 * rows
    sigma = (expected * (1 - expected / rows)).sqrt()
    mask = expected > 0
    assert ((counts[mask] - expected[mask]).abs() < 5 * sigma[mask]).all(), counts


def test_hard_negatives_fall_back_to_uniform_when_wrong_scores_are_zero():
    rows = 30_000
    y = torch.full((rows,), 0)
    scores = torch.zeros(rows, 4)
    scores[:, 0] = 7.0  # only the true label has a score
    counts = torch.bincount(sample_hard_negatives(y, scores, torch.Generator().manual_seed(1)), minlength=4)
    assert counts[0] == 0
    assert (counts[1:] - rows / 3).abs().max() < 5 * (rows / 3 * (2 / 3)) ** 0.5


def test_hard_negatives_mixed_rows_never_return_the_true_label():
    generator = torch.Generator().manual_seed(2)
    y = torch.randint(0, 10, (5000,), generator=generator)
    scores = torch.rand(5000, 10, generator=generator) ** 4
    scores[::7] = 0.0
    drawn = sample_hard_negatives(y, scores, generator)
    assert drawn.dtype == y.dtype and bool((drawn != y).all())


@pytest.mark.parametrize(
    ("y", "scores", "message"),
    [
        (torch.tensor([0, 1]), torch.tensor([[1.0, -1.0], [1.0, 1.0]]), "finite and non-negative"),
        (torch.tensor([0, 1]), torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), "finite and non-negative"),
        (torch.tensor([0, 1, 1]), torch.ones(2, 3), "scores \\[B, C\\]"),
        (torch.tensor([0]), torch.ones(1, 1), "C >= 2"),
        (torch.tensor([0.0, 1.0]), torch.ones(2, 3), "integer tensor"),
    ],
)
def test_hard_negative_argument_errors(y, scores, message):
    with pytest.raises(FFPipeError, match=message):
        sample_hard_negatives(y, scores)


def test_negative_argument_errors():
    with pytest.raises(FFPipeError, match="at least 2 classes"):
        sample_negatives(torch.tensor([0, 0]), 1)
    with pytest.raises(FFPipeError, match="integer tensor"):
        sample_negatives(torch.tensor([0.5]), 10)


@pytest.mark.parametrize("count", [1, 3, 9])
def test_distinct_negatives_are_wrong_distinct_and_uniform(count):
    y = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(0))
    wrong = torch.stack(sample_distinct_negatives(y, 10, count, torch.Generator().manual_seed(1)))
    assert wrong.shape == (count, 20000) and bool((wrong != y).all())
    assert all(len(set(column.tolist())) == count for column in wrong.t())
    offsets = torch.bincount(((wrong - y) % 10).flatten(), minlength=10)[1:].float()
    assert offsets.min() / offsets.max() > 0.85  # every wrong label about equally often


def test_one_distinct_negative_is_the_plain_draw_and_too_many_is_refused():
    y = torch.arange(10)
    one = sample_distinct_negatives(y, 10, 1, torch.Generator().manual_seed(5))
    assert torch.equal(one[0], sample_negatives(y, 10, torch.Generator().manual_seed(5)))
    with pytest.raises(FFPipeError, match="negatives_per_image must be in 1..9"):
        sample_distinct_negatives(y, 10, 10)
