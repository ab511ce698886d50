"""Sweep figures: a heatmap over two grid axes (seed 000 Fig. 4: accuracy vs filters × kernel) and line plots
of a metric against one axis, one line per setting of the other axes (seed 000 Fig. 5: accuracy vs K).

Every point is a mean over seeds; heatmap cells print mean ± std, lines carry ±1 std error bars.
Figures are `matplotlib.figure.Figure` objects rendered through Agg (no pyplot), as in `ffpipe.run.plots`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ffpipe.lab.analysis.runs import Row, natural
from ffpipe.run.plots import save_png


def label(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(label(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _values(rows: list[Row], axis: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for row in rows:
        seen.setdefault(repr(row.values[axis]), row.values[axis])
    return sorted(seen.values(), key=natural)


def _is_numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot_heatmap(rows: list[Row], axes: list[str], metric: str, path: str | os.PathLike) -> Path:
    """Mean of `metric` over seeds for every (first axis, second axis) cell; blank where no run finished."""
    ys, xs = _values(rows, axes[0]), _values(rows, axes[1])
    mean = np.full((len(ys), len(xs)), np.nan)
    text = [["" for _ in xs] for _ in ys]
    for row in rows:
        if metric not in row.stats:
            continue
        i, j = ys.index(row.values[axes[0]]), xs.index(row.values[axes[1]])
        m, s, _ = row.stats[metric]
        mean[i, j] = m
        text[i][j] = f"{m:.4f}" + ("" if math.isnan(s) else f"\n±{s:.4f}")
    fig = Figure(figsize=(1.3 * len(xs) + 2.8, 0.8 * len(ys) + 1.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{metric} (mean over seeds)")
    finite = mean[np.isfinite(mean)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                    color="black" if np.isfinite(mean[i, j]) and mean[i, j] > middle else "white")
    ax.set_xticks(range(len(xs)), [label(v) for v in xs])
    ax.set_yticks(range(len(ys)), [label(v) for v in ys])
    ax.set(xlabel=axes[1], ylabel=axes[0], title=metric)
    return save_png(fig, path)


def plot_lines(rows: list[Row], axes: list[str], axis: str, metrics: list[str], path: str | os.PathLike) -> Path:
    """`metrics` (one panel each) against `axis`; one line per combination of the other axes' values."""
    others = [a for a in axes if a != axis]
    xs = _values(rows, axis)
    numeric = _is_numeric(xs)
    fig = Figure(figsize=(5.0 * len(metrics), 4.2), layout="constrained")
    panels = fig.subplots(1, len(metrics), squeeze=False)[0]
    series: dict[str, list[Row]] = {}
    for row in rows:
        name = " ".join(f"{o}={label(row.values[o])}" for o in others) or "mean over seeds"
        series.setdefault(name, []).append(row)
    for ax, metric in zip(panels, metrics):
        for k, (name, members) in enumerate(series.items()):
            members = sorted((r for r in members if metric in r.stats), key=lambda r: natural(r.values[axis]))
            if not members:
                continue
            x = [r.values[axis] if numeric else xs.index(r.values[axis]) for r in members]
            m = [r.stats[metric][0] for r in members]
            s = [0.0 if math.isnan(r.stats[metric][1]) else r.stats[metric][1] for r in members]
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, color=f"C{k % 10}", label=name)
        if not numeric:
            ax.set_xticks(range(len(xs)), [label(v) for v in xs])
        else:
            if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log", base=2)
            if len(xs) <= 12:
                ax.set_xticks(xs, [label(v) for v in xs])
        ax.set(xlabel=axis, ylabel=metric, title=f"{metric} vs {axis}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_png(fig, path)
