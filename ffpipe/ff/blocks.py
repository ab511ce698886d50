"""FF blocks: one trainable layer each (linear or conv), described by a frozen `BlockSpec`.

A block maps the (normalized) output of the previous block to its activity y, post activation and pooling,
before normalization; the goodness objectives (`ffpipe.ff.objectives`) read y, the Stage normalizes y
(`ffpipe.ff.norm`) before the next block. The Stage runs the positive, negative and neutral streams through a
block as one concatenated batch [3B, ...] (one large matmul is faster than three small ones), so every op here
treats samples independently, with one exception: BatchNorm, whose training-mode statistics are taken over the
whole concatenated batch, positive, negative and neutral samples together. Nothing here detaches; the Stage
decides where the gradient stops.

Block order, conv: [BatchNorm] -> conv -> activation -> [max-pool]. Seed 001 (§III, the FF_deep model, after
Dooms et al.'s Trifecta) puts the batch norm *before* the convolution, on the block's input ("a batch
normalization layer, followed by the convolution layer, a ReLU activation function, and an optional maxpool
layer"), and so do we; with it off the block is seed 000's conv -> ReLU. A linear block flattens its input
first, so a linear block can follow a conv block.

Weights depend only on (seed, block index): `build_block` draws them from a CPU generator seeded by a hash of
the pair, so splitting the same model into different pipeline stages, or building one block alone on a
worker, gives bitwise the same initial weights.

Activations: Block activations: plain ReLU and loeweX's full-gradient ReLU.

FF's goodness is a sum of squared ReLU outputs. loeweX's Forward-Forward code (`ReLU_full_grad`) keeps the
forward ReLU but passes the incoming gradient through unchanged, as if the unit were linear: the backward of
y = relu(z) is dL/dz = dL/dy. The goodness part of dL/dy is 2y·dL/dg, zero at y = 0 either way; what changes
is the peer-normalization term, which is linear in a unit's mean activity. With the plain ReLU it cannot
reach a unit that is off for the whole batch; with the full-gradient ReLU it raises that unit's
pre-activation until the unit turns on again, so dead units recover. This is a straight-through estimator,
not a paper equation; `model.activation: relu_fullgrad` turns it on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffpipe.config.sections import Activation, Init, ModelType, Padding
from ffpipe.errors import FFPipeError
from ffpipe.ff.shortcuts import Shortcut, ShortcutPlan, joined_shape, parse_shortcuts

KINDS = get_args(ModelType)
PADDINGS = get_args(Padding)
INITS = get_args(Init)


@dataclass(frozen=True)
class BlockSpec:
    """Everything that defines one block's shape and parameters; validated on construction.

    `in_shape` is the shape of one input sample: (features,) or (C, H, W); a linear block flattens a
    (C, H, W) input. `in_pool` > 0 average-pools the input first (DeeperForward's TinyCNN); `padding` "same"
    pads kernel // 2 (odd kernels only, so stride 1 keeps H and W); `pool` > 0 max-pools with kernel = stride
    = pool after the activation; `dropout` follows the activation in training (DeeperForward's CWConv).
    """

    index: int
    kind: str
    in_shape: tuple[int, ...]
    out: int
    kernel: int = 3
    stride: int = 1
    padding: str = "same"
    pool: int = 0
    batchnorm: bool = False
    activation: str = "relu"
    init: str = "default"
    preact_norm: str = "none"
    in_pool: int = 0
    dropout: float = 0.0
    bias: bool = True
    shortcut: Shortcut | None = None  # the shortcut that ends at this block (parsed once, in `block_specs`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        choices = (("kind", self.kind, KINDS), ("padding", self.padding, PADDINGS),
                   ("activation", self.activation, ACTIVATIONS), ("init", self.init, INITS))
        for name, value, allowed in choices:
            if value not in allowed:
                raise self._error(f"{name} '{value}' is not one of {', '.join(allowed)}")
        if min(self.out, self.kernel, self.stride, *self.in_shape) < 1 or min(self.pool, self.in_pool) < 0:
            raise self._error(f"sizes must be positive (in_shape {self.in_shape}, out {self.out}, "
                              f"kernel {self.kernel}, stride {self.stride}, pool {self.pool})")
        if self.kind == "conv" and len(self.in_shape) != 3:
            raise self._error(f"a conv block needs a (C, H, W) input, got {self.in_shape}")
        if self.kind == "conv" and self.padding == "same" and self.kernel % 2 == 0:
            raise self._error(f"padding 'same' needs an odd kernel, got {self.kernel}; use padding valid")
        if self.kind == "linear" and (self.pool or self.in_pool):
            raise self._error("pooling needs a conv block")
        _ = self.out_shape  # computing the shape is the check that the spec is realizable

    def _error(self, message: str) -> FFPipeError:
        return FFPipeError(f"model block {self.index}: {message}")

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding == "same" else 0

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def conv_in(self) -> tuple[int, int, int]:
        """The convolution's input shape: `in_shape` after the input pooling."""
        c, h, w = self.in_shape
        return (c, h // self.in_pool, w // self.in_pool) if self.in_pool else (c, h, w)

    @property
    def conv_hw(self) -> tuple[int, int]:
        """Spatial size after the convolution, before pooling."""
        _, h, w = self.conv_in
        return ((h + 2 * self.pad - self.kernel) // self.stride + 1,
                (w + 2 * self.pad - self.kernel) // self.stride + 1)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out,)
        h, w = self.conv_hw
        if min(h, w) < 1:
            raise self._error(f"a {self.kernel}x{self.kernel} {self.padding} conv with stride {self.stride} "
                              f"leaves nothing of a {self.in_shape[1]}x{self.in_shape[2]} input; use fewer "
                              "blocks, a smaller kernel, padding same or less pooling")
        if self.pool:
            h, w = h // self.pool, w // self.pool
            if min(h, w) < 1:
                raise self._error(f"max-pool {self.pool} leaves nothing of a {self.conv_hw[0]}x"
                                  f"{self.conv_hw[1]} map; use less pooling or fewer blocks")
        return (self.out, h, w)

    @property
    def units(self) -> int:
        """Number of units the goodness sums over: out for linear, C·H·W (after pooling) for conv."""
        return math.prod(self.out_shape)

    def flops(self) -> int:
        """Forward FLOPs per sample of the layer's matmul/conv: 2 x multiply-adds.

        linear: 2 · in_features · out.  conv: 2 · C_in · k² · C_out · H_conv · W_conv (output before pooling).
        Bias, BatchNorm, activation, pooling, normalization and goodness are O(units) and left out; they are
        a factor fan_in smaller. A training step costs about 3x this (forward, grad wrt input, grad wrt
        weight; the first block of a stage needs no grad wrt input, which this does not model).
        """
        if self.kind == "linear":
            return 2 * self.in_features * self.out
        h, w = self.conv_hw
        return 2 * self.conv_in[0] * self.kernel * self.kernel * self.out * h * w


class FFBlock(nn.Module):
    """One FF layer: [BatchNorm] -> linear/conv -> activation -> [dropout] -> [max-pool]; returns y, unnormalized.

    Dropout masks come from a generator seeded by (run seed, block index, `step`), never from the process's
    global RNG (our choice): the global RNG's stream depends on which blocks share a process, so a pipelined
    run would draw other masks than the sequential one and lose the bitwise equivalence; and a resumed run
    draws the masks it would have drawn. The stage sets `step` to the packet's step before each training
    forward. A mask is a function of (seed, step) and the tensor's size only, so the neutral rows' separate
    no-grad pass (`Stage._block_forward`) draws the leading rows of the trained pass's mask: a neutral row
    shares its positive's mask.
    """

    def __init__(self, spec: BlockSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        self.dropout_seed = block_seed(seed, spec.index)
        self.step = 0
        self.act = get_activation(spec.activation)
        if spec.kind == "linear":
            self.bn = nn.BatchNorm1d(spec.in_features) if spec.batchnorm else None
            self.layer: nn.Module = nn.Linear(spec.in_features, spec.out, bias=spec.bias)
        else:
            self.bn = nn.BatchNorm2d(spec.in_shape[0]) if spec.batchnorm else None
            self.layer = nn.Conv2d(spec.in_shape[0], spec.out, spec.kernel, spec.stride, spec.pad, bias=spec.bias)
        if spec.init == "loewe":
            _loewe_init(self.layer)
        elif spec.init == "kaiming":  # DeeperForward's CWConv: normal, fan_out, for ReLU
            nn.init.kaiming_normal_(self.layer.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if self.spec.kind == "linear":
            x = x.flatten(1)
        if self.spec.in_pool:
            x = F.avg_pool2d(x, self.spec.in_pool)
        if self.bn is not None:
            x = self.bn(x)
        z = self.layer(x)
        if self.spec.preact_norm == "layer":
            z = F.layer_norm(z, z.shape[1:])
        y = self.act(z)
        if self.spec.dropout and self.training:
            y = y * dropout_mask(y, self.spec.dropout, self.dropout_seed, self.step)
        if self.spec.pool:
            y = F.max_pool2d(y, self.spec.pool)
        return y

    def extra_repr(self) -> str:
        return f"index={self.spec.index}, out_shape={self.spec.out_shape}"


def _loewe_init(layer: nn.Module) -> None:
    """loeweX's init: weight ~ normal(0, 1/sqrt(fan_out)), bias 0.

    loeweX (linear layers only) uses std 1/sqrt(weight.shape[0]) = 1/sqrt(out_features). For conv we take
    PyTorch's fan_out = C_out·k² (our choice): with a unit-RMS input the pre-activation variance is then
    fan_in/fan_out = C_in/C_out, about 1 as in the linear case; 1/sqrt(C_out) alone would scale it by k².
    """
    fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)[1]
    nn.init.normal_(layer.weight, mean=0.0, std=1.0 / math.sqrt(fan_out))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def dropout_mask(y: Tensor, p: float, seed: int, step: int) -> Tensor:
    """Inverted-dropout mask (0 or 1/keep) shaped like y, a function of (seed, step) and y's size only.

    On the CPU (our choice, for speed): one 16-bit uniform per element, cut from a numpy SFC64 stream seeded by
    (seed, step); an element is dropped when its draw falls below round(p·2^16), so p is realized to within
    2^-17 and the scale 1/keep uses the realized keep probability (the mask's mean is exactly 1 in expectation).
    torch's `bernoulli_` draws one mt19937 double per element: measured at 1 thread for a 128x20x28x28 mask,
    22.6 ms against 3.4 ms for this, about as long as the block's convolution. The stream is sequential, so a
    mask's leading elements do not depend on its size (the neutral rows' pass relies on this, see `FFBlock`).
    On an accelerator, `bernoulli_` from a generator on that device, seeded the same way: fast there, and
    never a host-to-device copy in the step.
    """
    if y.device.type != "cpu":
        generator = torch.Generator(device=y.device)
        generator.manual_seed((seed + 1_000_003 * step) % (1 << 63))
        return torch.empty_like(y).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    n, drop_below = y.numel(), round(p * 65536)
    raw = np.random.SFC64(np.random.SeedSequence([seed, step])).random_raw((n + 3) // 4)
    keep = torch.from_numpy(raw.view(np.int16)[:n] >= drop_below - 32768)
    return keep.view(torch.uint8).to(y.dtype).mul_(65536 / (65536 - drop_below)).view(y.shape)


def block_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends on (seed, index) only, decorrelated across neighbouring values."""
    digest = hashlib.sha256(f"ffpipe.block:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_block(spec: BlockSpec, seed: int) -> FFBlock:
    """Build a block on the CPU with weights drawn from `block_seed(seed, spec.index)`.

    The global CPU generator is forked, so building a block neither depends on nor disturbs any other random
    state (CUDA generators are not touched; move the block to its device afterwards).
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(block_seed(seed, spec.index))
        return FFBlock(spec, seed)


def build_blocks(specs: list[BlockSpec], seed: int) -> list[FFBlock]:
    return [build_block(spec, seed) for spec in specs]


def block_specs(model_cfg, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """Expand `ffpipe.config.ModelConfig` into one spec per block, chaining each block's in_shape to the
    previous block's output as the next block reads it: its out_shape, joined with a shortcut that ends there
    (`ffpipe.ff.shortcuts`). The first block's in_shape is the image shape (C, H, W); a linear block flattens
    it. An impossible shape (a valid conv or a pool shrinking the map to nothing, a shortcut that does not
    fit) is one FFPipeError line.
    """
    per = {name: model_cfg.per_block(name) for name in ("width", "kernel", "pool", "stride", "in_pool")}
    plan = ShortcutPlan(tuple(parse_shortcuts(model_cfg.shortcuts, model_cfg.depth)))  # carried by the specs
    specs: list[BlockSpec] = []
    shape, read = tuple(input_shape), {}
    for i in range(model_cfg.depth):
        common = dict(index=i, kind=model_cfg.type, in_shape=shape, out=per["width"][i],
                      batchnorm=model_cfg.batchnorm, activation=model_cfg.activation, init=model_cfg.init,
                      preact_norm=model_cfg.preact_norm, dropout=model_cfg.dropout, bias=model_cfg.bias,
                      shortcut=plan.incoming(i))
        if model_cfg.type == "conv":
            spec = BlockSpec(**common, kernel=per["kernel"][i], stride=per["stride"][i], padding=model_cfg.padding,
                             pool=per["pool"][i], in_pool=per["in_pool"][i])
        else:
            spec = BlockSpec(**common)
        specs.append(spec)
        shape = spec.out_shape
        shortcut = plan.incoming(i)
        if shortcut is not None:
            shape = joined_shape(shape, read[shortcut.src], shortcut)
        read[i] = shape
    return specs


ACTIVATIONS = get_args(Activation)


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
