"""PNG plots: a run's training curves and confusion matrix, and the label grid of `ffpipe labels show`.

Figures are built with `matplotlib.figure.Figure` directly (no `pyplot`), which renders PNG through Agg and
touches no global backend or figure registry, so plotting works headless and from any thread or process.
Files are written atomically, like every other run artefact. matplotlib is imported when a figure is made,
not with this module: every stage process imports it (the confusion matrix), and importing matplotlib costs
about 0.9 s of start-up per process on our 2-core machine.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ffpipe.errors import FFPipeError
from ffpipe.ff.labels.base import LabelEncoder
from ffpipe.run.checkpoint import atomic_write_bytes
from ffpipe.run.records import NOT_ACCURACIES

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def subplots(*grid, figsize: tuple[float, float], **kwargs):
    """A pyplot-free figure and its axes, with `plt.subplots`'s arguments (for modules that plot many figures)."""
    fig = _figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render `fig` to PNG and write it atomically; every PNG ffpipe writes goes through here."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _color(i: int) -> str:
    """The i-th colour of matplotlib's default cycle (it has ten; more lines reuse them)."""
    return f"C{i % 10}"


def _readout_series(records: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """`{readout name: (epochs, accuracies)}`; a list-valued readout (early exits) becomes `exit 1..K`.

    Entries that are not numbers (an exit a stage does not offer is `None`) are skipped, and so is the last
    exit beside a linear readout: it is the whole head, the linear readout itself, and would hide its line.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        readouts = r.get(key) or {}
        for name, value in readouts.items():
            if name in NOT_ACCURACIES or name.endswith(("_ranges", "_range", "_blocks")):
                continue
            for k, v in enumerate(value if isinstance(value, list) else [value], 1):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if isinstance(value, list) and k == len(value) and "linear" in readouts:
                    continue
                label = f"{name} {k}" if isinstance(value, list) else name
                xs, ys = series.setdefault(label, ([], []))
                xs.append(r.get("epoch", 0))
                ys.append(v)
    return series


def plot_curves(records: list[dict], path: str | os.PathLike) -> Path:
    """Per-block FF loss, per-block positive/negative accuracy, and validation accuracy per readout vs epoch.

    Test results (a `"kind": "test"` record) are drawn as stars at the last epoch of the validation panel.
    """
    train = [r for r in records if r.get("kind", "epoch") != "test" and r.get("blocks")]
    if not train:
        raise FFPipeError("no epoch records to plot")
    val = _readout_series(train, "val")
    test_records = [r for r in records if r.get("kind") == "test"]
    test = _readout_series(test_records[-1:], "test")
    panels = 3 if val or test else 2
    fig = _figure(figsize=(5.0 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    epochs = [r.get("epoch", 0) for r in train]
    num_blocks = max(len(r["blocks"]) for r in train)

    def block_values(i: int, key: str) -> list[float]:
        """Block i's `key` per epoch; NaN (a gap in the line) where a record lacks it or holds None."""
        values = [r["blocks"][i].get(key) if i < len(r["blocks"]) else None for r in train]
        return [v if isinstance(v, int | float) else float("nan") for v in values]

    styles = {"acc_pair": ("-", "pair"), "acc": ("-", "group"), "acc_pos": (":", "pos"), "acc_neg": ("--", "neg")}
    shown = [k for k in styles if any(k in b for r in train for b in r["blocks"])]
    for i in range(num_blocks):
        c = _color(i)
        axes[0].plot(epochs, block_values(i, "loss"), marker=".", color=c, label=f"block {i}")
        for key in shown:
            ls, name = styles[key]
            axes[1].plot(epochs, block_values(i, key), marker=".", color=c, ls=ls, label=f"block {i} {name}")
    # log scale: one block's loss (an untrained first block's ~37) would otherwise flatten every other curve
    losses = [v for i in range(num_blocks) for v in block_values(i, "loss") if v == v]
    log = bool(losses) and min(losses) > 0
    if log:
        axes[0].set_yscale("log")
    axes[0].set(title=f"FF loss per block{' (log scale)' if log else ''}", xlabel="epoch", ylabel="loss")
    legend = ", ".join(f"{styles[k][1]} {dict(zip(['-', ':', '--'], ['solid', 'dotted', 'dashed']))[styles[k][0]]}"
                       for k in shown)
    axes[1].set(title=f"local accuracy per block ({legend})", xlabel="epoch", ylabel="accuracy")
    if panels == 3:
        last_epoch = epochs[-1]
        for j, (name, (xs, ys)) in enumerate(val.items()):
            axes[2].plot(xs, ys, marker=".", color=_color(j), label=name)
        names = list(val) + [name for name in test if name not in val]
        for name, (_, ys) in test.items():
            axes[2].plot(
                [last_epoch],
                ys,
                marker="*",
                ms=12,
                ls="none",
                color=_color(names.index(name)),
                label=f"test {name}",
            )
        axes[2].set(title="accuracy per readout", xlabel="epoch", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", framealpha=0.7, ncol=2 if len(ax.get_lines()) > 8 else 1)
        if len(epochs) <= 20:
            ax.set_xticks(sorted(set(epochs)))
    return save_png(fig, path)


def _check_cm(cm: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
    cm = torch.as_tensor(cm)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {tuple(cm.shape)} does not fit {len(class_names)} names")
    return cm.to(torch.int64)


def plot_confusion(cm: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Counts in every cell; colour is the row-normalised rate (recall), so rare classes stay readable."""
    cm = _check_cm(cm, class_names)
    n = cm.shape[0]
    rows = cm.sum(dim=1, keepdim=True).clamp(min=1)
    rate = (cm.double() / rows).numpy()
    total = int(cm.sum())
    acc = float(cm.diagonal().sum()) / total if total else float("nan")
    size = max(4.5, 0.55 * n + 2.0)
    fig = _figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true class", shrink=0.8)
    ax.set_xticks(range(n), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), list(class_names))
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (accuracy {acc:.4f}, n={total})")
    fontsize = 9 if n <= 10 else 7 if n <= 20 else 0
    if fontsize:
        for t in range(n):
            for p in range(n):
                ax.text(
                    p,
                    t,
                    str(int(cm[t, p])),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if rate[t, p] > 0.5 else "black",
                )
    return save_png(fig, path)


def save_confusion(
    cm: torch.Tensor, class_names: Sequence[str], json_path: str | os.PathLike, png_path: str | os.PathLike
) -> None:
    """Write the matrix as JSON `{"class_names": [...], "matrix": [[...]]}` (rows = true) and as a PNG."""
    cm = _check_cm(cm, class_names)
    doc = {"class_names": list(class_names), "matrix": cm.tolist()}
    atomic_write_bytes(json_path, (json.dumps(doc) + "\n").encode())
    plot_confusion(cm, class_names, png_path)


# -- the label grid (seed 000 Figs. 2 and 7) ------------------------------------------------------------
_MAX_COLUMNS = 6
_PANEL_INCHES = 2.0


def _panel(image: torch.Tensor):
    """[C, H, W] in [0, 1] -> what imshow wants: [H, W] for gray, [H, W, 3] for colour."""
    array = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    return array[0].numpy() if array.shape[0] == 1 else array[:3].permute(1, 2, 0).numpy()


def render_label_grid(
    encoder: LabelEncoder, image: torch.Tensor, path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG grid of `image` (float [C, H, W] in [0, 1]) under labels 0..C-1 and the neutral overlay.

    Panels are shown without smoothing (nearest neighbour) so single pixels, e.g. a one-hot code, stay
    visible. Returns the path written. Encoding "none" has no overlay to show and is an error.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not encoder.overlays:
        raise FFPipeError(f"encoding {encoder.description} puts no label into the image: nothing to show")
    if image.dim() != 3 or tuple(image.shape) != encoder.image_shape:
        raise FFPipeError(
            f"image to render must have shape {list(encoder.image_shape)}, got {list(image.shape)}"
        )
    batch = image.to(encoder.device, torch.float32)[None]
    with torch.no_grad():
        variants = torch.cat([encoder.encode_all(batch), encoder.neutral(batch)])
    names = [f"label {k}" for k in range(encoder.num_classes)] + ["neutral"]

    columns = min(_MAX_COLUMNS, len(names))
    rows = math.ceil(len(names) / columns)
    figure = _figure(
        figsize=(columns * _PANEL_INCHES, rows * (_PANEL_INCHES + 0.25) + 0.4), dpi=100, layout="constrained"
    )
    FigureCanvasAgg(figure)
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.set_axis_off()
        if index < len(names):
            axes.imshow(_panel(variants[index]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axes.set_title(names[index], fontsize=9)
    figure.suptitle(title if title is not None else f"labels: {encoder.description}", fontsize=11)

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png")
    except OSError as error:
        raise FFPipeError(f"cannot write label grid to {target}: {error.strerror or error}") from None
    return target
