"""Contiguous stage partitions: the min-max split is optimal, and bad partitions are one clear line."""

import itertools
import random

import pytest

from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.partition import min_max_split, partition, partition_table


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


@pytest.mark.parametrize("stages, how", [(5, "flops"), (2, [3, 3]), (2, [4, 0]), (2, "bogus")])
def test_impossible_partitions_are_one_line(stages, how):
    with pytest.raises(FFPipeError):
        partition(specs([10, 10, 10, 10]), stages, how)


def test_table_lists_every_stage():
    stack = specs([100, 100, 100])
    table = partition_table(stack, [(0, 1), (1, 3)])
    assert len(table.splitlines()) == 3 and "1..2" in table
