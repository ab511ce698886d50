"""`ffpipe analyze dynamics`: how each layer's accuracy develops with training, after seed 003 (Adamson 2025).

Layer accuracy is seed 003 eq. 3, (TP + TN) / m, where a positive sample is a true positive when the layer's
goodness exceeds its threshold and a negative sample a true negative when it does not. With m = B positive
plus B negative samples that is the mean of our per-block `acc_pos` and `acc_neg`. Our reading: those are
averaged over the epoch's training minibatches as the weights change (what metrics.jsonl logs for free); the
model accuracy is the end-of-epoch validation readout, `linear`, else `goodness` (else `group`).

For every configuration (all grid axes but the seed) this computes, as seed 003 does:
- Figs. 2–3: each layer's accuracy per epoch, mean and ±1 std over seeds, with the model accuracy;
- Fig. 4: the delay, the first epoch at which a layer's seed-averaged accuracy reaches the target (0.7 in the
  paper); we add each seed's own delay;
- Fig. 5: Pearson and Spearman correlation between a layer's accuracy and the model's over all
  (seed, epoch) pairs (the paper: 30 seeds × 30 epochs = 900 pairs), against depth (= block index + 1).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.grid import short_keys
from ffpipe.lab.analysis.runs import Group, Run, find_runs, grid_axes, group_runs, layer_accuracy
from ffpipe.run.plots import save_png

STRONG = 0.7
"""Seed 003's threshold for a strong correlation (|r| > 0.7), drawn on the correlation figure."""


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        raise FFPipeError("the dynamics analysis needs scipy: pip install 'ffpipe[analysis]'") from None
    return stats


@dataclass
class Curves:
    """One run: layer accuracy [epochs, layers] and model accuracy [epochs], NaN where not logged."""

    epochs: list[int]
    layers: np.ndarray
    model: np.ndarray


def run_curves(run: Run, readout: str | None, num_layers: int, metric: str = "auto") -> Curves:
    layers = np.full((len(run.epochs), num_layers), np.nan)
    model = np.full(len(run.epochs), np.nan)
    for e, record in enumerate(run.epochs):
        for block in record.get("blocks") or []:
            acc = layer_accuracy(block, metric)
            if acc is not None and isinstance(block.get("index"), int):
                layers[e, block["index"]] = acc
        value = (record.get("val") or {}).get(readout) if readout else None
        if isinstance(value, int | float):
            model[e] = value
    return Curves([int(r.get("epoch", e + 1)) for e, r in enumerate(run.epochs)], layers, model)


def first_reach(epochs: list[int], values: np.ndarray, target: float) -> int | None:
    """The first epoch whose value is >= target; None if it never gets there."""
    for epoch, value in zip(epochs, values):
        if np.isfinite(value) and value >= target:
            return int(epoch)
    return None


def correlation(layer: np.ndarray, model: np.ndarray) -> dict:
    """Pearson's r and Spearman's rho (scipy.stats) with p-values over the pairs where both are finite.

    Fewer than 3 pairs, or a constant series, has no defined correlation: the values are None.
    """
    ok = np.isfinite(layer) & np.isfinite(model)
    x, y = layer[ok], model[ok]
    out = {"pairs": int(ok.sum()), "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    stats = _scipy_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    out.update(pearson=float(pearson.statistic), pearson_p=float(pearson.pvalue),
               spearman=float(spearman.statistic), spearman_p=float(spearman.pvalue))
    return out


def _clean(values) -> list:
    """NaN → None, so the JSON stays valid JSON."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def _mean_std(stack: np.ndarray) -> tuple[list, list, list]:
    """Per-column mean, sample std (ddof=1) and count over the finite rows of `stack` [seeds, epochs]."""
    n = np.isfinite(stack).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(stack, axis=0)
        std = np.where(n > 1, np.nanstd(stack, axis=0, ddof=1), np.nan)
    return _clean(mean.tolist()), _clean(std.tolist()), n.astype(int).tolist()


def _aligned(curves: list[Curves], epochs: list[int], column) -> np.ndarray:
    """[seeds, epochs] of `column(curve)` on the common epoch axis, NaN where a seed lacks that epoch."""
    stack = np.full((len(curves), len(epochs)), np.nan)
    for s, c in enumerate(curves):
        values = column(c)
        for e, epoch in enumerate(c.epochs):
            stack[s, epochs.index(epoch)] = values[e]
    return stack


def analyze_group(group: Group, target: float, label: str, metric: str = "auto") -> dict:
    runs = [run for run in group.runs if run.epochs]
    num_layers = max((b["index"] for run in runs for r in run.epochs for b in r["blocks"]
                      if isinstance(b.get("index"), int)), default=-1) + 1
    readout = next((r for r in (run.model_readout() for run in runs) if r), None)
    curves = [run_curves(run, readout, num_layers, metric) for run in runs]
    epochs = sorted({e for c in curves for e in c.epochs})
    model = _aligned(curves, epochs, lambda c: c.model)
    m_mean, m_std, m_n = _mean_std(model)
    layers = []
    for i in range(num_layers):
        stack = _aligned(curves, epochs, lambda c, i=i: c.layers[:, i])
        mean, std, n = _mean_std(stack)
        mean_arr = np.array([np.nan if v is None else v for v in mean])
        layers.append({"layer": i, "depth": i + 1, "mean": mean, "std": std, "n": n,
                       "delay": first_reach(epochs, mean_arr, target),
                       "delay_per_seed": [first_reach(c.epochs, c.layers[:, i], target) for c in curves],
                       **correlation(stack.ravel(), model.ravel())})
    return {"label": label, "values": group.values, "runs": [r.name for r in runs], "seeds": [r.seed for r in runs],
            "readout": readout, "epochs": epochs, "model": {"mean": m_mean, "std": m_std, "n": m_n},
            "layers": layers}


def analyze(runs: list[Run], axes: list[str], target: float = 0.7, metric: str = "auto") -> dict:
    if not 0.0 < target <= 1.0:
        raise FFPipeError(f"--target is an accuracy in (0, 1], got {target}")
    shorts = short_keys(axes)
    groups = [g for g in group_runs(runs, axes) if any(run.epochs for run in g.runs)]
    if not groups:
        raise FFPipeError("no run has any epoch record yet")
    return {"target": target, "axes": axes, "metric": metric,
            "groups": [analyze_group(g, target, g.label(shorts), metric) for g in groups]}


def _series(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_layer_accuracy(result: dict, path: Path) -> Path:
    """Seed 003 Figs. 2–3: per-layer accuracy (mean, ±1 std band) per epoch, colour = relative depth."""
    groups = result["groups"]
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(5.2 * cols, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    cmap = colormaps["viridis"]
    for ax, g in zip(axes, groups):
        x, num = g["epochs"], len(g["layers"])
        for layer in g["layers"]:
            color = cmap(layer["layer"] / max(1, num - 1))
            mean, std = _series(layer["mean"]), _series(layer["std"])
            ax.plot(x, mean, color=color, label=f"layer {layer['depth']}")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        if g["readout"]:
            ax.plot(x, _series(g["model"]["mean"]), "k--", label=f"model ({g['readout']})")
        ax.axhline(result["target"], color="grey", ls=":", lw=1)
        ax.set(title=g["label"], xlabel="epoch", ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2 if num > 6 else 1)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return save_png(fig, path)


def plot_delay(result: dict, path: Path) -> Path:
    """Seed 003 Fig. 4: epoch at which each layer first reaches the target, against depth."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, g in enumerate(result["groups"]):
        depth = [layer["depth"] for layer in g["layers"]]
        delay = [np.nan if layer["delay"] is None else layer["delay"] for layer in g["layers"]]
        ax.plot(depth, delay, marker="o", color=f"C{k % 10}", label=g["label"])
    ax.set(xlabel="layer depth", ylabel=f"first epoch with accuracy ≥ {result['target']}",
           title="delay to reach the target accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_correlation(result: dict, path: Path) -> Path:
    """Seed 003 Fig. 5: Pearson and Spearman correlation of layer vs model accuracy, against depth."""
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("pearson", "spearman"), ("Pearson", "Spearman's rank")):
        for k, g in enumerate(result["groups"]):
            depth = [layer["depth"] for layer in g["layers"]]
            ax.plot(depth, _series([layer[key] for layer in g["layers"]]), marker="o", color=f"C{k % 10}",
                    label=g["label"])
        for level in (STRONG, -STRONG):
            ax.axhline(level, color="grey", ls=":", lw=1)
        ax.set(xlabel="layer depth", ylabel="correlation with model accuracy", title=title, ylim=(-1.05, 1.05))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_png(fig, path)


def write_dynamics(path: str | Path, target: float = 0.7, out: str | Path | None = None,
                   metric: str = "auto") -> tuple[dict, list[Path]]:
    """Analyze the run or sweep at `path`; write dynamics.json and the three figures to `out`."""
    path = Path(path)
    runs = find_runs(path)
    result = analyze(runs, grid_axes(runs, path), target, metric)
    out = Path(out) if out else (path / "dynamics")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamics.json").write_text(json.dumps(result, indent=1) + "\n")
    figures = [plot_layer_accuracy(result, out / "layer_accuracy.png"), plot_delay(result, out / "delay.png"),
               plot_correlation(result, out / "correlation.png")]
    return result, [out / "dynamics.json", *figures]


def format_dynamics(result: dict) -> str:
    """One block per configuration: delay and correlations per layer."""
    lines = []
    for g in result["groups"]:
        lines.append(f"{g['label']}  ({len(g['runs'])} seeds, model = val {g['readout']})")
        lines.append(f"  {'depth':>5} {'delay':>6} {'pearson':>8} {'spearman':>9} {'pairs':>6}")
        for layer in g["layers"]:
            cells = [layer["delay"], layer["pearson"], layer["spearman"]]
            delay, pearson, spearman = ("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                                        for v in cells)
            lines.append(f"  {layer['depth']:>5} {delay:>6} {pearson:>8} {spearman:>9} {layer['pairs']:>6}")
    return "\n".join(lines)
