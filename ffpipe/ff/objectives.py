"""The local goodness objectives of FF blocks, one class per `loss.family`.

Every objective reads a block's activity y (post activation and pooling, before normalization) and returns a
scalar loss whose gradient trains that block alone. Notation: a sample's goodness is

    g = reduce_j ( w_j · y_j^2 )        reduce = sum (cfg.goodness "sum") or mean ("mean") over all units j

(C·H·W units for a conv block), with w = 1 unless FGFF significance weights are on (seed 004 eq. 3). It is
computed in float32 whatever the activation dtype, because a bf16 sum of 10^3..10^5 squares loses the
difference between positive and negative samples. θ is the threshold: cfg.threshold, or by default the number
of units for sum goodness (seed 000 §2.2, after Hinton's code: θ = N) and 1.0 for mean goodness (the same
rule per unit: an RMS-normalized input and an init of unit gain give E[y^2] of order 1).

Families (paper equation first, our reading second):

- `bce`: seed 000 eq. 1 writes loss = σ(±(Σy² − θ)), a bare sigmoid. Taken literally it is bounded and its
  gradient σ' vanishes for the samples that are most wrong. Seed 000 built on loeweX's code (§2.4), which
  trains with `BCEWithLogitsLoss` on g − θ, and seed 000 §2.2 calls the per-layer loss a binary cross-entropy
  of σ; seed 001 eq. 1 writes it out: ln(1 + e^(θ − g_pos)) + ln(1 + e^(g_neg − θ)). We implement that
  softplus (BCE-with-logits) form, averaged over the 2B samples.
- `symba` (Lee & Song; seed 001 §II-B-b, Dooms et al.'s Trifecta code): softplus(−α (g_pos − g_neg)),
  pairing the i-th positive with the i-th negative (the same image under a wrong label), averaged over the B
  pairs; α = cfg.alpha (4 in Trifecta, which uses mean goodness; with sum goodness α acts on a scale N times
  larger and the loss is close to a hinge).
- `hinge` (seed 004 eqs. 1-2): max(0, δ − (g_pos − θ)) and max(0, δ − (θ − g_neg)), δ = cfg.margin. Eq. 1 is
  printed with the ½ before the positive term only; the text asks for positive and negative goodness "at
  least 2δ apart centred around the threshold", a symmetric goal, so we read ½ as applying to the sum and
  take ½ (mean over positives + mean over negatives), the same weighting as `bce`. Seed 004 uses mean
  goodness (eq. 2); we follow cfg.goodness, so set `goodness: mean` for the paper's setting.
- `group_ce` (seed 001 eqs. 2-3, CwComp / DeeperForward): no negative stream. The block's channels (conv) or
  units (linear) split into J = num_classes contiguous groups; G[n, j] is the mean of y^2 over group j's
  units (eq. 2; or the mean activation if cfg.group_goodness == "mean", our option) and the loss is the
  cross-entropy of softmax(G) against the true class (eq. 3). Prediction is argmax_j G (summed over blocks).

Additions to every family:

- Peer normalization (`ffpipe.ff.objectives`): loss += cfg.peer_weight · L_peer on the positive stream.
- FGFF significance (seed 004 eq. 3): a learned w inside the goodness, initialized to 1. Seed 004 has one
  weight per neuron of an MLP; for a linear block w has shape (units,). For a conv block we take one weight
  per channel, shape (C, 1, 1) (our choice): a channel is one neuron shared over positions, and per-position
  weights would make the goodness depend on where in the image a feature sits. `significance` is a parameter
  of this module, not of the block, so the trainer can give it its own optimizer (lr cfg.significance_lr,
  seed 004 §III-D). With lr 0, w stays exactly 1; w · y^2 with w = 1 is bitwise y^2 and the reduction is the
  same op, so training is bitwise plain FF. cfg.significance_at_inference = False drops w at inference
  (seed 004 §III-C).

Discrimination accuracy (seed 000 §2.2; seed 003 eq. 3): a positive counts as right when σ(g − θ) > 0.5 and
a negative when σ(g − θ) < 0.5; we compare g − θ with 0, which is the same test without the sigmoid's
rounding to 0.5 near the boundary.

Peer normalization: Peer normalization: keep every unit of a block about as active as its peers.

Hinton (2022) adds a term that pulls each hidden unit's average activity toward the layer's average, so no
unit is always on or always off (seed 003 §1: "Peer normalization within a layer is employed to prevent
extreme activity or inactivity of individual nodes"). We follow loeweX's implementation:

    r   <- m · r + (1 - m) · mean_batch(y_pos)        (per unit, positive stream only)
    L_peer = mean_j ( mean_k(r_k) - r_j )^2

The stored r is detached, the new r keeps the gradient of the current batch's term, so the gradient reaching
the block is (1 - m) times that of the batch mean. The loss sees only deviations from the mean over units, so
the starting value of r cancels: we start at 0 (loeweX starts at 0.5; same training).

Momentum m. loeweX's config uses m = 0.9 with peer weight 0.03. Seed 003 Table 1 lists weight 0.03 with
"momentum 0.09"; every other entry there (lr 1e-3, weight decay 3e-4, momentum 0.9, downstream lr 1e-2 and
weight decay 3e-3, validation index) is loeweX's config.yaml value, and seed 003 cites loeweX's code, so 0.09
reads as a dropped digit of 0.9. Taken literally, 0.09 would barely average (r is 91% the current batch) and
make the peer gradient 9x stronger. Our default (`loss.peer_momentum`) is 0.9; set 0.09 to follow the table
to the letter.

Our choice for conv blocks: a unit is a channel (mean over the batch and all positions). A channel is one
feature detector applied everywhere; per-position means would instead penalize the natural difference between
border and centre activity.

The running mean is a buffer, so it is saved in the state dict with the block's checkpoint; it is updated only
in training mode, so an evaluation loss does not move it.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffpipe.config import LossConfig
from ffpipe.config.sections import Family, Goodness, GroupGoodness
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec

FAMILIES = get_args(Family)


def split_streams(t: Tensor, n: int, k: int) -> tuple[Tensor, ...]:
    """Split a concatenated [k·n, ...] batch into its k streams of n samples each (views, no copy)."""
    if t.shape[0] != n * k:
        raise ValueError(f"expected {k} streams of {n} samples, got a batch of {t.shape[0]}")
    return tuple(t.split(n, dim=0))


def per_image(g_neg: Tensor, images: int) -> Tensor:
    """Negative goodness [k·B] as [k, B]: row i is negative stream i, column b is image b (packet layout)."""
    return g_neg.view(-1, images)


def pair_accuracy(g_pos: Tensor, g_neg: Tensor) -> Tensor:
    """The fraction of (image, negative) pairs whose positive goodness is higher (a tie counts as wrong)."""
    return (g_pos > per_image(g_neg, len(g_pos))).float().mean()


def _sum_dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.dim()))


class Objective(nn.Module):
    """Goodness, significance weights, peer normalization and statistics shared by all families."""

    needs_negatives: bool = True

    def __init__(self, cfg: LossConfig, spec: BlockSpec, num_classes: int):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.reduction = cfg.goodness
        if cfg.goodness not in get_args(Goodness):
            raise FFPipeError(f"config loss.goodness: '{cfg.goodness}' is not one of sum, mean")
        default = float(spec.units) if cfg.goodness == "sum" else 1.0
        self.threshold = float(cfg.threshold) if cfg.threshold is not None else default
        self.significance_at_inference = cfg.significance_at_inference
        shape = (spec.out,) if spec.kind == "linear" else (spec.out, 1, 1)
        self.significance = nn.Parameter(torch.ones(shape)) if cfg.significance else None
        self.peer_weight = cfg.peer_weight
        self.peer = PeerNormalization(spec.out, cfg.peer_momentum) if cfg.peer_weight > 0 else None

    def weighted(self, v: Tensor, inference: bool = False) -> Tensor:
        """w · v (v = y^2 or y, float32), or v itself when there is no w or it is dropped at inference."""
        if self.significance is None or (inference and not self.significance_at_inference):
            return v
        return v * self.significance

    def goodness(self, y: Tensor, inference: bool = False) -> Tensor:
        """[N] per-sample goodness: sum or mean of w · y^2 over a sample's units."""
        sq = self.weighted(y.float().square(), inference)
        total = sq.sum(dim=_sum_dims(sq))
        return total if self.reduction == "sum" else total / (sq.numel() // max(len(sq), 1))

    def contrast(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        """The family's loss on per-sample goodnesses of the positive and negative streams."""
        raise NotImplementedError

    stat_names: tuple[str, ...] = ("loss", "g_pos", "g_neg", "acc_pos", "acc_neg", "acc_pair")
    """What `loss` reports per block, in order; `acc_pair` for every family with a negative stream."""

    def loss(
        self, y_pos: Tensor, y_neg: Tensor | None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(scalar loss incl. peer term, detached stats in the order of `stat_names`)."""
        if y_neg is None:
            raise ValueError(f"loss family {type(self).__name__} needs the negative stream")
        g_pos, g_neg = self.goodness(y_pos), self.goodness(y_neg)
        total = self._add_peer(self.contrast(g_pos, g_neg), y_pos)
        with torch.no_grad():
            stats = self._stats(total.detach().float(), g_pos, g_neg)
        return total, stats

    def _stats(self, total: Tensor, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        """Row i of the positive and of the negative stream is the same image (the packet's layout), so
        `acc_pair`, the fraction of images whose positive goodness beats their own negative's, needs no
        threshold: it is the pairwise form of the goodness readout (seed 000 eq. 4) and means the same for
        every family. `acc_pos`/`acc_neg` are the threshold accuracies (seed 000 §2.2)."""
        acc_pos = (g_pos > self.threshold).float().mean()
        acc_neg = (g_neg < self.threshold).float().mean()
        return torch.stack([total, g_pos.mean(), g_neg.mean(), acc_pos, acc_neg, pair_accuracy(g_pos, g_neg)])

    def class_scores(self, y: Tensor, inference: bool = True) -> Tensor:
        raise TypeError(f"{type(self).__name__} has no class groups; class_scores needs loss.family group_ce")

    def _add_peer(self, loss: Tensor, y_pos: Tensor) -> Tensor:
        if self.peer is None:
            return loss
        return loss + self.peer_weight * self.peer(y_pos)


class BCEObjective(Objective):
    """½ [mean softplus(θ − g_pos) + mean softplus(g_neg − θ)] (seed 001 eq. 1): the mean over the 2B samples
    for one negative per image; with k, positives and negatives keep equal weight (our choice)."""

    def contrast(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        return 0.5 * (F.softplus(self.threshold - g_pos).mean() + F.softplus(g_neg - self.threshold).mean())


class SymbaObjective(Objective):
    """softplus(−α (g_pos − g_neg)) over positive/negative pairs (SymBa; Trifecta code); with k negatives per
    image, −log of the positive's softmax weight among {pos, neg_1..neg_k} under logits α·g (our extension:
    k = 1 is SymBa, k = C − 1 is the cross-entropy of the goodness readout itself, seed 000 eq. 4)."""

    stat_names = ("loss", "g_pos", "g_neg", "acc_pair")  # no threshold, so no threshold accuracies

    def __init__(self, cfg: LossConfig, spec: BlockSpec, num_classes: int):
        super().__init__(cfg, spec, num_classes)
        self.alpha = cfg.alpha

    def _stats(self, total: Tensor, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        return torch.stack([total, g_pos.mean(), g_neg.mean(), pair_accuracy(g_pos, g_neg)])

    def contrast(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        if g_neg.numel() % max(len(g_pos), 1):
            raise ValueError(f"symba pairs positives with negatives: got {g_pos.shape} and {g_neg.shape}")
        margins = -self.alpha * (g_pos - per_image(g_neg, len(g_pos)))  # [k, B]
        if len(margins) == 1:
            return F.softplus(margins[0]).mean()
        return torch.logsumexp(torch.cat([torch.zeros_like(margins[:1]), margins]), dim=0).mean()


class HingeObjective(Objective):
    """½ [mean max(0, δ − (g_pos − θ)) + mean max(0, δ − (θ − g_neg))] (seed 004 eq. 1)."""

    def __init__(self, cfg: LossConfig, spec: BlockSpec, num_classes: int):
        super().__init__(cfg, spec, num_classes)
        self.margin = cfg.margin

    def contrast(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        pos = F.relu(self.margin - (g_pos - self.threshold)).mean()
        neg = F.relu(self.margin - (self.threshold - g_neg)).mean()
        return 0.5 * (pos + neg)


class GroupCEObjective(Objective):
    """Channel-wise competitive cross-entropy over class groups (seed 001 eqs. 2-3); no negatives.

    Stats: the loss, the mean G of the true class (`g_true`) and of the other classes (`g_other`), and `acc`,
    the fraction of samples whose largest group is the true class (the block's own one-pass accuracy).
    `threshold` is unused (0).
    """

    needs_negatives = False
    stat_names = ("loss", "g_true", "g_other", "acc")

    def __init__(self, cfg: LossConfig, spec: BlockSpec, num_classes: int):
        super().__init__(cfg, spec, num_classes)
        if num_classes < 2 or spec.out % num_classes != 0:
            raise FFPipeError(f"loss.family group_ce splits block {spec.index}'s {spec.out} "
                              f"{'channels' if spec.kind == 'conv' else 'units'} into {num_classes} class "
                              f"groups: model.width must be a multiple of {num_classes}")
        self.group_goodness = cfg.group_goodness
        if cfg.group_goodness not in get_args(GroupGoodness):
            raise FFPipeError(f"config loss.group_goodness: '{cfg.group_goodness}' is not mean_sq or mean")
        self.threshold = 0.0

    def class_scores(self, y: Tensor, inference: bool = True) -> Tensor:
        """[N, num_classes] group goodness G (seed 001 eq. 2); one-pass prediction is argmax of the sum over
        blocks. `inference` drops w when cfg.significance_at_inference is False; the loss uses w always."""
        v = y.float()
        v = self.weighted(v.square() if self.group_goodness == "mean_sq" else v, inference)
        grouped = v.reshape(v.shape[0], self.num_classes, -1)
        # sum, then divide the [N, classes] scores: `mean`'s backward writes a full-size gradient (one more
        # pass over the activity); `sum`'s is a broadcast view that the next backward op reads in place
        return grouped.sum(dim=-1) / grouped.shape[-1]

    def loss(
        self, y_pos: Tensor, y_neg: Tensor | None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if labels is None:
            raise ValueError("group_ce needs the class labels")
        scores = self.class_scores(y_pos, inference=False)
        total = self._add_peer(F.cross_entropy(scores, labels), y_pos)
        with torch.no_grad():
            true = scores.gather(1, labels[:, None]).squeeze(1)
            other = (scores.sum(dim=1) - true) / (self.num_classes - 1)
            acc = (scores.argmax(dim=1) == labels).float().mean()
            stats = torch.stack([total.detach().float(), true.mean(), other.mean(), acc])
        return total, stats


_FAMILIES: dict[str, type[Objective]] = {
    "bce": BCEObjective, "symba": SymbaObjective, "hinge": HingeObjective, "group_ce": GroupCEObjective,
}


def make_objective(cfg: LossConfig, spec: BlockSpec, num_classes: int) -> Objective:
    """The objective of `cfg.family` for the block described by `spec`."""
    if cfg.family not in _FAMILIES:
        raise FFPipeError(f"config loss.family: '{cfg.family}' is not one of {', '.join(FAMILIES)}")
    return _FAMILIES[cfg.family](cfg, spec, num_classes)


class PeerNormalization(nn.Module):
    def __init__(self, units: int, momentum: float):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise FFPipeError(f"config loss.peer_momentum: must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(units))

    def forward(self, y_pos: Tensor) -> Tensor:
        """The unweighted peer loss for the positive-stream activity `y_pos` ([N, U] or [N, C, H, W])."""
        dims = (0, *range(2, y_pos.dim()))
        running = self.running_mean * self.momentum + y_pos.float().mean(dim=dims) * (1.0 - self.momentum)
        if self.training:
            with torch.no_grad():
                self.running_mean.copy_(running)
        return (running.mean() - running).square().mean()
