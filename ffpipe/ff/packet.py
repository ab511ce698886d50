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

`logits` is the running `[B, C]` sum of the head slices; `scores` the per-block `[blocks, B, C]` goodness per
label (overlay view) or group goodness (group_ce); `exits` one early-exit prediction row per stage already
passed; `shortcuts` the shortcut tensors in flight (`ffpipe.ff.shortcuts`), rows laid out like `x`.

At a stage boundary `x` and `shortcuts` may be rounded to `pipeline.wire_dtype` (`Packet.to_wire`); the
accumulators and labels never are.

The packet source: Stage 0's job: turn minibatches of images into packets of positive, negative and neutral streams.

With `data.labels.negatives_per_image` = k, every image appears under k distinct wrong labels, one negative
stream each (k = 1 is the papers' setting).

Negative sampling lives here, at the head of the network, with a generator seeded by (seed, step) only, so
the stream of packets is the same whatever the partition into stages and wherever a run was resumed, even
in the middle of an epoch. Batches and wrong labels are drawn on the CPU and copied to the device
(`ffpipe.data.batches.to_device`), so a GPU run sees the very batches and negatives of a CPU run.
The network input gets the same RMS normalization as every block output (seed 000 eq. 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import get_args

import torch

from ffpipe.config import Config
from ffpipe.config.sections import WireDtype
from ffpipe.data import Dataset, Split, epoch_batches, num_batches, to_device
from ffpipe.ff.labels import make_encoder, sample_distinct_negatives
from ffpipe.ff.norm import network_input

VIEWS = ("train", "plain", "overlay")
WIRE_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(WireDtype)}


def narrows(wire_dtype: str) -> bool:
    """Whether a boundary of this `pipeline.wire_dtype` rounds (and the receiver widens back to float32)."""
    return WIRE_DTYPES[wire_dtype] != torch.float32


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
    shortcuts: dict[int, torch.Tensor] = field(default_factory=dict)  # shortcut tensors in flight, by source block

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

    def head_hits(self) -> torch.Tensor | None:
        """How many of the packet's images the head's summed logits get right (a device tensor; None without
        a head): the training accuracy the sequential runner and the pipeline's last stage both count."""
        return (self.logits.argmax(dim=1) == self.y).sum() if self.logits is not None else None

    # -- a stage boundary ----------------------------------------------------------------------------------
    def to_wire(self, wire_dtype: str) -> Packet:
        """The packet as it leaves a stage: the activity (`x`, the shortcut tensors in flight) rounded to
        `pipeline.wire_dtype`, kept in that dtype. This is the ONE place where the rounding happens.

        Why: bfloat16 halves the bytes a boundary moves. The sequential runner rounds at the same boundaries
        (`at_boundary`), so a pipelined and a sequential run of the same partition still end with bitwise the
        same weights, the pipeline's proof. The rounding points are the stage boundaries, so with bfloat16 the
        result depends on the partition. This is our choice, not a paper's. The accumulators (logits, scores,
        exits) and the labels are never rounded. float32: the packet itself, no copy."""
        if not narrows(wire_dtype):
            return self
        dtype = WIRE_DTYPES[wire_dtype]
        return self.evolve(x=self.x.to(dtype), shortcuts={src: t.to(dtype) for src, t in self.shortcuts.items()})

    def from_wire(self, wire_dtype: str) -> Packet:
        """The packet the receiving stage computes on: after a narrowing wire, `x` and the shortcut tensors
        back in float32 (exact, fresh tensors); float32: the packet itself."""
        if not narrows(wire_dtype):
            return self
        return self.evolve(x=self.x.float(), shortcuts={src: t.float() for src, t in self.shortcuts.items()})

    def at_boundary(self, wire_dtype: str) -> Packet:
        """What crossing a stage boundary does to the packet, without a wire: the sequential runner's twin
        of send + receive (`to_wire`, then `from_wire`)."""
        return self.to_wire(wire_dtype).from_wire(wire_dtype)


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python `hash`, which is salted per process for str)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 6364136223846793005 + part + 1442695040888963407) % (1 << 63)
    return value


class PacketSource:
    def __init__(self, cfg: Config, dataset: Dataset, device: torch.device | str = "cpu"):
        self.cfg, self.dataset = cfg, dataset
        self.device = torch.device(device)
        lab = cfg.data.labels
        self.encoder = make_encoder(lab.encoding, dataset.num_classes, dataset.image_shape,
                                    label_set=lab.label_set, k=lab.k, k_reading=lab.k_reading,
                                    device=self.device)
        self.overlays = self.encoder.overlays
        self._normalize = network_input(cfg.model)
        self.negatives = negative_streams(cfg)
        self.neutral = cfg.head.mode != "none"

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.dataset.train), self.cfg.data.batch_size, drop_last=True)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the first block sees: the (labelled) images, normalized as `model.input_norm` says."""
        return self._normalize(x)

    def train_packets(self, epoch: int, start_step: int = 0) -> Iterator[Packet]:
        """The packets of one epoch (1-indexed), from its `start_step`-th batch on; `Packet.step` counts
        optimizer steps from the start of training (the first step is 1)."""
        seed = self.cfg.train.seed
        first_step = (epoch - 1) * self.steps_per_epoch
        batches = epoch_batches(self.dataset.train, self.cfg.data.batch_size, seed=seed, epoch=epoch,
                                start_batch=start_step, augment=self.cfg.data.augment)
        gen = torch.Generator()
        for i, (x, y) in enumerate(batches, start=start_step):
            wrong = []
            if self.overlays:
                gen.manual_seed(derived_seed(seed, first_step + i + 1))
                wrong = sample_distinct_negatives(y, self.dataset.num_classes, self.negatives, gen)
            x, y, *wrong = (to_device(t, self.device) for t in (x, y, *wrong))
            if self.overlays:
                streams = [self.encoder.encode(x, y)] + [self.encoder.encode(x, y_neg) for y_neg in wrong]
                if self.neutral:
                    streams.append(self.encoder.neutral(x))
                x = torch.cat(streams)
            yield Packet("train", self.network_input(x), y, step=first_step + i + 1, epoch=epoch)

    def eval_packets(self, split: Split, view: str) -> Iterator[Packet]:
        """`plain` (neutral stream, or the bare image for group_ce) or `overlay` (all C labels, batched)."""
        for x, y in epoch_batches(split, self.cfg.data.eval_batch_size, seed=0, epoch=0, shuffle=False,
                                  drop_last=False, device=self.device):
            if view == "overlay":
                x = self.encoder.encode_all(x)
            elif self.overlays:
                x = self.encoder.neutral(x)
            yield Packet(view, self.network_input(x), y)
