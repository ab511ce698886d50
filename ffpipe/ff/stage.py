"""`Stage`: a contiguous run of FF blocks, their optimizers and their head slices — the only training code.

The sequential runner calls every stage of a network one after another in one process; the pipeline worker
calls exactly one stage per process and moves packets over the wire. Both call the same two phases, so the
pipeline adds transport and scheduling and nothing else:

- `compute(packet)`: every block's forward on the incoming streams, and each block's local gradients. It
  returns the outgoing packet, normalized and *detached*, computed with the weights as they were *before*
  this step's update, exactly like forward-all-then-step sequential FF. That is what makes a pipelined
  stage, which sends its outputs before `apply`, provably equal to the sequential run.
- `apply(computed)`: the optimizer steps (blocks, then head slices).
Nothing an FF block learns from ever comes from a later block.

Memory (our choice): in `local` mode `compute` runs each block's backward right after that block's forward,
so its autograd graph is freed before the next block runs: the stage holds one block's activations at a time,
the activation-memory advantage of local learning over backprop, which holds every layer's.

Chunk modes (seed 001 §"training routines"): `local` gives every block its own loss with a detached input
(greedy FF); `backprop` lets gradients flow between the blocks *of this stage* against the loss of its last
block ("chunked local update"), and still never across a stage boundary, because the incoming packet is
detached.

A stage is built from the `Network` (what every stage must agree on, derived once) and a `Recipe` (the five
config sections it reads; never the data, pipeline or run sections). What the stage does not own: time (the
runner passes a `DeviceTimer`, `ffpipe.run.measure`, which the stage gives each block's span of work under the
block's index; the runner decides when to read it), the epoch's bookkeeping (the runner sums the `BlockStep`s),
and replica gradient averaging (the runner passes `average_grads`). It never synchronizes with the host in
`compute` or `apply`: whether a loss went non-finite is kept on the device (`first_bad_step`) and read once an epoch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ffpipe.config import Config, HeadConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import build_block
from ffpipe.ff.head import GradAverage, HeadSlices, exit_predictions, head_loss
from ffpipe.ff.network import Network
from ffpipe.ff.norm import between_blocks
from ffpipe.ff.objectives import make_objective
from ffpipe.ff.optim import make_optimizer, schedule_of, set_lr
from ffpipe.ff.packet import Packet
from ffpipe.ff.shortcuts import join

if TYPE_CHECKING:  # the runner's timer; the algorithm never imports the run loop
    from ffpipe.run.measure import DeviceTimer


class NonFiniteLoss(FFPipeError):
    """A block's loss became NaN or inf; training stops and the last good checkpoint is kept."""


@dataclass
class BlockStep:
    """One block's part of a step: its statistics (detached, in its objective's `stat_names` order) and
    whether its optimizer has gradients to apply."""

    index: int
    stats: torch.Tensor
    trains: bool


@dataclass(frozen=True)
class Recipe:
    """How a stage's blocks train: the five config sections a stage reads. A stage gets these, never the whole
    `Config` (as torchtitan hands each part its sections), so it cannot depend on the data, the pipeline or the
    run directory: where a stage runs is the runner's business, what it is is the `Network`'s."""

    model: ModelConfig  # the norm between blocks
    loss: LossConfig
    optim: OptimConfig
    head: HeadConfig
    train: TrainConfig  # seed, chunk mode, precision, compile

    @classmethod
    def of(cls, cfg: Config) -> Recipe:
        return cls(cfg.model, cfg.loss, cfg.optim, cfg.head, cfg.train)


@dataclass
class Computed:
    """What `compute` returns: the outgoing packet and, per block, what `apply` needs."""

    out: Packet
    blocks: list[BlockStep]
    head_trains: bool


class Stage:
    """Blocks `first..last-1` (global indices) with one optimizer each, their objectives and head slices."""

    def __init__(self, recipe: Recipe, network: Network, first: int, last: int, device: torch.device | str = "cpu",
                 average_grads: GradAverage | None = None):
        """`network`: what the whole network is (`ffpipe.ff.network`), derived once by the model for every
        stage; `recipe`: how this stage trains."""
        specs, num_classes = network.specs, network.num_classes
        if not 0 <= first < last <= len(specs):
            raise FFPipeError(f"stage blocks {first}..{last - 1} are outside the {len(specs)}-block model")
        self.recipe = recipe
        self.first, self.last, self.num_blocks = first, last, len(specs)
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.indices = list(range(first, last))
        self.overlays, self.negatives, self.shortcuts = network.overlays, network.negatives, network.shortcuts
        self.backprop_chunk = recipe.train.chunk_mode == "backprop"
        self.average_grads = average_grads
        self.normalize = between_blocks(recipe.model, num_classes)
        self.blocks = nn.ModuleList(build_block(specs[i], recipe.train.seed) for i in self.indices).to(self.device)
        self.objectives = nn.ModuleList(make_objective(recipe.loss, specs[i], num_classes)
                                        for i in self.indices).to(self.device)
        self._forward = [torch.compile(b) if recipe.train.compile else b for b in self.blocks]
        self.has_loss = [self._block_has_loss(i) for i in self.indices]
        self.trains = [self._block_trains(i) for i in self.indices]
        o = recipe.optim
        self.optims = [make_optimizer(b.parameters(), o.name, o.lr, momentum=o.momentum,
                                      weight_decay=o.weight_decay) if t else None
                       for b, t in zip(self.blocks, self.trains)]
        self.sig_optims = [make_optimizer([obj.significance], o.name, recipe.loss.significance_lr, momentum=o.momentum)
                           if obj.significance is not None and t else None
                           for obj, t in zip(self.objectives, self.has_loss)]
        self.readout = network.readout
        heads = [i for i in self.indices if i in self.readout] if network.heads else []
        self.head = HeadSlices(recipe.head, recipe.train.seed, {i: specs[i].units for i in heads}, num_classes,
                               self.device)
        self.first_bad_step = torch.full((len(self.indices),), -1, dtype=torch.long, device=self.device)
        self._lr = recipe.optim.lr

    # -- which block learns what -------------------------------------------------------------------------
    def _block_has_loss(self, index: int) -> bool:
        if index == 0 and self.recipe.loss.exclude_first:
            return False
        return not self.backprop_chunk or index == self.last - 1

    def _block_trains(self, index: int) -> bool:
        if self.backprop_chunk:
            return any(self._block_has_loss(i) for i in range(index, self.last))
        return self._block_has_loss(index)

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
        o, rate = self.recipe.optim, schedule_of(self.recipe.optim)
        groups = [(self.optims, o.lr), (self.sig_optims, self.recipe.loss.significance_lr),
                  (list(self.head.optims.values()), self.recipe.head.lr)]
        self._lr = rate(o.lr, epoch, epochs)
        for optims, base in groups:
            lr = rate(base, epoch, epochs)
            for opt in optims:
                if opt is not None:
                    set_lr(opt, lr)

    def _autocast(self):
        if self.recipe.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_mode(self, training: bool) -> None:
        self.blocks.train(training)
        self.objectives.train(training)

    # -- training ------------------------------------------------------------------------------------------
    def step(self, packet: Packet, timer: DeviceTimer | None = None) -> Computed:
        """One training step: `compute` (outputs computed before the update), then `apply`."""
        computed = self.compute(packet, timer)
        self.apply(computed, timer)
        return computed

    def compute(self, packet: Packet, timer: DeviceTimer | None = None) -> Computed:
        """Forward through every block and the blocks' and local head's gradients; nothing is updated yet."""
        self._set_mode(True)
        x, logits, carried = packet.x, packet.logits, dict(packet.shortcuts)
        labels = None if self.overlays else packet.y
        steps, chunk_loss, head_losses = [], None, []
        for j, index in enumerate(self.indices):
            t0 = timer.mark() if timer else None
            inp = x if self.backprop_chunk and j > 0 else x.detach()
            self.blocks[j].step = packet.step  # seeds its dropout masks (`ffpipe.ff.blocks.FFBlock`)
            with self._autocast():
                trained, neutral = self._block_forward(j, inp, packet)
            pos, neg = self._streams(trained, packet.n)
            if self.has_loss[j]:
                loss, stats = self.objectives[j].loss(pos, neg, labels)
                if self.backprop_chunk:
                    chunk_loss = loss
                else:
                    self._zero_grad(j)
                    loss.backward()
            else:
                with torch.no_grad():
                    stats = self.objectives[j].loss(pos, neg, labels)[1]
            # local mode: the loss has run its backward and nothing flows between blocks, so the outgoing
            # activity needs no graph (none is built or kept); a backprop chunk keeps it
            y = trained if self.backprop_chunk else trained.detach()
            x = self.normalize(y if neutral is None else torch.cat([y, neutral]))
            if index in self.head:
                feats = x[packet.rows("neutral", self.negatives)].detach().flatten(1)
                part = self.head.train_logits(packet.step, index, feats)
                if not self.head.joint:
                    head_losses.append(head_loss(part if logits is None else logits + part, packet.y))
                logits = part.detach() if logits is None else logits + part.detach()
            x = self._join(index, x, carried)
            steps.append(BlockStep(index, stats, self.trains[j]))
            if timer:
                timer.add(index, t0)
        if chunk_loss is not None:
            t0 = timer.mark() if timer else None
            for j in range(len(self.indices)):
                self._zero_grad(j)
            chunk_loss.backward()
            if timer:
                timer.add(self.indices[-1], t0)
        if head_losses:
            self.head.zero_grad()
            sum(head_losses).backward()
        self._track_non_finite(packet.step, steps)
        return Computed(packet.evolve(x=x.detach(), logits=logits, shortcuts=carried), steps, bool(head_losses))

    def _join(self, index: int, x: torch.Tensor, carried: dict[int, torch.Tensor]) -> torch.Tensor:
        """After block `index`: join the shortcut that ends here, keep the result (detached) if a later block
        joins it, and drop the tensors no later block needs (`ffpipe.ff.shortcuts`)."""
        shortcut = self.shortcuts.incoming(index)
        if shortcut is not None:
            x = join(x, carried[shortcut.src], shortcut.kind)
        if self.shortcuts.is_source(index):
            carried[index] = x.detach()
        for src in self.shortcuts.done_after(index):
            carried.pop(src, None)
        return x

    def _block_forward(self, j: int, inp: torch.Tensor, packet: Packet) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(trained rows, neutral rows or None): the positive and negative rows in one matmul with autograd;
        the neutral rows, which carry no loss, in a second one without: autograd's weight gradient would
        otherwise run over every stacked row (of which B are zeros). Measured on this CPU for a 1000×1000 block
        at B = 100, one thread: 12.4 ms vs 13.9 ms per step. BatchNorm blocks keep one call, so their batch
        statistics cover all streams; their neutral rows then ride at the end of the trained rows."""
        rows = packet.rows("neutral", self.negatives)
        if not self.overlays or len(inp) == rows.start or self.blocks[j].spec.batchnorm:
            return self._forward[j](inp), None
        trained = self._forward[j](inp[: rows.start])
        with torch.no_grad():
            neutral = self._forward[j](inp[rows])
        return trained, neutral

    def _streams(self, trained: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The positive rows and (overlay families) the negative rows of `trained`. Why not `y[rows]`: a
        slice's backward allocates a zero tensor of the whole activity and copies into it, one per slice;
        measured on cnn14 that was 6 ms per full-resolution block and step. A group_ce packet is the positive
        stream alone, so it takes no slice; `split`'s backward is one concatenation."""
        if not self.overlays:
            return (trained if len(trained) == n else trained[:n]), None
        pos, neg, _ = torch.split(trained, [n, self.negatives * n, len(trained) - (1 + self.negatives) * n])
        return pos, neg

    def _zero_grad(self, j: int) -> None:
        for opt in (self.optims[j], self.sig_optims[j]):
            if opt is not None:
                opt.zero_grad(set_to_none=True)

    def _track_non_finite(self, step: int, steps: list[BlockStep]) -> None:
        """Remember, on the device, the first step at which each block's statistics were not finite."""
        bad = ~torch.isfinite(torch.stack([s.stats for s in steps])).all(dim=1)
        fresh = bad & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(fresh, torch.full_like(self.first_bad_step, step), self.first_bad_step)

    def apply(self, computed: Computed, timer: DeviceTimer | None = None) -> None:
        """The optimizer steps of this step: blocks (replicas average their gradients first), then heads."""
        if self.average_grads is not None:
            self.average_grads(self.gradients(computed))
        for j, block in enumerate(computed.blocks):
            if not block.trains:
                continue
            t0 = timer.mark() if timer else None
            for opt in (self.optims[j], self.sig_optims[j]):
                if opt is not None:
                    opt.step()
            if timer:
                timer.add(block.index, t0)
        if computed.head_trains:
            self.head.step()

    def gradients(self, computed: Computed) -> list[torch.Tensor]:
        """Every gradient `compute` left for `apply`, in a fixed order (what replicas average)."""
        grads = [p.grad for j, block in enumerate(computed.blocks) if block.trains
                 for opt in (self.optims[j], self.sig_optims[j]) if opt is not None
                 for group in opt.param_groups for p in group["params"] if p.grad is not None]
        return grads + (self.head.gradients() if computed.head_trains else [])

    def apply_head_error(self, step: int, error: torch.Tensor) -> None:
        """The `joint` head's error for `step`, applied to this stage's slices (see `HeadSlices`)."""
        self.head.apply_error(step, error, self.average_grads)

    def check_finite(self, epoch: int) -> None:
        """Raise `NonFiniteLoss` naming the first block whose loss went non-finite (one host sync an epoch)."""
        bad = self.first_bad_step.tolist()
        hits = [(step, self.indices[j]) for j, step in enumerate(bad) if step >= 0]
        if hits:
            step, index = min(hits)
            raise NonFiniteLoss(f"non-finite loss in block {index} at step {step} (epoch {epoch}); the last good "
                                "checkpoint is kept")

    # -- inference ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, packet: Packet) -> Packet:
        """Inference, no updates: add this stage's partial logits and per-block scores (goodness per label
        for the overlay view, group goodness for group_ce), and record an exit."""
        self._set_mode(False)
        x, logits, carried = packet.x, packet.logits, dict(packet.shortcuts)
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
            x = self.normalize(y)
            if packet.view == "plain" and index in self.head:
                part = self.head.readout_logits(index, x.flatten(1))
                logits = part if logits is None else logits + part
            x = self._join(index, x, carried)
        scores = packet.scores
        if per_block:
            new = torch.stack(per_block)
            scores = new if scores is None else torch.cat([scores, new])
        summed = None
        if scores is not None:
            rows = [i for i in range(len(scores)) if i in self.readout]
            summed = scores[rows].sum(dim=0) if rows else None
        exit_from = logits if packet.view == "plain" and logits is not None else summed
        out = packet.evolve(x=x, logits=logits, scores=scores, shortcuts=carried)
        out.exits = packet.add_exit(exit_predictions(exit_from, n, x.device))
        return out

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's normalized output for network input `x` (a one-stage network), in eval mode: what the
        head reads, and what class activation maps and t-SNE look at (`ffpipe.lab.analysis`)."""
        self._set_mode(False)
        outputs, carried = [], {}
        for j, index in enumerate(self.indices):
            with self._autocast():
                x = self.normalize(self._forward[j](x))
            outputs.append(x)
            x = self._join(index, x, carried)
        return outputs

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[int, dict]:
        """Everything this stage owns, keyed by *global* block index, so any partition can load it."""
        state = {}
        for j, index in enumerate(self.indices):
            entry = {"block": self.blocks[j].state_dict(), "objective": self.objectives[j].state_dict()}
            for name, opt in (("optim", self.optims[j]), ("sig_optim", self.sig_optims[j])):
                if opt is not None:
                    entry[name] = opt.state_dict()
            if index in self.head:
                entry.update(self.head.state(index))
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
            if index in self.head:
                self.head.load_state(index, entry)
