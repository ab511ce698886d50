"""Block activations: plain ReLU and loeweX's full-gradient ReLU.

FF's goodness is a sum of squared ReLU outputs. loeweX's Forward-Forward code (`ReLU_full_grad`) keeps the
forward ReLU but passes the incoming gradient through unchanged, as if the unit were linear: the backward of
y = relu(z) is dL/dz = dL/dy. The goodness part of dL/dy is 2y·dL/dg, zero at y = 0 either way; what changes
is the peer-normalization term, which is linear in a unit's mean activity. With the plain ReLU it cannot
reach a unit that is off for the whole batch; with the full-gradient ReLU it raises that unit's
pre-activation until the unit turns on again, so dead units recover. This is a straight-through estimator,
not a paper equation; `model.activation: relu_fullgrad` turns it on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ACTIVATIONS = ("relu", "relu_fullgrad")


class _ReLUFullGrad(torch.autograd.Function):
    """relu forward, identity backward."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        return grad_output


def relu_fullgrad(z: Tensor) -> Tensor:
    """`relu(z)` in the forward pass; the gradient flows to `z` unchanged, also where z < 0."""
    return _ReLUFullGrad.apply(z)


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name == "relu":
        return torch.relu
    if name == "relu_fullgrad":
        return relu_fullgrad
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
