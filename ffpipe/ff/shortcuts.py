"""Shortcut tensors: the output of an earlier block joined to a later block's output (FF-ResNets).

DeeperForward (Sun et al., ICLR 2025, its ResNet-17) joins, every second block, the output of block i − 2 to
the output of block i, by adding it (ADD) or by concatenating it along the channels (CONCAT, which is how its
widths double from one resolution to the next). The shortcut is *detached*: it is an input, like every
block input in FF, so no gradient crosses a block through it either. We follow it exactly:

- A shortcut `(src, dst, kind)` takes block src's output as the next block saw it — normalized, and already
  joined with src's own incoming shortcut — and joins it to block dst's normalized output; the result is what
  block dst + 1 reads. Block dst's goodness comes from its own activity, before the join.
- Resolution: when the source is larger (stride or pooling in between), it is average-pooled by the factor
  f = ceil(source / destination) (DeeperForward pools by 2 at every downsampling of its 32x32 inputs). An odd
  size pools with a partial last window (`ceil_mode`), which is what a stride-2 padded conv does to it
  (7 -> 4): our rule, so 28x28 images need no resize.
- Width: ADD needs the source's channels to fit: a narrower source is zero-padded up to the destination's
  channels (our rule for a mismatch its network never has); a wider one is an error. CONCAT takes any width.

In a pipeline a shortcut whose destination lives in a later stage travels in the packet as a named extra
tensor (`Packet.shortcuts`, keyed by the source block), only as far as its last destination, where it is
dropped; the wire counts its bytes with the packet's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ffpipe.errors import FFPipeError

KINDS = ("add", "concat")


@dataclass(frozen=True)
class Shortcut:
    src: int
    dst: int
    kind: Literal["add", "concat"]


def parse_shortcuts(entries: Sequence[Sequence], depth: int) -> list[Shortcut]:
    """`model.shortcuts` ([from, to, kind] each) as Shortcuts, or one FFPipeError line for a bad topology."""
    shortcuts, seen = [], set()
    for n, entry in enumerate(entries):
        if len(entry) != 3 or entry[2] not in KINDS:
            raise FFPipeError(f"config model.shortcuts[{n}]: expected [from, to, add|concat], got {list(entry)}")
        src, dst, kind = int(entry[0]), int(entry[1]), entry[2]
        if not 0 <= src < depth or not 0 <= dst < depth:
            raise FFPipeError(f"config model.shortcuts[{n}]: blocks {src} -> {dst} outside 0..{depth - 1}")
        if src >= dst:
            raise FFPipeError(f"config model.shortcuts[{n}]: {src} -> {dst} does not run forward (a shortcut "
                              "joins an earlier block's output to a later one; a backward one would be a cycle)")
        if dst in seen:
            raise FFPipeError(f"config model.shortcuts[{n}]: block {dst} already receives a shortcut")
        seen.add(dst)
        shortcuts.append(Shortcut(src, dst, kind))
    return sorted(shortcuts, key=lambda s: s.dst)


def joined_shape(out: tuple[int, ...], src: tuple[int, ...], shortcut: Shortcut) -> tuple[int, ...]:
    """The shape block dst + 1 reads: dst's output `out` joined with the source's (joined) output `src`."""
    where = f"config model.shortcuts {shortcut.src} -> {shortcut.dst} ({shortcut.kind})"
    if len(out) != 3 or len(src) != 3:
        raise FFPipeError(f"{where}: shortcuts join conv blocks (C, H, W), got {src} and {out}")
    f = pool_factor(src[1], out[1])
    if f != pool_factor(src[2], out[2]) or -(-src[1] // f) != out[1] or -(-src[2] // f) != out[2]:
        raise FFPipeError(f"{where}: no average pooling takes a {src[1]}x{src[2]} source to {out[1]}x{out[2]}")
    if shortcut.kind == "concat":
        return (out[0] + src[0], out[1], out[2])
    if src[0] > out[0]:
        raise FFPipeError(f"{where}: cannot add {src[0]} channels to {out[0]} (zero-padding only widens the "
                          "source); use concat")
    return out


def pool_factor(src: int, dst: int) -> int:
    """The average-pooling window (and stride) that takes `src` pixels to `dst`: ceil(src / dst)."""
    return -(-src // dst)


def join(x: torch.Tensor, source: torch.Tensor, kind: str) -> torch.Tensor:
    """Block dst's normalized output `x` [N, C, H, W] joined with a (detached) source [N, C', H', W']."""
    if source.shape[-1] != x.shape[-1]:
        source = F.avg_pool2d(source, pool_factor(source.shape[-1], x.shape[-1]), ceil_mode=True)
    if kind == "concat":
        return torch.cat([x, source], dim=1)
    if source.shape[1] < x.shape[1]:
        source = F.pad(source, (0, 0, 0, 0, 0, x.shape[1] - source.shape[1]))
    return x + source


@dataclass(frozen=True)
class ShortcutPlan:
    """Per block: which shortcut ends there, whether its (joined) output feeds one, and the sources it is the
    last destination of (dropped after it)."""

    shortcuts: tuple[Shortcut, ...] = ()

    @classmethod
    def of(cls, specs: Sequence) -> ShortcutPlan:
        """The plan of a net from its block specs, which carry the shortcuts `model.shortcuts` was parsed into
        once (`ffpipe.ff.blocks.block_specs`)."""
        return cls(tuple(s.shortcut for s in specs if s.shortcut is not None))

    def incoming(self, index: int) -> Shortcut | None:
        return next((s for s in self.shortcuts if s.dst == index), None)

    def is_source(self, index: int) -> bool:
        return any(s.src == index for s in self.shortcuts)

    def done_after(self, index: int) -> list[int]:
        """Sources whose last destination is `index`."""
        return [src for src in {s.src for s in self.shortcuts}
                if max(s.dst for s in self.shortcuts if s.src == src) == index]

    def in_flight(self, boundary: int) -> list[int]:
        """The sources whose tensors cross the boundary after block `boundary` (made at or before it, last
        used after it)."""
        last = {s.src: max(t.dst for t in self.shortcuts if t.src == s.src) for s in self.shortcuts}
        return sorted(src for src, end in last.items() if src <= boundary < end)
