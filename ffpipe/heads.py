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
