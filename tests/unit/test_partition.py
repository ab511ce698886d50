"""Contiguous stage partitions: the min-max split is optimal, and bad partitions are one clear line."""

import itertools
import random

import pytest

from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.partition import (
    IN_ELEMENT,
    OUT_ELEMENT,
    block_costs,
    block_flops,
    min_max_split,
    partition,
    partition_table,
)


def brute_force(costs, parts):
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), parts - 1):
        edges = [0, *cuts, len(costs)]
        worst = max(sum(costs[a:b]) for a, b in zip(edges, edges[1:]))
        best = worst if best is None else min(best, worst)
    return best


def testmin_max_split_is_optimal():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        parts = rng.randint(1, n)
        costs = [rng.randint(1, 100) for _ in range(n)]
        counts = min_max_split(costs, parts)
        assert len(counts) == parts and sum(counts) == n and min(counts) >= 1
        edges = [0, *itertools.accumulate(counts)]
        assert max(sum(costs[a:b]) for a, b in zip(edges, edges[1:])) == brute_force(costs, parts)


def specs(widths):
    shape, out = (784,), []
    for i, w in enumerate(widths):
        out.append(BlockSpec(index=i, kind="linear", in_shape=shape, out=w))
        shape = (w,)
    return out


def test_flops_balances_an_unbalanced_stack():
    stack = specs([2000, 100, 100, 100])
    assert partition(stack, 2, "flops") == [(0, 1), (1, 4)]
    assert partition(stack, 2, "equal") == [(0, 2), (2, 4)]


def test_measured_uses_the_measured_seconds():
    stack = specs([100, 100, 100, 100])
    assert partition(stack, 2, "measured", seconds=[5.0, 1.0, 1.0, 1.0]) == [(0, 1), (1, 4)]
    with pytest.raises(FFPipeError, match="measured"):
        partition(stack, 2, "measured")


@pytest.mark.parametrize("stages, how", [(5, "flops"), (5, "cost"), (2, [3, 3]), (2, [4, 0]), (2, "bogus")])
def test_impossible_partitions_are_one_line(stages, how):
    with pytest.raises(FFPipeError):
        partition(specs([10, 10, 10, 10]), stages, how)


def test_table_lists_every_stage_and_the_flops_split_beside_it():
    stack = specs([100, 100, 100])
    table = partition_table(stack, [(0, 1), (1, 3)])
    lines = table.splitlines()
    assert len(lines) == 4 and "1..2" in lines[2] and "by FLOPs" in lines[0]
    assert lines[3].startswith("slowest stage:") and "ideal 50%" in lines[3]


def conv_stack(widths, strides=None, hw=28):
    """3x3 convs on a 1-channel image: block 0 has few FLOPs but a full-resolution activation."""
    shape, out = (1, hw, hw), []
    for i, w in enumerate(widths):
        out.append(BlockSpec(index=i, kind="conv", in_shape=shape, out=w, kernel=3, stride=(strides or [1] * 9)[i]))
        shape = out[-1].out_shape
    return out


def test_cost_counts_the_elementwise_work_that_flops_miss():
    stack = conv_stack([20, 20, 20, 20])
    flops, costs = block_flops(stack, 0), block_costs(stack, 0)
    assert flops[0] < flops[1] / 15  # 1 input channel against 20
    assert costs[0] > costs[1] / 3  # ...but the same 20x28x28 activation to run elementwise passes over
    assert costs[1] == flops[1] + OUT_ELEMENT * 20 * 28 * 28 + IN_ELEMENT * 20 * 28 * 28
    # block 1 halves the resolution: FLOPs alone pair the full-resolution blocks 0 and 1 in one stage; counting
    # their activations, block 0 alone is worth a stage
    halving = conv_stack([20, 20, 20, 20], strides=[1, 2, 1, 1])
    assert partition(halving, 2, "flops", 0) == [(0, 2), (2, 4)]
    assert partition(halving, 2, "cost", 0) == partition(halving, 2, negatives=0) == [(0, 1), (1, 4)]


def test_cost_counts_every_stream_of_an_overlay_family():
    stack = conv_stack([20, 20])
    elementwise = block_costs(stack, 0)[1] - block_flops(stack, 0)[1]
    assert block_costs(stack, 2)[1] - block_flops(stack, 2)[1] == 4 * elementwise  # pos, 2 neg, neutral
