"""Seconds per BP training step in this process, for throughput comparisons against FF.

The step is the trainer's own `train_step` (forward, cross-entropy, backward, optimizer step) at the global
batch `data.batch_size` with world size 1 and this process's torch threads. Batches are drawn and moved to
the device before the clock starts, so the time is compute only, as when timing `Network.train_step` on
prebuilt packets.
"""

from __future__ import annotations

import time
from itertools import cycle, islice

import torch

from ffpipe.baselines.model import build_bp_model, train_step
from ffpipe.baselines.trainer import autocast_for
from ffpipe.config import Config
from ffpipe.data import epoch_batches, load_for_config
from ffpipe.errors import FFPipeError
from ffpipe.network import resolve_device
from ffpipe.optim import make_optimizer


def bp_step_seconds(cfg: Config, steps: int = 20, warmup: int = 3) -> float:
    """Mean wall seconds of one BP training step over `steps` steps, after `warmup` untimed ones."""
    if steps < 1 or warmup < 0:
        raise FFPipeError(f"timing needs steps >= 1 and warmup >= 0, got steps {steps}, warmup {warmup}")
    device = resolve_device(cfg.train.device)
    dataset = load_for_config(cfg.data)
    drawn = epoch_batches(dataset.train, cfg.data.batch_size, seed=cfg.train.seed, epoch=1, device=device)
    batches = list(islice(drawn, warmup + steps))
    if not batches:
        raise FFPipeError(f"data.batch_size {cfg.data.batch_size} is larger than the training set")
    model = build_bp_model(cfg, dataset.image_shape, dataset.num_classes).to(device)
    forward = torch.compile(model) if cfg.train.compile else model
    o = cfg.optim
    optimizer = make_optimizer(model.parameters(), o.name, o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    autocast = autocast_for(cfg, device)
    work = list(islice(cycle(batches), warmup + steps))
    for x, y in work[:warmup]:
        train_step(forward, optimizer, x, y, autocast)
    _sync(device)
    t0 = time.perf_counter()
    for x, y in work[warmup:]:
        train_step(forward, optimizer, x, y, autocast)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
