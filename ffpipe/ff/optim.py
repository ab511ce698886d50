"""Optimizers and per-epoch learning-rate schedules.

Every FF block and every head slice gets its *own* optimizer instance. FF trains each layer on a local
objective, so nothing couples the optimizers of two blocks; keeping them separate means a pipeline stage
owns all the state of the blocks it holds, and a checkpoint written by one partition of the blocks into
stages can be loaded by any other partition (see `ffpipe.run.checkpoint`).

Schedules are a pure function of the epoch (`lr_at`). The trainer calls `set_lr(opt, lr_at(...))` at the start
of every epoch instead of keeping a `torch.optim.lr_scheduler` object. Because the learning rate is recomputed
from the epoch number alone, there is no scheduler state to checkpoint: resuming at epoch e gives exactly the
learning rate an uninterrupted run would have used, whatever the partition or process layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import get_args

import torch

from ffpipe.config.sections import Optimizer, Schedule
from ffpipe.errors import FFPipeError

OPTIMIZERS = get_args(Optimizer)
SCHEDULES = get_args(Schedule)


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Build one optimizer for one block or head slice.

    `sgd` uses `momentum` and `weight_decay`; `adam` applies `weight_decay` as an L2 term added to the
    gradient (torch `Adam`), `adamw` applies it decoupled from the adaptive step (torch `AdamW`, Loshchilov
    & Hutter). Seed 000 trains with Adam (lr 5e-5); offering the others is our choice, for comparison runs.
    All use torch's fused single-kernel implementations (CPU and CUDA): on this 2-core CPU the step of a
    1000×1000 FF block went from 0.55–0.59 to 0.66–0.73 of the same-size matmul's FLOP/s.
    """
    if lr < 0 or not math.isfinite(lr):
        raise FFPipeError(f"learning rate must be a finite number >= 0 (0 freezes the parameters), got {lr}")
    if weight_decay < 0:
        raise FFPipeError(f"weight_decay must be >= 0, got {weight_decay}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    raise FFPipeError(f"unknown optimizer {name!r} (choose one of {', '.join(OPTIMIZERS)})")


def lr_at(
    schedule: str,
    base_lr: float,
    epoch: int,
    epochs: int,
    *,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    floor: float = 0.0,
) -> float:
    """Learning rate for `epoch` (1-indexed: the epoch about to run) of a run of `epochs` epochs.

    - `constant`: `base_lr`.
    - `cooldown`: seed 000 eq. 3, `lr_e = (2/E) * lr * (1 + E - e)`, in the second half of training only,
      with e counted from 0 as loeweX's `get_linear_cooldown_lr` counts it (its training loop is
      `for epoch in range(E)`, and it cools when `e > E // 2`; seed 000 builds on that code, §2.4). Our
      epochs are 1-indexed, so e = epoch − 1. For even E the rate is `lr` through e = E/2 + 1 and the last
      epoch runs at `4/E * lr`. For odd E ≥ 3 loeweX's formula gives its first cooled epoch (E+1)/E times the
      base rate; we cap it at `lr` (our choice: a cooldown never raises the rate), which is the only place
      the two differ. E = 1 runs at `lr`.
    - `multistep`: `base_lr * gamma ** (number of milestones <= e - 1)`, the value torch `MultiStepLR` gives
      when stepped once at the end of every epoch (its milestones count completed epochs).
    - `cosine`: `base_lr * (f + (1 − f) (1 + cos(pi * (e - 1) / E)) / 2)` with f = `floor`, i.e. torch
      `CosineAnnealingLR` with `T_max = E`, `eta_min = f · base_lr` (DeeperForward anneals to a tenth).
    """
    if epochs < 1:
        raise FFPipeError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= epoch <= epochs:
        raise FFPipeError(f"epoch {epoch} is outside 1..{epochs}")
    if schedule == "constant":
        return base_lr
    if schedule == "cooldown":
        done = epoch - 1  # loeweX's 0-indexed epoch
        if done <= epochs // 2:
            return base_lr
        return min(base_lr, 2.0 / epochs * base_lr * (1 + epochs - done))
    if schedule == "multistep":
        return base_lr * gamma ** sum(1 for m in milestones if m <= epoch - 1)
    if schedule == "cosine":
        return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs)))
    raise FFPipeError(f"unknown lr schedule {schedule!r} (choose one of {', '.join(SCHEDULES)})")


def schedule_of(optim_cfg):
    """`lr_at` for any base rate under `optim_cfg`'s schedule (`ffpipe.config.OptimConfig`); `lr_min` is a
    fraction of `optim.lr`, so head slices and FGFF weights anneal to the same fraction of their own rates."""
    o = optim_cfg
    floor = o.lr_min / o.lr if o.lr > 0 else 0.0
    return lambda base, epoch, epochs: lr_at(o.schedule, base, epoch, epochs, milestones=o.milestones,
                                             gamma=o.gamma, floor=floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (we never use per-group rates)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
