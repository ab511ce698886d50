"""The linear readout, split by block, and the readout arithmetic shared by every stage.

Seed 000 §2.3 (after loeweX) trains one linear classifier on the normalized activations of every block but
the first, on the *neutral* stream, with cross-entropy on detached features. A linear map of concatenated
features is a sum of per-block maps, so we split the weight by block: a stage owns the slices of its own
blocks and adds its partial logits to a running `[B, classes]` sum carried in the packet.

- `joint`: every slice gets the gradient of the cross-entropy of the *total* logits, exactly the papers'
  classifier. That gradient w.r.t. the logits, `[B, classes]`, is the only thing that ever flows backward,
  and it only reaches head slices, never an FF block. Our choice: each slice has its own bias; their sum is
  the classifier's bias, so the function class is the papers', only the bias's learning rate is scaled.
- `local`: each slice trains on the cross-entropy of the running sum up to and including itself. No message
  flows backward at all, and every stage boundary gives an early-exit prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_slice(units: int, num_classes: int, index: int, seed: int) -> nn.Linear:
    """A head slice whose init depends only on (seed, block index), like the blocks, so partitions agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + 500_009 + index)
        return nn.Linear(units, num_classes)


class SliceAverage(nn.Module):
    """An exponential moving average of one head slice's weights, used by the linear readout (our choice).

    The head trains with a high rate (loeweX: SGD 1e-2, momentum 0.9), so its weights, and the readout's
    accuracy, jump by about ±2.5 points between steps and seeds. Reading out through an average of the recent
    weights (Polyak averaging) removes that noise without touching training: the slice still learns with its
    own weights, and no FF block sees the average. Debiased like Adam's moments (the average starts at 0 and
    is divided by 1 − decay^t), so even a few steps give an unbiased readout. `decay` = `head.ema_decay`.
    """

    def __init__(self, head: nn.Linear, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("weight", torch.zeros_like(head.weight))
        self.register_buffer("bias", torch.zeros_like(head.bias))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, head: nn.Linear) -> None:
        self.weight.lerp_(head.weight, 1.0 - self.decay)
        self.bias.lerp_(head.bias, 1.0 - self.decay)
        self.steps += 1

    def forward(self, x: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        """The readout's logits: through the average once there is one, through `head` before any step."""
        steps = int(self.steps)  # evaluation only: one host sync per slice and batch
        if steps == 0:
            return head(x)
        return F.linear(x, self.weight, self.bias) / (1.0 - self.decay ** steps)


def joint_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(mean) / d logits = (softmax − onehot) / B: the `joint` head's one backward message."""
    grad = torch.softmax(logits.float(), dim=1)
    grad[torch.arange(len(y), device=y.device), y] -= 1.0
    return grad / len(y)


def head_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def exit_predictions(scores: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """One early-exit prediction row per stage boundary; −1 where no readout block has been seen yet."""
    if scores is None:
        return torch.full((n,), -1, dtype=torch.long, device=device)
    return scores.argmax(dim=1)
