"""Run records (`RUN/metrics.jsonl`) and the live terminal view.

One JSON object per line, one line per epoch, appended and fsynced as soon as the epoch ends, so a crash
loses at most the epoch in flight and the file is readable while the run goes on (`tail -f`, `jq`):

    {"epoch": 3, "step": 1500, "lr": 0.001, "wall_s": 12.3, "train_s": 10.1, "samples_per_s": 4950.0,
     "blocks": [{"index": 0, "loss": 0.61, "g_pos": 1.2, "g_neg": 0.8, "acc_pos": 0.7, "acc_neg": 0.65,
                 "acc_pair": 0.81, "compute_s": 3.2, "samples_per_s": 15000.0}, ...],
     "val": {"linear": 0.85, "goodness": 0.83, "exit": [0.7, 0.85],
             "infer_ms_per_image": {"linear": 0.02, "goodness": 0.1}}}

`val` is absent on epochs without evaluation. A final record may carry `"kind": "test"` and a `test` object
of the same shape as `val`. Per block, `g_pos`/`g_neg` are the mean goodness of positive/negative samples,
`acc_pos`/`acc_neg` the fraction of them on the right side of the threshold (threshold families only) and
`acc_pair` the fraction of images whose positive goodness beats their negative's; group_ce blocks report
`g_true`, `g_other` and their class accuracy `acc` instead (`ffpipe.nn.objective`). The trainer computes
them, this module only stores and shows them.

Memory (`MemoryMeter`): every trainer records `peak_memory_bytes` and `train_memory_bytes` of its process in
its epoch records. On the CPU the peak resident set includes the ~300 MB torch runtime every process carries,
which swamps the activations a method holds, so the training figure subtracts what the process held just
before its first training step (after data load and model build).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ffpipe.errors import FFPipeError

BLOCK_COLUMNS = ("loss", "g_pos", "g_neg", "g_true", "g_other", "acc_pos", "acc_neg", "acc_pair", "acc")
"""Per-block statistics the epoch table shows, in this order, where the loss family reports them."""
NOT_ACCURACIES = ("n", "infer_ms_per_image")
"""Keys of a `val`/`test` object that are not readout accuracies (sample count, per-readout timing)."""


def current_rss_bytes() -> int:
    """This process's resident set size now: `/proc/self/statm`'s second field (pages) x the page size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (high-water mark).

    Linux: VmHWM of `/proc/self/status`, the high-water mark of this process's own address space. Not
    `ru_maxrss`: at exec Linux folds the *parent's* high-water mark into the child's ru_maxrss, so a 13 MB
    Python started by a 600 MB parent reports 614 MB (measured), and every torchrun worker would report at
    least its launcher's torch runtime. Elsewhere `ru_maxrss` is all there is (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0: "5" to /proc/self/clear_refs,
    which touches nothing else); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak and training memory of this process, from the moment it is made: make it just before the first
    training step, after the data is loaded and the model built.

    CPU (our choice): `peak_memory_bytes` is the process's lifetime peak RSS, runtime and data included;
    `train_memory_bytes` is the peak RSS *during training* minus the RSS at the start (the high-water mark is
    reset here), so it counts what training adds: activations and autograd graphs, gradients, optimizer state,
    wire buffers, allocator slack. If the kernel refuses the reset, the training figure is an upper bound.
    CUDA: `torch.cuda.max_memory_allocated` since the start (its peak is reset here), for both figures.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.before = self.baseline = 0
        else:
            self.before = peak_rss_bytes()
            self.reset = reset_peak_rss()
            self.baseline = current_rss_bytes()

    def read(self) -> dict[str, int]:
        """{"peak_memory_bytes", "train_memory_bytes"} so far."""
        if self.cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
            return {"peak_memory_bytes": peak, "train_memory_bytes": peak}
        peak = peak_rss_bytes()
        return {"peak_memory_bytes": max(peak, self.before), "train_memory_bytes": max(0, peak - self.baseline)}


class MetricsLog:
    """Append-only JSONL log; each `write` is flushed and fsynced before it returns.

    A run that crashed mid-write may have left a torn last line. Opening the log cuts that fragment off, so a
    resumed run appends clean lines instead of gluing its first record onto half of an old one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a run, in the order written, with re-run epochs collapsed.

    A run resumed from the checkpoint of epoch k trains epochs k+1.. again and logs them again; the later
    record of an epoch (same `kind` and `epoch`) replaces the earlier one, from the abandoned attempt.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FFPipeError(f"cannot read metrics {path}: {e.strerror or e}") from None
    latest: dict[tuple[str, Any], tuple[int, dict]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FFPipeError(f"{path}:{n}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict):
            raise FFPipeError(f"{path}:{n}: a record must be a JSON object")
        latest[(record.get("kind", "epoch"), record.get("epoch"))] = (n, record)
    return [record for _, record in sorted(latest.values(), key=lambda nr: nr[0])]


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


def _fmt(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return "nan" if math.isnan(value) else format(value, spec)


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
