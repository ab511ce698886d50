"""Finishing the readouts at the end of the network, and counting how often each one is right.

The last stage (or the sequential trainer after the last stage) hands every evaluated packet to a `Tally`.
Which readouts a view carries (see `ffpipe.packet`):
- `plain`: the linear head (argmax of the summed slice logits, seed 000 §2.3) and, for group_ce, the group
  readout (argmax of the group goodness summed over blocks, seed 001 one-pass inference);
- `overlay`: the goodness readout (argmax over labels of the goodness summed over blocks, seed 000 eq. 4).
Early exits: one prediction per stage boundary, from the running sums up to that stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ffpipe.config import Config
from ffpipe.metrics import confusion_matrix
from ffpipe.packet import Packet
from ffpipe.plots import save_confusion


def views_for(cfg: Config) -> list[str]:
    readouts = cfg.head.readouts
    views = ["plain"] if {"linear", "group"} & set(readouts) else []
    return views + (["overlay"] if "goodness" in readouts else [])


def readout_blocks(cfg: Config, num_blocks: int) -> list[int]:
    """Blocks whose scores the summed readouts add: all but block 0 when `head.exclude_first` (seed 000 §2.3).
    Always a contiguous range that ends at the last block."""
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


@dataclass
class Tally:
    readouts: list[str]
    readout_blocks: list[int] = field(default_factory=lambda: [0])
    range_correct: dict[str, list[list[int]]] = field(default_factory=dict)
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
        """Score readouts ([blocks, B, C] per-block scores): the accuracy of every contiguous block range
        start..end (DeeperForward's signal integrating and pruning picks one on validation data), each summed
        in block order; the readout itself is the range of the readout blocks (seed 000 eq. 4: every block
        but the first; seed 001's one-pass group inference: all of them)."""
        blocks = len(scores)
        counts = self.range_correct.setdefault(name, [[0] * blocks for _ in range(blocks)])
        for start in range(blocks):
            total = torch.zeros_like(scores[0])
            for end in range(start, blocks):
                total = total + scores[end]
                pred = total.argmax(dim=1)
                counts[start][end] += int((pred == y).sum())
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
        """`{"linear": acc, ..., "exit": [acc or None per stage], "infer_ms_per_image": {...}, "n": N}`."""
        out: dict = {name: self.correct[name] / self.seen[name] for name in self.correct}
        out["exit"] = [c / s if s else None for c, s in zip(self.exit_correct, self.exit_seen)]
        for name, counts in self.range_correct.items():
            n = self.seen[name]
            out[f"{name}_blocks"] = [counts[k][k] / n for k in range(len(counts))]
            out[f"{name}_ranges"] = [[row[end] / n if end >= start else None for end in range(len(row))]
                                     for start, row in enumerate(counts)]
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

    def save_confusion(self, run_dir: Path, class_names: tuple[str, ...]) -> str | None:
        """The primary readout's confusion matrix as JSON + PNG in the run dir; returns that readout's name."""
        name = self.primary()
        if name is not None:
            cm = confusion_matrix(torch.cat(self.labels[name]), torch.cat(self.predictions[name]), len(class_names))
            save_confusion(cm, class_names, run_dir / "confusion.json", run_dir / "confusion.png")
        return name
