"""`Stage`: a contiguous run of FF blocks, their optimizers and their head slices — the only training code.

The sequential trainer calls every stage of a network one after another in one process; the pipeline worker
calls exactly one stage per process and moves packets over the wire. Both call `Stage.step`, so the pipeline
adds transport and scheduling and nothing else.

A step is `forward` then `update`. `forward` runs every block on the incoming streams and returns the
outgoing packet: normalized, *detached* activations computed with the weights as they were *before* this
step's update, exactly like forward-all-then-step sequential FF. That is what makes a pipelined stage, which
sends its outputs before updating, provably equal to the sequential run. `update` then applies each block's
local loss. Nothing an FF block learns from ever comes from a later block.

Memory (our choice): in `local` mode `forward` runs each block's backward right after that block's forward,
so its autograd graph is freed before the next block runs; only the optimizer step waits for `update`. The
gradients depend only on the block's pre-update weights and its detached input, so this is the same
arithmetic as backward-in-`update`, but a stage holds one block's activations at a time instead of all of
them: the activation-memory advantage of local learning over backprop, which holds every layer's.

Chunk modes (seed 001 §"training routines"): `local` gives every block its own loss with a detached input
(greedy FF); `backprop` lets gradients flow between the blocks *of this stage* against the loss of its last
block ("chunked local update"), and still never across a stage boundary, because the incoming packet is
detached.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.heads import SliceAverage, exit_predictions, head_loss, make_slice
from ffpipe.nn import BlockSpec, build_block, group_rms_norm, make_objective, rms_norm
from ffpipe.optim import lr_at, make_optimizer, set_lr
from ffpipe.packet import Packet, negative_streams


class NonFiniteLoss(FFPipeError):
    """A block's loss became NaN or inf; training stops and the last good checkpoint is kept."""


@dataclass
class Pending:
    """What `forward` leaves for `update`: the live losses (None where there is none, or where the block's
    backward already ran in `forward`), which blocks have gradients waiting, and the time spent per block."""

    losses: list[torch.Tensor | None]
    ready: list[bool]
    head_losses: list[torch.Tensor]
    stats: torch.Tensor
    seconds: list[float]


@dataclass
class StepMetrics:
    stats: torch.Tensor  # [blocks, len(stat_names)] (the objective's `stat_names`), detached
    seconds: list[float]  # compute time per block (forward + update)
    samples: int


@dataclass
class _Meter:
    """Per-epoch sums, read with one sync at epoch end instead of one per step."""

    stats: torch.Tensor | None = None
    seconds: list[float] = field(default_factory=list)
    steps: int = 0
    samples: int = 0

    def add(self, m: StepMetrics) -> None:
        self.stats = m.stats.clone() if self.stats is None else self.stats + m.stats
        self.seconds = [a + b for a, b in zip(self.seconds, m.seconds)] if self.seconds else list(m.seconds)
        self.steps += 1
        self.samples += m.samples


class Stage:
    """Blocks `first..last-1` (global indices) with one optimizer each, their objectives and head slices."""

    def __init__(self, cfg: Config, specs: list[BlockSpec], first: int, last: int, num_classes: int,
                 device: torch.device | str = "cpu"):
        if not 0 <= first < last <= len(specs):
            raise FFPipeError(f"stage blocks {first}..{last - 1} are outside the {len(specs)}-block model")
        self.cfg, self.first, self.last = cfg, first, last
        self.num_blocks = len(specs)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.indices = list(range(first, last))
        self.overlays = cfg.loss.family != "group_ce"
        self.negatives = negative_streams(cfg)
        self.backprop_chunk = cfg.train.chunk_mode == "backprop"
        seed = cfg.train.seed
        self.blocks = nn.ModuleList(build_block(specs[i], seed) for i in self.indices).to(self.device)
        self.objectives = nn.ModuleList(make_objective(cfg.loss, specs[i], num_classes)
                                        for i in self.indices).to(self.device)
        self._forward = [torch.compile(b) if cfg.train.compile else b for b in self.blocks]
        self.trains = [self._block_trains(i) for i in self.indices]
        self.has_loss = [self._block_has_loss(i) for i in self.indices]
        o = cfg.optim
        self.optims = [make_optimizer(b.parameters(), o.name, o.lr, momentum=o.momentum,
                                      weight_decay=o.weight_decay) if t else None
                       for b, t in zip(self.blocks, self.trains)]
        self.sig_optims = [make_optimizer([obj.significance], o.name, cfg.loss.significance_lr, momentum=o.momentum)
                           if obj.significance is not None and t else None
                           for obj, t in zip(self.objectives, self.has_loss)]
        self._readout_all = set(self.readout_indices(cfg, 0, len(specs), len(specs)))
        h = cfg.head
        self.heads: dict[int, nn.Linear] = {}
        self.head_optims: dict[int, torch.optim.Optimizer] = {}
        self.head_averages: dict[int, SliceAverage] = {}
        for i in self.head_indices(cfg, first, last, len(specs)):
            self.heads[i] = make_slice(specs[i].units, num_classes, i, seed).to(self.device)
            if h.ema_decay > 0:
                self.head_averages[i] = SliceAverage(self.heads[i], h.ema_decay)
            self.head_optims[i] = make_optimizer(self.heads[i].parameters(), h.optimizer, h.lr,
                                                 momentum=h.momentum, weight_decay=h.weight_decay)
        self._features: dict[int, list[tuple[int, torch.Tensor]]] = {}
        self._meter = _Meter()
        self._lr = cfg.optim.lr
        self.grad_sync: Callable[[list[torch.Tensor]], None] | None = None

    @staticmethod
    def readout_indices(cfg: Config, first: int, last: int, num_blocks: int) -> list[int]:
        """Blocks `first..last-1` that feed the readouts: all but block 0 when `head.exclude_first`."""
        skip_first = cfg.head.exclude_first and num_blocks > 1
        return [i for i in range(first, last) if not (skip_first and i == 0)]

    @staticmethod
    def head_indices(cfg: Config, first: int, last: int, num_blocks: int) -> list[int]:
        """Blocks that own a linear-head slice (none when `head.mode: none`)."""
        return [] if cfg.head.mode == "none" else Stage.readout_indices(cfg, first, last, num_blocks)

    # -- which block learns what -------------------------------------------------------------------------
    def _block_has_loss(self, index: int) -> bool:
        if index == 0 and self.cfg.loss.exclude_first:
            return False
        return not self.backprop_chunk or index == self.last - 1

    def _block_trains(self, index: int) -> bool:
        if self.backprop_chunk:
            return any(self._block_has_loss(i) for i in range(index, self.last))
        return self._block_has_loss(index)

    # -- helpers -----------------------------------------------------------------------------------------
    def _normalize(self, y: torch.Tensor) -> torch.Tensor:
        eps = self.cfg.model.eps
        if self.cfg.model.norm == "group":
            return group_rms_norm(y, self.num_classes, eps)
        return rms_norm(y, eps)

    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_mode(self, training: bool) -> None:
        self.blocks.train(training)
        self.objectives.train(training)

    @property
    def stat_names(self) -> tuple[str, ...]:
        """The names of a block's training statistics (one loss family per network, see `Objective`)."""
        return self.objectives[0].stat_names

    @property
    def lr(self) -> float:
        """The blocks' current learning rate (one schedule drives them all)."""
        return self._lr

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Set every optimizer's lr for `epoch` (1-indexed): schedules are pure functions of the epoch."""
        o = self.cfg.optim
        groups = [(self.optims, o.lr), (self.sig_optims, self.cfg.loss.significance_lr),
                  (list(self.head_optims.values()), self.cfg.head.lr)]
        self._lr = lr_at(o.schedule, o.lr, epoch, epochs, milestones=o.milestones, gamma=o.gamma)
        for optims, base in groups:
            lr = lr_at(o.schedule, base, epoch, epochs, milestones=o.milestones, gamma=o.gamma)
            for opt in optims:
                if opt is not None:
                    set_lr(opt, lr)

    # -- training ------------------------------------------------------------------------------------------
    def step(self, packet: Packet) -> tuple[Packet, StepMetrics]:
        """One training step: `forward` (outputs computed before the update), then `update`."""
        out, pending = self.forward(packet)
        return out, self.update(pending, packet)

    def forward(self, packet: Packet) -> tuple[Packet, Pending]:
        self._set_mode(True)
        x, logits = packet.x, packet.logits
        labels = None if self.overlays else packet.y
        losses, ready, head_losses, stats, seconds = [], [], [], [], []
        for j, index in enumerate(self.indices):
            t0 = time.perf_counter()
            inp = x if self.backprop_chunk and j > 0 else x.detach()
            with self._autocast():
                y = self._block_forward(j, inp, packet)
            pos = y[packet.rows("pos", self.negatives)]
            neg = y[packet.rows("neg", self.negatives)] if self.overlays else None
            if self.has_loss[j]:
                loss, st = self.objectives[j].loss(pos, neg, labels)
            else:
                with torch.no_grad():
                    loss, st = None, self.objectives[j].loss(pos, neg, labels)[1]
            eager = loss is not None and not self.backprop_chunk
            if eager:
                self._backward([self.optims[j], self.sig_optims[j]], loss.backward)
            losses.append(None if eager else loss)
            ready.append(eager)
            stats.append(st)
            x = self._normalize(y)
            if index in self.heads:
                feats = x[packet.rows("neutral", self.negatives)].detach().flatten(1)
                part = self.heads[index](feats.float())
                if self.cfg.head.mode == "local":
                    running = part if logits is None else logits + part
                    head_losses.append(head_loss(running, packet.y))
                else:
                    self._features.setdefault(packet.step, []).append((index, feats))
                logits = part.detach() if logits is None else logits + part.detach()
            seconds.append(time.perf_counter() - t0)
        out = packet.evolve(x=x.detach(), logits=logits)
        return out, Pending(losses, ready, head_losses, torch.stack(stats).float(), seconds)

    def _block_forward(self, j: int, inp: torch.Tensor, packet: Packet) -> torch.Tensor:
        """Positive and negative rows in one matmul with autograd; the neutral rows, which carry no loss, in a
        second one without: autograd's weight gradient would otherwise run over all 3B stacked rows (of which B
        are zeros). Measured on this CPU for a 1000×1000 block at B = 100, one thread: 12.4 ms vs 13.9 ms per
        step. BatchNorm blocks keep one call, so their batch statistics cover all streams."""
        rows = packet.rows("neutral", self.negatives)
        if not self.overlays or len(inp) == rows.start or self.blocks[j].spec.batchnorm:
            return self._forward[j](inp)
        trained = self._forward[j](inp[: rows.start])
        with torch.no_grad():
            neutral = self._forward[j](inp[rows])
        return torch.cat([trained, neutral])

    def update(self, pending: Pending, packet: Packet) -> StepMetrics:
        if not torch.isfinite(pending.stats).all():
            bad = int((~torch.isfinite(pending.stats)).any(dim=1).nonzero()[0])
            raise NonFiniteLoss(f"non-finite loss in block {self.indices[bad]} at step {packet.step} "
                                f"(epoch {packet.epoch}); the last good checkpoint is kept")
        seconds = list(pending.seconds)
        for j, loss in enumerate(pending.losses):
            if loss is None and not pending.ready[j]:
                continue
            t0 = time.perf_counter()
            chunk = range(len(self.indices)) if self.backprop_chunk else [j]
            optims = [self.optims[k] for k in chunk] + [self.sig_optims[j]]
            if loss is not None:
                self._backward(optims, loss.backward)
            self._apply(optims)
            seconds[j] += time.perf_counter() - t0
        if pending.head_losses:
            self._step_heads(lambda: sum(pending.head_losses).backward())
        metrics = StepMetrics(pending.stats, seconds, packet.n)
        self._meter.add(metrics)
        return metrics

    @staticmethod
    def _backward(optims: list, backward: Callable[[], None]) -> None:
        """zero_grad → backward, for these optimizers' parameters only."""
        for opt in optims:
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        backward()

    def _apply(self, optims: list) -> None:
        """(replicas: average the gradients) → step, for these optimizers only."""
        optims = [opt for opt in optims if opt is not None]
        if self.grad_sync is not None:
            self.grad_sync([p.grad for opt in optims for group in opt.param_groups for p in group["params"]
                            if p.grad is not None])
        for opt in optims:
            opt.step()

    def head_backward(self, step: int, error: torch.Tensor) -> None:
        """Apply the `joint` head's error for `step` to this stage's slices only (never to a block).

        In the pipeline it arrives late, after this stage has run up to P−1−k newer steps; the gradient of a
        linear slice is error ⊗ features and does not depend on the slice's weights, so only the *time* of the
        update is stale, not its value.
        """
        saved = self._features.pop(step, [])
        if saved:
            self._step_heads(lambda: sum((self.heads[i](f.float()) * error).sum() for i, f in saved).backward())

    def _step_heads(self, backward: Callable[[], None]) -> None:
        """One optimizer step of this stage's head slices, then their readout averages."""
        head = list(self.head_optims.values())
        self._backward(head, backward)
        self._apply(head)
        for index, average in self.head_averages.items():
            average.update(self.heads[index])

    def epoch_metrics(self) -> list[dict]:
        """Per-block means over the steps since the last call, then reset."""
        m, self._meter = self._meter, _Meter()
        if not m.steps:
            return []
        means = (m.stats / m.steps).tolist()
        rows = []
        for index, values, secs in zip(self.indices, means, m.seconds):
            row = {"index": index, **dict(zip(self.stat_names, values))}
            row.update(compute_s=secs, samples_per_s=m.samples / secs if secs > 0 else 0.0)
            rows.append(row)
        return rows

    # -- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, packet: Packet) -> Packet:
        """Inference, no updates: add this stage's partial logits / goodness / group scores, record an exit."""
        self._set_mode(False)
        x, logits = packet.x, packet.logits
        n, c = packet.n, self.num_classes
        scored = packet.view == "overlay" or not self.overlays
        per_block = []
        for j, index in enumerate(self.indices):
            with self._autocast():
                y = self._forward[j](x)
            if scored and packet.view == "overlay":
                per_block.append(self.objectives[j].goodness(y, inference=True).float().view(c, n).t())
            elif scored:
                per_block.append(self.objectives[j].class_scores(y).float())
            x = self._normalize(y)
            if packet.view == "plain" and index in self.heads:
                feats = x.flatten(1).float()
                average = self.head_averages.get(index)
                part = average(feats, self.heads[index]) if average is not None else self.heads[index](feats)
                logits = part if logits is None else logits + part
        scores = packet.scores
        if per_block:
            new = torch.stack(per_block)
            scores = new if scores is None else torch.cat([scores, new])
        readout_sum = None
        if scores is not None:
            rows = [i for i in range(len(scores)) if i in self._readout_all]
            readout_sum = scores[rows].sum(dim=0) if rows else None
        exit_from = logits if packet.view == "plain" and logits is not None else readout_sum
        out = packet.evolve(x=x, logits=logits, scores=scores)
        out.exits = packet.add_exit(exit_predictions(exit_from, n, x.device))
        return out

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[int, dict]:
        """Everything this stage owns, keyed by *global* block index, so any partition can load it."""
        state = {}
        for j, index in enumerate(self.indices):
            entry = {"block": self.blocks[j].state_dict(), "objective": self.objectives[j].state_dict()}
            for name, opt in (("optim", self.optims[j]), ("sig_optim", self.sig_optims[j])):
                if opt is not None:
                    entry[name] = opt.state_dict()
            if index in self.heads:
                entry["head"] = self.heads[index].state_dict()
                entry["head_optim"] = self.head_optims[index].state_dict()
                if index in self.head_averages:
                    entry["head_average"] = self.head_averages[index].state_dict()
            state[index] = entry
        return state

    def load_state_dict(self, state: dict[int, dict]) -> None:
        for j, index in enumerate(self.indices):
            if index not in state:
                raise FFPipeError(f"checkpoint has no state for block {index}")
            entry = state[index]
            self.blocks[j].load_state_dict(entry["block"])
            self.objectives[j].load_state_dict(entry["objective"])
            for name, opt in (("optim", self.optims[j]), ("sig_optim", self.sig_optims[j])):
                if opt is not None and name in entry:
                    opt.load_state_dict(entry[name])
            if index in self.heads and "head" in entry:
                self.heads[index].load_state_dict(entry["head"])
                self.head_optims[index].load_state_dict(entry["head_optim"])
                if index in self.head_averages and "head_average" in entry:
                    self.head_averages[index].load_state_dict(entry["head_average"])
