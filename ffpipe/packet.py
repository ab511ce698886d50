"""What crosses a stage boundary: the streams as one tensor, plus the running readout accumulators.

All streams of a minibatch travel as ONE tensor stacked along the batch dimension, so a block runs the
positive and negative streams as one matmul (or conv) instead of one per stream (measured on CPU, separate
small matmuls made FF cost 1.7× BP per sample); `Stage` gives the loss-free neutral rows their own no-grad
call so the weight gradient skips them. The row layout is fixed by the packet's `view`:

| view      | rows of `x`                                    | used by                          |
|-----------|------------------------------------------------|----------------------------------|
| `train`   | pos B, neg k·B, neutral B (overlay families)   | Stage.step                       |
|           | image B (group_ce: no overlay, no negatives)   |                                  |
| `plain`   | neutral B (or the image for group_ce)          | linear / group readouts, exits   |
| `overlay` | C·B rows, label-major: rows kB:(k+1)B = label k | goodness readout (seed 000 eq. 4) |

`logits` is the running `[B, C]` sum of the head slices; `scores` the running `[B, C]` goodness (overlay
view) or group goodness (group_ce); `exits` one early-exit prediction row per stage already passed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

VIEWS = ("train", "plain", "overlay")


def negative_streams(cfg) -> int:
    """Negative streams per image in a train packet: `data.labels.negatives_per_image`, or 0 for group_ce,
    whose packets carry the plain image only (`cfg` is an `ffpipe.config.Config`)."""
    return 0 if cfg.loss.family == "group_ce" else cfg.data.labels.negatives_per_image


@dataclass
class Packet:
    view: str
    x: torch.Tensor
    y: torch.Tensor
    step: int = 0
    epoch: int = 0
    logits: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    exits: torch.Tensor | None = None

    @property
    def n(self) -> int:
        """Samples in the minibatch (not rows of `x`)."""
        return len(self.y)

    def rows(self, stream: str, negatives: int) -> slice:
        """Rows of `x` holding `stream` ("pos", "neg", "neutral") in a train packet with `negatives` negative
        streams per image (0: group_ce's one plain stream). Negative stream i holds rows (1+i)B..(2+i)B."""
        n = self.n
        if not negatives:
            return slice(0, n)
        return {"pos": slice(0, n), "neg": slice(n, (1 + negatives) * n),
                "neutral": slice((1 + negatives) * n, (2 + negatives) * n)}[stream]

    def evolve(self, **changes) -> Packet:
        return replace(self, **changes)

    def shard(self, replica: int, replicas: int) -> Packet:
        """Replica `replica`'s contiguous share of every stream (pipeline × data parallel, at stage 0)."""
        if replicas == 1:
            return self
        n, m = self.n, self.n // replicas
        streams = len(self.x) // n
        rows = slice(replica * m, (replica + 1) * m)
        x = self.x.view(streams, n, *self.x.shape[1:])[:, rows].reshape(streams * m, *self.x.shape[1:])
        return self.evolve(x=x, y=self.y[rows])

    def add_exit(self, prediction: torch.Tensor) -> torch.Tensor:
        row = prediction.unsqueeze(0)
        return row if self.exits is None else torch.cat([self.exits, row])
