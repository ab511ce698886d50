"""The terminal: a progress bar, one table per epoch, and the live per-stage table of a pipelined run.

Header and readouts are plain lines rather than table titles and captions, which rich would wrap to the
table's width. Nothing here computes a number: records come from `ffpipe.run.records`, live snapshots from
the stages (`ffpipe.pipeline.control`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ffpipe.run.records import NOT_ACCURACIES

BLOCK_COLUMNS = ("loss", "g_pos", "g_neg", "g_true", "g_other", "acc_pos", "acc_neg", "acc_pair", "acc")
"""Per-block statistics the epoch table shows, in this order, where the loss family reports them."""


def _fmt(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return "nan" if math.isnan(value) else format(value, spec)


READOUT_NAMES = {"goodness": "goodness readout", "goodness_selected": "goodness readout (blocks chosen on val)",
                 "group": "group readout", "group_selected": "group readout (blocks chosen on val)",
                 "linear": "linear head", "bp": "backprop"}
"""The readouts in words, FF's own first (goodness, group), then the trained linear head."""


def final_line(run_dir, steps: int, test: dict) -> str:
    """The sentence a finished run ends with: where it is, and each test accuracy in percent."""
    shown = sorted((name for name, v in test.items() if isinstance(v, float) and name not in NOT_ACCURACIES),
                   key=lambda name: (list(READOUT_NAMES).index(name) if name in READOUT_NAMES else len(READOUT_NAMES)))
    accuracies = ", ".join(f"{READOUT_NAMES.get(name, name)} {100 * test[name]:.1f}%" for name in shown)
    return f"finished {run_dir} after {steps} steps; test accuracy: {accuracies or 'none measured'}"


def _readouts_line(label: str, results: dict) -> str:
    parts = []
    for name, value in results.items():
        if name in NOT_ACCURACIES or name.endswith(("_ranges", "_range")):
            continue
        if isinstance(value, list):
            parts.append(f"{name} [{', '.join(_fmt(v) for v in value)}]")
        else:
            parts.append(f"{name} {_fmt(value)}")
    timing = results.get("infer_ms_per_image") or {}
    if timing:
        parts.append("ms/img " + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in timing.items()))
    if isinstance(results.get("n"), int):
        parts.append(f"n {results['n']}")
    return f"{label}: " + " | ".join(parts)


def epoch_summary(record: dict, epochs: int | None = None) -> Group:
    """One record for the terminal: a header line, a table with one row per block, the readout accuracies.

    Header and readouts are plain lines rather than the table's title and caption, which rich would wrap
    to the table's width. A test record has no header and usually no blocks: it prints as its `test:` line.
    """
    kind = record.get("kind", "epoch")
    parts: list = []
    if kind != "test":
        of = f"/{epochs}" if epochs else ""
        header = (
            f"epoch {record.get('epoch', '?')}{of}  lr {_fmt(record.get('lr'), '.3g')}  "
            f"{_fmt(record.get('wall_s'), '.1f')} s  {_fmt(record.get('samples_per_s'), ',.0f')} samples/s"
        )
        if isinstance(record.get("head_train_acc"), float):
            header += f"  head train acc {_fmt(record['head_train_acc'])}"
        parts.append(Text(header, style="bold"))
    if record.get("blocks"):
        present = [c for c in BLOCK_COLUMNS if any(c in block for block in record["blocks"])]
        table = Table()
        for column in ["block", *present, "samples/s"]:
            table.add_column(column, justify="right")
        for block in record["blocks"]:
            cells = [_fmt(block.get(c), ".3f" if c.startswith("g_") else ".4f") for c in present]
            table.add_row(str(block.get("index", "?")), *cells, _fmt(block.get("samples_per_s"), ",.0f"))
        parts.append(table)
    label = "test" if kind == "test" else "val"
    if record.get(label):
        parts.append(Text(_readouts_line(label, record[label])))
    return Group(*parts)


class TrainView:
    """Live progress bar (loss, accuracy, samples/s) plus one summary table per epoch.

    The bar is drawn only when `enabled` and the console is a terminal. Otherwise (CI logs, redirected
    output, `--quiet`) only the epoch tables are printed, so logs get one table per epoch instead of thousands
    of carriage-return updates.
    """

    def __init__(self, total_steps: int, epochs: int, enabled: bool = True, console: Console | None = None):
        self.console = console if console is not None else Console()
        self.epochs = epochs
        self.live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        if self.live:
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[rate]} samples/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, epoch=0, epochs=epochs, loss="-", acc="-", rate="-"
            )

    def __enter__(self) -> TrainView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, epoch: int, loss: float, acc: float, samples_per_s: float) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task,
            completed=step,
            epoch=epoch,
            loss=_fmt(loss),
            acc=_fmt(acc),
            rate=_fmt(samples_per_s, ",.0f"),
        )

    def epoch_summary(self, record: dict) -> None:
        self.console.print(epoch_summary(record, self.epochs))


class LiveTable:
    """One row per stage, refreshed about once a second from the stages' store snapshots."""

    def __init__(self, read: Callable[[], list[dict | None]], enabled: bool, console: Console):
        self.read = read  # one snapshot per stage, None before its first
        self.console = console  # shared with the epoch summaries, which rich then prints above the live table
        self.enabled = enabled and self.console.is_terminal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _table(self) -> Table:
        """Per stage: its blocks' mean loss and local accuracy (`acc_pair` for pos/neg families, the group
        accuracy `acc` for group_ce)."""
        snaps = self.read()
        acc_name = next((s["acc_name"] for s in snaps if s is not None), "acc_pair")
        table = Table(title="ffpipe pipeline")
        for name in ("stage", "epoch", "step", "samples/s", "idle %", "loss", acc_name.replace("_", " ")):
            table.add_column(name, justify="right")
        for k, snap in enumerate(snaps):
            if snap is None:
                table.add_row(str(k), *["-"] * 6)
                continue
            table.add_row(str(k), str(snap["epoch"]), str(snap["step"]), f"{snap['samples_per_s']:,.0f}",
                          f"{100 * snap['idle']:.1f}", f"{snap['loss']:.4f}", f"{snap['acc']:.3f}")
        return table

    def _run(self) -> None:
        with Live(self._table(), console=self.console, refresh_per_second=2) as live:
            while not self._stop.wait(1.0):
                live.update(self._table())

    def __enter__(self) -> LiveTable:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True, name="ffpipe-live")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
