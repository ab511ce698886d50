"""The linear head, split by block, and the readouts: how an FF network's answer is read and counted.

Seed 000 §2.3 (after loeweX) trains one linear classifier on the normalized activations of every block but
the first, on the *neutral* stream, with cross-entropy on detached features. A linear map of concatenated
features is a sum of per-block maps, so we split the weight by block: a stage owns the slices of its own
blocks (`HeadSlices`) and adds its partial logits to a running `[B, classes]` sum carried in the packet.

- `joint`: every slice gets the gradient of the cross-entropy of the *total* logits, exactly the papers'
  classifier. That gradient w.r.t. the logits, `[B, classes]` (`joint_error`), is the only thing that ever
  flows backward, and it only reaches head slices, never an FF block; `HeadSlices` keeps each step's features
  until its error arrives (`ffpipe.pipeline.head_channel` says when that is in a pipeline). Our choice: each
  slice has its own bias; their sum is the classifier's bias, so the function class is the papers', only the
  bias's learning rate is scaled.
- `local`: each slice trains on the cross-entropy of the running sum up to and including itself. No message
  flows backward at all, and every stage boundary gives an early-exit prediction.

Readouts (`Tally`, at the end of the network). Which readouts a packet view carries (see `ffpipe.ff.packet`):
- `plain`: the linear head (argmax of the summed slice logits) and, for group_ce, the group readout (argmax
  of the group goodness summed over blocks, seed 001 one-pass inference);
- `overlay`: the goodness readout (argmax over labels of the goodness summed over blocks, seed 000 eq. 4).
Score readouts carry one score table per block, so the tally also reports every block's own accuracy and
every contiguous block range's (DeeperForward's signal integrating and pruning picks a range on validation
data, `select_range`). Early exits: one prediction per stage boundary, from the running sums up to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ffpipe.config import Config, HeadConfig
from ffpipe.ff.optim import make_optimizer
from ffpipe.ff.packet import Packet

GradAverage = Callable[[list[torch.Tensor]], None]


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


class HeadSlices:
    """The head slices of one stage's blocks (global indices), with one optimizer each and, if configured,
    their readout averages; and, in `joint` mode, each step's features until that step's error arrives."""

    def __init__(self, h: HeadConfig, seed: int, units: dict[int, int], num_classes: int, device: torch.device):
        self.joint = h.mode == "joint"
        self.slices = {i: make_slice(u, num_classes, i, seed).to(device) for i, u in units.items()}
        self.optims = {i: make_optimizer(s.parameters(), h.optimizer, h.lr, momentum=h.momentum,
                                         weight_decay=h.weight_decay) for i, s in self.slices.items()}
        self.averages = {i: SliceAverage(s, h.ema_decay) for i, s in self.slices.items()} if h.ema_decay > 0 else {}
        self._features: dict[int, list[tuple[int, torch.Tensor]]] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.slices

    def train_logits(self, step: int, index: int, feats: torch.Tensor) -> torch.Tensor:
        """The slice's logits on detached features, with autograd; `joint` keeps the features for the error."""
        if self.joint:
            self._features.setdefault(step, []).append((index, feats))
        return self.slices[index](feats.float())

    def readout_logits(self, index: int, feats: torch.Tensor) -> torch.Tensor:
        average = self.averages.get(index)
        return average(feats.float(), self.slices[index]) if average is not None else self.slices[index](feats.float())

    def zero_grad(self) -> None:
        for opt in self.optims.values():
            opt.zero_grad(set_to_none=True)

    def gradients(self) -> list[torch.Tensor]:
        return [p.grad for s in self.slices.values() for p in s.parameters() if p.grad is not None]

    def step(self) -> None:
        """One optimizer step of every slice that has a gradient, then the readout averages."""
        for index, opt in self.optims.items():
            opt.step()
            if index in self.averages:
                self.averages[index].update(self.slices[index])

    def apply_error(self, step: int, error: torch.Tensor, average: GradAverage | None = None) -> None:
        """Apply the `joint` head's error for `step` to the slices only (never to a block). The gradient of a
        linear slice is error ⊗ features and does not depend on the slice's weights, so an error that arrives
        after newer steps (in a pipeline) is late, not wrong."""
        saved = self._features.pop(step, [])
        if not saved:
            return
        self.zero_grad()
        sum((self.slices[i](f.float()) * error).sum() for i, f in saved).backward()
        if average is not None:
            average(self.gradients())
        self.step()

    def state(self, index: int) -> dict:
        entry = {"head": self.slices[index].state_dict(), "head_optim": self.optims[index].state_dict()}
        if index in self.averages:
            entry["head_average"] = self.averages[index].state_dict()
        return entry

    def load_state(self, index: int, entry: dict) -> None:
        if "head" in entry:
            self.slices[index].load_state_dict(entry["head"])
            self.optims[index].load_state_dict(entry["head_optim"])
        if index in self.averages and "head_average" in entry:
            self.averages[index].load_state_dict(entry["head_average"])


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


def views_for(cfg: Config) -> list[str]:
    readouts = cfg.head.readouts
    views = ["plain"] if {"linear", "group"} & set(readouts) else []
    return views + (["overlay"] if "goodness" in readouts else [])


def readout_blocks(cfg: Config, num_blocks: int) -> list[int]:
    """Blocks whose scores the summed readouts add, and that own head slices: all but block 0 when
    `head.exclude_first` (seed 000 §2.3). Always a contiguous range that ends at the last block."""
    skip_first = cfg.head.exclude_first and num_blocks > 1
    return [i for i in range(num_blocks) if not (skip_first and i == 0)]


def select_range(ranges: list[list[float | None]]) -> tuple[int, int]:
    """The block range (start, end) with the best accuracy in a `*_ranges` table (of validation data); ties go
    to the longer range, then to the earlier start (more blocks' evidence, less tuning to the split)."""
    cells = [(acc, end - start, -start, start, end) for start, row in enumerate(ranges)
             for end, acc in enumerate(row) if acc is not None]
    _, _, _, start, end = max(cells)
    return start, end


def with_selected_ranges(test: dict, val: dict | None) -> dict:
    """`test` plus, per score readout, the accuracy of the range that validation chose (`<name>_selected`)
    and that range (`<name>_selected_range`, [start, end])."""
    out = dict(test)
    for key, ranges in test.items():
        if key.endswith("_ranges") and val and key in val:
            name = key[: -len("_ranges")]
            start, end = select_range(val[key])
            out[f"{name}_selected"] = ranges[start][end]
            out[f"{name}_selected_range"] = [start, end]
    return out


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 `[C, C]` counts; row = true class, column = predicted class."""
    y_true, y_pred = y_true.reshape(-1).long().cpu(), y_pred.reshape(-1).long().cpu()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.numel()} labels but y_pred has {y_pred.numel()}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    counts = torch.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


@dataclass
class Tally:
    """Counts of right answers per readout over a split, kept on the device until `result()`."""

    readouts: list[str]
    readout_blocks: list[int] = field(default_factory=lambda: [0])
    range_correct: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    exit_correct: list[int] = field(default_factory=list)
    exit_seen: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    labels: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def _count(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> None:
        self.correct[name] = self.correct.get(name, 0) + int((pred == y).sum())
        self.seen[name] = self.seen.get(name, 0) + len(y)
        self.predictions.setdefault(name, []).append(pred.cpu())
        self.labels.setdefault(name, []).append(y.cpu())

    def _count_ranges(self, name: str, scores: torch.Tensor, y: torch.Tensor) -> None:
        """Per-block scores [blocks, B, C]: the right answers of every contiguous block range start..end, each
        summed in block order; the readout itself is the range of the readout blocks."""
        blocks = len(scores)
        counts = self.range_correct.setdefault(name, torch.zeros(blocks, blocks, dtype=torch.long,
                                                                   device=scores.device))
        for start in range(blocks):
            total = torch.zeros_like(scores[0])
            for end in range(start, blocks):
                total = total + scores[end]
                pred = total.argmax(dim=1)
                counts[start, end] += (pred == y).sum()
                if start == self.readout_blocks[0] and end == blocks - 1:
                    self._count(name, pred, y)

    def add(self, packet: Packet) -> None:
        y = packet.y
        if packet.view == "overlay":
            self._count_ranges("goodness", packet.scores, y)
        else:
            if "linear" in self.readouts and packet.logits is not None:
                self._count("linear", packet.logits.argmax(dim=1), y)
            if "group" in self.readouts and packet.scores is not None:
                self._count_ranges("group", packet.scores, y)
        if packet.exits is not None and packet.view == self.exit_view:
            self._add_exits(packet.exits, y)

    @property
    def exit_view(self) -> str:
        """Early exits come from the linear/group pass when there is one, else from the goodness pass."""
        return "plain" if {"linear", "group"} & set(self.readouts) else "overlay"

    def _add_exits(self, exits: torch.Tensor, y: torch.Tensor) -> None:
        while len(self.exit_correct) < len(exits):
            self.exit_correct.append(0)
            self.exit_seen.append(0)
        for k, row in enumerate(exits):
            if bool((row >= 0).all()):
                self.exit_correct[k] += int((row == y).sum())
                self.exit_seen[k] += len(y)

    def add_time(self, view: str, seconds: float) -> None:
        self.seconds[view] = self.seconds.get(view, 0.0) + seconds

    def result(self) -> dict:
        """`{"linear": acc, ..., "exit": [acc or None per stage], "<score>_blocks": [acc per block],
        "<score>_ranges": [[acc of blocks start..end or None]], "infer_ms_per_image": {...}, "n": N}`."""
        out: dict = {name: self.correct[name] / self.seen[name] for name in self.correct}
        out["exit"] = [c / s if s else None for c, s in zip(self.exit_correct, self.exit_seen)]
        for name, counts in self.range_correct.items():
            n, table = self.seen[name], counts.tolist()
            out[f"{name}_blocks"] = [table[k][k] / n for k in range(len(table))]
            out[f"{name}_ranges"] = [[row[end] / n if end >= start else None for end in range(len(row))]
                                     for start, row in enumerate(table)]
        timing = {}
        for name in self.correct:
            view = "overlay" if name == "goodness" else "plain"
            if view in self.seconds:
                timing[name] = 1000.0 * self.seconds[view] / self.seen[name]
        out["infer_ms_per_image"] = timing
        out["n"] = max(self.seen.values(), default=0)
        return out

    def primary(self) -> str | None:
        for name in ("linear", "group", "goodness"):
            if name in self.correct:
                return name
        return None

    def confusion(self, num_classes: int) -> tuple[str, torch.Tensor] | None:
        """The primary readout's name and confusion matrix (rows = true class), if there is one."""
        name = self.primary()
        if name is None:
            return None
        return name, confusion_matrix(torch.cat(self.labels[name]), torch.cat(self.predictions[name]), num_classes)
