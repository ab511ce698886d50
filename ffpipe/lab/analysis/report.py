"""`ffpipe report`: a sweep's final metrics as mean ± std over seeds, in summary.csv / summary.md and figures.

A row is one configuration (its grid-axis values); each metric is the mean and sample standard deviation
(ddof = 1; blank for a single seed) over the configuration's *finished* runs. Unfinished runs are listed,
not averaged, so a report of a sweep still in progress never mixes a half-trained run into a mean.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import get_args

import numpy as np

from ffpipe.config.sections import Readout
from ffpipe.lab.analysis.figures import label, plot_heatmap, plot_lines
from ffpipe.lab.analysis.grid import short_keys
from ffpipe.lab.analysis.runs import Group, Row, Run, find_runs, grid_axes, group_runs, is_run_dir
from ffpipe.run.checkpoint import atomic_write_bytes

SECTIONS = ("test", "val", "block", "stage", "bottleneck", "train")
READOUTS = get_args(Readout)


def mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return float(arr.mean()), std, len(arr)


def aggregate(groups: list[Group]) -> list[Row]:
    rows = []
    for group in groups:
        done = [run for run in group.runs if run.finished]
        per_run = [run.final_metrics() for run in done]
        names = {name for metrics in per_run for name in metrics}
        stats = {name: mean_std([m[name] for m in per_run if name in m]) for name in names}
        rows.append(Row(group.values, [r.name for r in done], [r.name for r in group.runs if not r.finished],
                        stats))
    return rows


def _order(name: str) -> tuple:
    """Sections in SECTIONS order; numbers inside names compare as numbers (block2 before block10)."""
    head = re.match(r"[a-z]+", name)
    section = SECTIONS.index(head.group()) if head and head.group() in SECTIONS else len(SECTIONS)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)
    return (section, parts)


def metric_names(rows: list[Row]) -> list[str]:
    return sorted({name for row in rows for name in row.stats}, key=_order)


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def write_csv(rows: list[Row], axes: list[str], path: Path) -> Path:
    names = metric_names(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(axes + ["seeds"] + [f"{n}.{part}" for n in names for part in ("mean", "std")])
    for row in rows:
        cells = [label(row.values[a]) for a in axes] + [len(row.runs)]
        for name in names:
            mean, std, _ = row.stats.get(name, (math.nan, math.nan, 0))
            cells += [_num(mean), _num(std)]
        writer.writerow(cells)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _pm(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _split(name: str) -> tuple[str, str]:
    """`block2.acc_pos` → ("block2", "acc_pos"); `test.linear` → ("test", "linear")."""
    unit, _, field = name.partition(".")
    return unit, field


def markdown(rows: list[Row], axes: list[str], title: str) -> str:
    """One table per section; blocks and stages get one line per (configuration, block or stage)."""
    shorts = short_keys(axes)
    keys = [shorts[a] for a in axes]
    names = metric_names(rows)
    out = [f"# {title}", "", f"Mean ± sample std over seeds (finished runs only); {len(rows)} configurations.", ""]
    for section, caption in (("test", "Test"), ("val", "Validation (last evaluated epoch)"),
                             ("train", "Training")):
        fields = [_split(n)[1] for n in names if _split(n)[0] == section]
        if fields:
            body = [[label(r.values[a]) for a in axes] + [str(len(r.runs))] +
                    [_pm(r.stats.get(f"{section}.{f}")) for f in fields] for r in rows]
            out += [f"## {caption}", ""] + _table(keys + ["seeds"] + fields, body) + [""]
    for kind, caption in (("block", "Blocks (last epoch)"), ("stage", "Pipeline stages (last epoch)")):
        units = sorted({_split(n)[0] for n in names if _split(n)[0].startswith(kind)}, key=_order)
        fields = sorted({_split(n)[1] for n in names if _split(n)[0] in units}, key=_order)
        if units:
            body = [[label(r.values[a]) for a in axes] + [u.removeprefix(kind)] +
                    [_pm(r.stats.get(f"{u}.{f}")) for f in fields] for r in rows for u in units]
            out += [f"## {caption}", ""] + _table(keys + [kind] + fields, body) + [""]
    unfinished = [name for r in rows for name in r.unfinished]
    if unfinished:
        out += ["## Unfinished runs (not averaged)", "", ", ".join(unfinished), ""]
    return "\n".join(out)


def write_report(sweep_dir: str | Path) -> list[Path]:
    """summary.csv, summary.md, a heatmap per test readout when there are two axes, line plots per axis."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    axes = grid_axes(runs, sweep_dir)
    rows = aggregate(group_runs(runs, axes))
    written = [write_csv(rows, axes, sweep_dir / "summary.csv")]
    md = markdown(rows, axes, f"Sweep {sweep_dir.name}: {len(runs)} runs")
    atomic_write_bytes(sweep_dir / "summary.md", (md + "\n").encode())
    written.append(sweep_dir / "summary.md")
    readouts = [f"test.{r}" for r in READOUTS if any(f"test.{r}" in row.stats for row in rows)]
    if len(axes) == 2:
        written += [plot_heatmap(rows, axes, m, sweep_dir / f"heatmap_{m}.png") for m in readouts]
    if readouts:
        written += [plot_lines(rows, axes, a, readouts, sweep_dir / f"lines_{a}.png") for a in axes]
    return written


def describe_run(run: Run) -> str:
    """A single run's final metrics, one per line, for `ffpipe report RUN`."""
    metrics = run.final_metrics()
    state = "finished" if run.finished else f"unfinished ({len(run.epochs)} epochs logged)"
    lines = [f"run {run.path}: {state}"]
    width = max((len(n) for n in metrics), default=0)
    lines += [f"  {name:<{width}}  {metrics[name]:.6g}" for name in sorted(metrics, key=_order)]
    return "\n".join(lines)


def report(path: str | Path) -> tuple[str, list[Path]]:
    """`ffpipe report PATH`: describe a single run, or regenerate a sweep's tables and figures."""
    path = Path(path)
    if is_run_dir(path):
        return describe_run(find_runs(path)[0]), []
    written = write_report(path)
    return (path / "summary.md").read_text(), written
