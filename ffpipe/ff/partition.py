"""Split a block stack into contiguous stages.

A pipeline runs at the pace of its slowest stage (the bottleneck bound), so `flops` (default) minimizes the
largest stage's estimated training cost, and `measured` does the same with block times measured for a few
steps on the real device (`ffpipe.run.model.measure_block_seconds`). Our cost model per sample and block, with
F = the block's forward FLOPs per sample (`BlockSpec.flops`) and k negative streams: the forward pass runs
the 2 + k streams (pos, k neg, neutral) and the weight gradient the 1 + k that carry a loss (`Stage` runs
the neutral rows without autograd; BatchNorm blocks run all with autograd, a detail the estimate ignores);
block inputs are detached, so no input gradient:
    cost = (2 + k)F + (1 + k)F   (overlay families; 5F for k = 1),   cost = 2F (group_ce, k = 0: one
    stream, forward + weight grad).
The constant factor does not change the partition; it makes the printed estimate comparable across models.
"""

from __future__ import annotations

import math

from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.shortcuts import ShortcutPlan


def block_costs(specs: list[BlockSpec], negatives: int = 1) -> list[int]:
    factor = 3 + 2 * negatives if negatives else 2
    return [factor * s.flops() for s in specs]


def min_max_split(costs: list[int], parts: int) -> list[int]:
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
              negatives: int = 1, seconds: list[float] | None = None) -> list[tuple[int, int]]:
    """Return `[(first, last_exclusive), ...]`, one per stage; `measured` needs the per-block `seconds`."""
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
        counts = min_max_split(block_costs(specs, negatives), stages)
    elif how == "measured":
        if seconds is None or len(seconds) != n:
            raise FFPipeError("partition 'measured' needs one measured time per block")
        counts = min_max_split(seconds, stages)
    else:
        raise FFPipeError(f"unknown partition '{how}': use flops, measured, equal or a list of block counts")
    bounds, first = [], 0
    for count in counts:
        bounds.append((first, first + count))
        first += count
    return bounds


def block_params(spec: BlockSpec) -> int:
    if spec.kind == "linear":
        return spec.in_features * spec.out + spec.out
    return spec.in_shape[0] * spec.kernel * spec.kernel * spec.out + spec.out


def boundary_floats(specs: list[BlockSpec], bounds: list[tuple[int, int]], plan: ShortcutPlan) -> list[tuple[int, int]]:
    """Per stage: the floats per sample and stream it sends on, (activations, shortcut tensors in flight);
    (0, 0) for the last stage."""
    out = []
    for _, last in bounds:
        if last == len(specs):
            out.append((0, 0))
            continue
        activation = math.prod(specs[last].in_shape)  # the last block's output as the next block reads it
        shortcuts = sum(math.prod(specs[src + 1].in_shape) for src in plan.in_flight(last - 1))
        out.append((activation, shortcuts))
    return out


def partition_table(specs: list[BlockSpec], bounds: list[tuple[int, int]], negatives: int = 1,
                    seconds: list[float] | None = None, plan: ShortcutPlan | None = None) -> str:
    """The table printed at start: blocks, parameters, estimated training FLOPs per sample and each stage's
    share of them (of the measured time per step, when the partition was measured), and the KiB per sample
    and stream it sends on: activations plus the shortcut tensors that cross the boundary."""
    costs = block_costs(specs, negatives)
    shares = seconds or costs
    total, total_share = sum(costs) or 1, sum(shares) or 1
    head = "ms/step share" if seconds else "share"
    sent = boundary_floats(specs, bounds, plan or ShortcutPlan())
    lines = [f"{'stage':>5}  {'blocks':>8}  {'params':>11}  {'GFLOP/sample':>12}  {head:>13}  "
             f"{'KiB out (shortcuts)':>20}"]
    for k, (first, last) in enumerate(bounds):
        cost, share = sum(costs[first:last]), sum(shares[first:last])
        params = sum(block_params(s) for s in specs[first:last])
        shown = f"{1000 * share:.2f} {share / total_share:.0%}" if seconds else f"{cost / total:.1%}"
        act, extra = sent[k]
        out = f"{4 * (act + extra) / 1024:.1f} ({4 * extra / 1024:.1f})" if act else "-"
        lines.append(f"{k:>5}  {f'{first}..{last - 1}':>8}  {params:>11,}  {cost / 1e9:>12.4f}  {shown:>13}  "
                     f"{out:>20}")
    return "\n".join(lines)
