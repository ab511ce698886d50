"""Split a block stack into contiguous stages.

A pipeline runs at the pace of its slowest stage (the bottleneck bound), so every rule but `equal` minimizes
the largest stage's cost (an exact min-max DP over contiguous splits). The costs:

- `cost` (default): our model of a block's training time per sample, FLOPs *and* elementwise work.
- `flops`: the FLOP term alone (the model ffpipe used before `cost`; printed beside it in the table).
- `measured`: block times measured for a few real steps on the device (`ffpipe.run.model.measure_block_seconds`).

FLOP term, with F = the block's forward FLOPs per sample (`BlockSpec.flops`) and k negative streams: the
forward pass runs the 2 + k streams (pos, k neg, neutral) and the weight gradient the 1 + k that carry a loss
(`Stage` runs the neutral rows without autograd); block inputs are detached, so no input gradient:
    flops = (2 + k)F + (1 + k)F   (overlay families; 5F for k = 1),   2F (group_ce, k = 0: one stream).
Elementwise term (why: FLOPs alone put a deep net's full-resolution blocks far too cheap; cnn14's block 0, a
1-channel 3x3 conv at 28x28, has 0.3% of the net's FLOPs and took 9% of its step): activation, dropout,
between-block norm, goodness and their backward passes are memory-bound and scale with the activations, not
the FLOPs. Per stream, a block costs `OUT_ELEMENT` FLOP-equivalents per element of its conv/linear output
(before pooling) and `IN_ELEMENT` per element of its input:
    cost = flops + streams · (OUT_ELEMENT · out_elements + IN_ELEMENT · in_elements),  streams = 2 + k or 1.
The two constants are a least-squares fit of measured per-block step times of the deep nets (tinycnn, cnn14,
resnet17) on the 2-core CPU at 1 thread (`python benchmarks/partition_cost.py`, results in
benchmarks/results/partition/). On a GPU the balance of FLOPs and memory traffic differs: use `measured`.
The constant factor does not change the partition; it makes the printed estimate comparable across models.
"""

from __future__ import annotations

import math

from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.shortcuts import ShortcutPlan

OUT_ELEMENT = 1040
IN_ELEMENT = 110


def block_flops(specs: list[BlockSpec], negatives: int = 1) -> list[int]:
    """The FLOP term of each block's training cost per sample (module docstring)."""
    factor = 3 + 2 * negatives if negatives else 2
    return [factor * s.flops() for s in specs]


def out_elements(spec: BlockSpec) -> int:
    """Elements per sample of the block's conv/linear output, before pooling: what its elementwise work reads."""
    if spec.kind == "linear":
        return spec.out
    h, w = spec.conv_hw
    return spec.out * h * w


def block_costs(specs: list[BlockSpec], negatives: int = 1) -> list[int]:
    """Each block's training cost per sample in FLOP-equivalents, FLOPs and elementwise work (module docstring)."""
    streams = 2 + negatives if negatives else 1
    return [f + streams * (OUT_ELEMENT * out_elements(s) + IN_ELEMENT * s.in_features)
            for f, s in zip(block_flops(specs, negatives), specs)]


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


def partition(specs: list[BlockSpec], stages: int, how: str | list[int] = "cost",
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
    elif how == "cost":
        counts = min_max_split(block_costs(specs, negatives), stages)
    elif how == "flops":
        counts = min_max_split(block_flops(specs, negatives), stages)
    elif how == "measured":
        if seconds is None or len(seconds) != n:
            raise FFPipeError("partition 'measured' needs one measured time per block")
        counts = min_max_split(seconds, stages)
    else:
        raise FFPipeError(f"unknown partition '{how}': use cost, flops, measured, equal or a list of block counts")
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
                    seconds: list[float] | None = None, plan: ShortcutPlan | None = None,
                    element_bytes: int = 4) -> str:
    """The table printed at start: blocks, parameters, training FLOPs per sample, each stage's share of the
    estimated cost (of the measured time per step, when the partition was measured), the split the FLOPs
    alone would give beside it with its share, and the KiB per sample and stream it sends on: activations
    plus the shortcut tensors that cross the boundary, at `element_bytes` per value (`pipeline.wire_dtype`: 4
    for float32, 2 for bfloat16). A last line compares the two splits' slowest stage."""
    flops = block_flops(specs, negatives)
    shares = seconds or block_costs(specs, negatives)
    total_share = sum(shares) or 1
    by_flops = partition(specs, len(bounds), "flops", negatives)
    head = "ms/step share" if seconds else "cost share"
    sent = boundary_floats(specs, bounds, plan or ShortcutPlan())
    lines = [f"{'stage':>5}  {'blocks':>8}  {'params':>11}  {'GFLOP/sample':>12}  {head:>13}  "
             f"{'by FLOPs':>14}  {'KiB out (shortcuts)':>20}"]
    for k, (first, last) in enumerate(bounds):
        share = sum(shares[first:last])
        params = sum(block_params(s) for s in specs[first:last])
        shown = f"{1000 * share:.2f} {share / total_share:.0%}" if seconds else f"{share / total_share:.1%}"
        f0, f1 = by_flops[k]
        alt = f"{f0}..{f1 - 1} {sum(shares[f0:f1]) / total_share:.0%}"
        act, extra = sent[k]
        kib = element_bytes / 1024
        out = f"{kib * (act + extra):.1f} ({kib * extra:.1f})" if act else "-"
        lines.append(f"{k:>5}  {f'{first}..{last - 1}':>8}  {params:>11,}  {sum(flops[first:last]) / 1e9:>12.4f}  "
                     f"{shown:>13}  {alt:>14}  {out:>20}")
    if len(bounds) > 1:
        worst = max(sum(shares[a:b]) for a, b in bounds) / total_share
        worst_flops = max(sum(shares[a:b]) for a, b in by_flops) / total_share
        what = "measured time" if seconds else "estimated cost"
        lines.append(f"slowest stage: {worst:.0%} of the {what} with this split, {worst_flops:.0%} split by FLOPs "
                     f"(ideal {1 / len(bounds):.0%})")
    return "\n".join(lines)
