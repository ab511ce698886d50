"""`Network`: the facts about the whole network that every stage needs, derived once from the config.

`ffpipe.run.model.Model` derives them when it builds the network and hands them to each `Stage`, so a stage
never re-derives them from the whole config (and two stages can never disagree): the block specs, the class
count, the shortcut plan, the blocks whose scores the readouts add (which also own the head slices), and the
negative streams per image in a training packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.head import readout_blocks
from ffpipe.ff.packet import negative_streams
from ffpipe.ff.shortcuts import ShortcutPlan


@dataclass(frozen=True)
class Network:
    specs: tuple[BlockSpec, ...]
    num_classes: int
    shortcuts: ShortcutPlan
    readout: frozenset[int]  # the blocks the summed readouts add; with a head, each owns a head slice
    negatives: int  # negative streams per image in a train packet (0: group_ce's packets carry the image only)
    overlays: bool  # labels ride on the input (every family but group_ce)
    heads: bool  # whether the readout blocks carry head slices (`head.mode` is not none)

    @classmethod
    def derive(cls, cfg, specs: list[BlockSpec], num_classes: int) -> Network:
        """From `cfg` (an `ffpipe.config.Config`) and the specs `ffpipe.ff.blocks.block_specs` chained."""
        return cls(tuple(specs), num_classes, ShortcutPlan.of(specs), frozenset(readout_blocks(cfg, len(specs))),
                   negative_streams(cfg), cfg.loss.family != "group_ce", cfg.head.mode != "none")

    def __len__(self) -> int:
        return len(self.specs)

    def owns_head(self, first: int, last: int) -> bool:
        """Whether the stage of blocks first..last-1 holds a head slice."""
        return self.heads and any(first <= i < last for i in self.readout)
