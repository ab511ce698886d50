"""Split a block stack into contiguous stages.

`flops` (default) minimizes the largest stage's estimated training cost, because a pipeline runs at the
pace of its slowest stage (the bottleneck bound). Our cost model per sample and block, with F = the block's
forward FLOPs per sample (`BlockSpec.flops`): the forward pass runs 3 streams (pos, neg, neutral) and the
weight gradient 2 (pos, neg); block inputs are detached, so no input gradient is computed:
    cost = 3F + 2F = 5F   (overlay families),   cost = 2F (group_ce: one stream, forward + weight grad).
The constant factor does not change the partition; it makes the printed estimate comparable across models.
"""

from __future__ import annotations

from ffpipe.errors import FFPipeError
from ffpipe.nn import BlockSpec


def block_costs(specs: list[BlockSpec], overlays: bool = True) -> list[int]:
    return [(5 if overlays else 2) * s.flops() for s in specs]


def _min_max_split(costs: list[int], parts: int) -> list[int]:
    """Contiguous split of `costs` into `parts` non-empty runs minimizing the largest run (exact DP)."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for p in range(1, parts + 1):
        for end in range(p, n + 1):
            for start in range(p - 1, end):
                value = max(best[p - 1][start], prefix[end] - prefix[start])
                if value < best[p][end]:
                    best[p][end], cut[p][end] = value, start
    counts, end = [], n
    for p in range(parts, 0, -1):
        start = cut[p][end]
        counts.append(end - start)
        end = start
    return counts[::-1]


def partition(specs: list[BlockSpec], stages: int, how: str | list[int] = "flops",
              overlays: bool = True) -> list[tuple[int, int]]:
    """Return `[(first, last_exclusive), ...]`, one per stage."""
    n = len(specs)
    if stages < 1 or stages > n:
        raise FFPipeError(f"cannot split {n} blocks into {stages} stages: each stage needs at least one block")
    if isinstance(how, list):
        counts = how
        if len(counts) != stages or sum(counts) != n or min(counts) < 1:
            raise FFPipeError(f"partition {counts} must give each of {stages} stages >= 1 block, summing to {n}")
    elif how == "equal":
        counts = [n // stages + (1 if s < n % stages else 0) for s in range(stages)]
    elif how == "flops":
        counts = _min_max_split(block_costs(specs, overlays), stages)
    else:
        raise FFPipeError(f"unknown partition '{how}': use flops, equal or a list of block counts")
    bounds, first = [], 0
    for count in counts:
        bounds.append((first, first + count))
        first += count
    return bounds


def block_params(spec: BlockSpec) -> int:
    if spec.kind == "linear":
        return spec.in_features * spec.out + spec.out
    return spec.in_shape[0] * spec.kernel * spec.kernel * spec.out + spec.out


def partition_table(specs: list[BlockSpec], bounds: list[tuple[int, int]], overlays: bool = True) -> str:
    """The table printed at start: blocks, parameters, estimated training FLOPs per sample and share per stage."""
    costs = block_costs(specs, overlays)
    total = sum(costs) or 1
    lines = [f"{'stage':>5}  {'blocks':>8}  {'params':>11}  {'GFLOP/sample':>12}  {'share':>6}"]
    for k, (first, last) in enumerate(bounds):
        cost = sum(costs[first:last])
        params = sum(block_params(s) for s in specs[first:last])
        lines.append(f"{k:>5}  {f'{first}..{last - 1}':>8}  {params:>11,}  {cost / 1e9:>12.4f}  {cost / total:>6.1%}")
    return "\n".join(lines)
