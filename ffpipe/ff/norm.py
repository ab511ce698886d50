"""The normalization between FF blocks: only the orientation of a block's activity reaches the next block.

Hinton (2022) normalizes each hidden layer's activity vector before passing it on, because the next layer must
not be able to read the previous layer's goodness off the vector's length: "the length is used to define the
goodness for that layer and only the orientation is passed to the next layer". Seed 000 eq. 2 writes this as

    y_norm = y / sqrt( (1/N) sum_i y_i^2 )

over all N units of a layer; for a convolutional layer the units are every channel at every position, so the
mean runs over C·H·W (dims 1..end of a sample), not per channel or per position. Subtracting the mean, as
LayerNorm (Ba et al.) does, would change the direction, so this is an RMS norm with no learned gain or bias.

Our choice: `eps` sits inside the square root (`sqrt(mean + eps)`), which keeps the output finite and the
gradient bounded for an all-zero activity (a dead ReLU layer); loeweX adds it outside (`sqrt(mean) + eps`).
Both differ from eq. 2 only when the mean square is of order eps.

Channel-group networks (group_ce) normalize within each class's channel group instead, because each group is
one class's evidence. DeeperForward (its CWConv) passes on `F.group_norm(y, G)`: per sample and group, mean
subtracted and divided by the standard deviation, no affine (`model.norm: group`, exact). `group_rms_norm`
applies the RMS rule per group without subtracting the mean (`group_rms`, our variant).

The network input: `rms` (seed 000 eq. 2), or `layer`, a per-sample LayerNorm over (C, H, W) without affine,
DeeperForward's `F.layer_norm(x, x.shape[1:])` (`model.input_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch.nn.functional as F
from torch import Tensor

from ffpipe.config.sections import Norm
from ffpipe.errors import FFPipeError

NORMS = get_args(Norm)


def rms_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Seed 000 eq. 2 over all of a sample's units (dims 1..end); the output has mean square 1 per sample."""
    dims = tuple(range(1, x.dim()))
    return x * (x.square().mean(dim=dims, keepdim=True) + eps).rsqrt()


def group_rms_norm(x: Tensor, groups: int, eps: float = 1e-8) -> Tensor:
    """`rms_norm` within each of `groups` contiguous channel groups (dim 1 split evenly, spatial dims kept).

    For a conv activity [N, C, H, W] group j holds channels j·C/groups .. (j+1)·C/groups - 1 at every
    position; for a linear activity [N, U] it holds the matching run of units. This is the grouping the
    group_ce objective uses, so each class's group leaves the block with mean square 1.
    """
    if x.dim() < 2 or x.shape[1] % groups != 0:
        raise FFPipeError(f"group normalization needs a channel count divisible by {groups} groups, "
                          f"got activity of shape {tuple(x.shape)}")
    grouped = x.reshape(x.shape[0], groups, -1)
    return (grouped * (grouped.square().mean(dim=-1, keepdim=True) + eps).rsqrt()).reshape(x.shape)


def between_blocks(model_cfg, groups: int) -> Callable[[Tensor], Tensor]:
    """The normalization every block's output gets before the next block, as `model.norm` names it (the group
    norms split into `groups`, the classes): the one place the FF stages, the BP twin and the probes take it
    from. `model_cfg` is an `ffpipe.config.ModelConfig`."""
    kind, eps = model_cfg.norm, model_cfg.eps
    if kind == "rms":
        return lambda x: rms_norm(x, eps)
    if kind == "group":
        return lambda x: F.group_norm(x, groups, eps=eps)
    if kind == "group_rms":
        return lambda x: group_rms_norm(x, groups, eps)
    raise FFPipeError(f"model.norm '{kind}' is not one of {', '.join(NORMS)}")


def network_input(model_cfg) -> Callable[[Tensor], Tensor]:
    """The normalization of the network's input images, as `model.input_norm` names it."""
    if model_cfg.input_norm == "layer":
        return lambda x: F.layer_norm(x, x.shape[1:], eps=model_cfg.eps)
    return lambda x: rms_norm(x, model_cfg.eps)
