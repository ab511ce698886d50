"""`ffpipe analyze tsne`: t-SNE of each block's activity on positive data, after seed 004 Figs. 4–5.

Seed 004 embeds "the positive goodness values", the layer outputs for images shown with their true label,
and colours them by class. We embed each block's normalized output (what the next block sees) on the
positive stream with scikit-learn's TSNE and measure how well the classes separate: the silhouette score of
the 2-D embedding with the class labels (our choice of score; in [-1, 1], higher = better separated).
Our choices for speed and stability: features wider than 50 are first reduced to 50 principal components
(the usual t-SNE preprocessing), PCA initialisation, a fixed `random_state`.
For group_ce runs (no label overlay) the positive stream is the plain image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.probe import Probe
from ffpipe.run.plots import save_png

PCA_DIMS = 50
INSTALL = "t-SNE needs scikit-learn, which is not installed: pip install 'ffpipe[analysis]'"


def _sklearn():
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
        from sklearn.metrics import silhouette_score
    except ImportError:
        raise FFPipeError(INSTALL) from None
    return PCA, TSNE, silhouette_score


def parse_layers(text: str, num_blocks: int) -> list[int | str]:
    """Comma-separated block indices, `all` (every block) and `input` (the network input), in that order."""
    layers: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            layers += range(num_blocks)
        elif part == "input":
            layers.append(part)
        elif part.isdigit() and int(part) < num_blocks:
            layers.append(int(part))
        else:
            raise FFPipeError(f"--layers: '{part}' is not 'all', 'input' or a block index 0..{num_blocks - 1}")
    return list(dict.fromkeys(layers))


def embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """[n, d] → [n, 2]: PCA to PCA_DIMS when wider, then t-SNE (perplexity 30, or less for tiny n)."""
    PCA, TSNE, _ = _sklearn()
    n = len(features)
    if n < 5:
        raise FFPipeError(f"t-SNE needs at least 5 samples, got {n}")
    if features.shape[1] > PCA_DIMS and n > PCA_DIMS:
        features = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(features)
    perplexity = min(30.0, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def separation(embedding: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score of the embedding with the class labels (needs ≥ 2 classes present)."""
    _, _, silhouette_score = _sklearn()
    if len(set(labels.tolist())) < 2:
        raise FFPipeError("the silhouette score needs at least 2 classes among the samples; use a larger --n")
    return float(silhouette_score(embedding, labels))


def tsne_layers(probe: Probe, split: str, n: int, layers: list[int | str], seed: int = 0,
                stream: str = "positive") -> dict:
    """Embed each requested layer's activity on `stream` for a seeded random subset of `n` images.

    `positive` is seed 004's view. Its input carries the true label, so a block that merely passes the label
    pattern on separates the classes too; `neutral` (our addition) shows what the blocks make of the image.
    """
    _sklearn()
    x, y = probe.images(split, n, seed=seed)
    inp = probe.inputs(x, y, stream)
    acts = probe.activations(inp)
    labels = y.numpy()
    panels = []
    for layer in layers:
        feats = (inp if layer == "input" else acts[layer]).flatten(1).numpy().astype(np.float64)
        emb = embed(feats, seed)
        panels.append({"layer": layer, "silhouette": separation(emb, labels), "embedding": emb})
    return {"split": split, "stream": stream, "n": len(labels), "labels": labels, "panels": panels}


def render_tsne(result: dict, class_names: list[str], path: str | Path, title: str = "") -> Path:
    panels = result["panels"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols + 1.2, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = result["labels"]
    for ax, panel in zip(axes, panels):
        emb = panel["embedding"]
        for c, name in enumerate(class_names):
            mask = labels == c
            if mask.any():
                ax.scatter(emb[mask, 0], emb[mask, 1], s=4, color=f"C{c % 10}", label=name)
        name = "input" if panel["layer"] == "input" else f"block {panel['layer']}"
        ax.set_title(f"{name}: silhouette {panel['silhouette']:.3f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize="small", markerscale=3)
    fig.suptitle(title or f"t-SNE of {result['stream']}-stream activity ({result['split']}, n={result['n']})",
                 fontsize=10)
    return save_png(fig, path)


def write_scores(result: dict, path: str | Path, checkpoint: str) -> Path:
    doc = {"checkpoint": checkpoint, "split": result["split"], "stream": result["stream"], "n": result["n"],
           "score": "silhouette of the 2-D t-SNE embedding with the class labels",
           "layers": [{"layer": p["layer"], "silhouette": p["silhouette"]} for p in result["panels"]]}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    return Path(path)
