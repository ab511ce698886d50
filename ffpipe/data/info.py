"""`data_info` and `format_info`: what a dataset holds and where it came from, as a dict and as a table.

Per-class counts are reported per split and for train+val together, because train+val is the official
training set: its counts can be checked against published ones (MNIST: 5923 6742 5958 ...) whatever the
split seed, while the per-split counts show how balanced the seeded validation subset came out.
"""

from __future__ import annotations

import os

from ffpipe.data.dataset import SPLITS
from ffpipe.data.loading import load_located

ORIGINS = {
    "data_dir": "the --data-dir folder",
    "FFPIPE_DATA_DIR": "$FFPIPE_DATA_DIR",
    "cache": "the ffpipe cache",
    "system": "the system dataset folder",
    "download": "downloaded just now",
    "package": "shipped inside ffpipe",
}


def data_info(
    name: str, data_dir: str | os.PathLike | None = None, split_seed: int = 0, download: bool = False
) -> dict:
    """A JSON-ready description of dataset `name`. Unlike `load_dataset` it does not download by default:
    asking what is there should not start a large transfer."""
    dataset, location = load_located(name, data_dir, split_seed, download)
    k = dataset.num_classes
    splits = {
        s: {"size": len(dataset.split(s)), "class_counts": dataset.split(s).class_counts(k)} for s in SPLITS
    }
    train_val = [
        a + b for a, b in zip(splits["train"]["class_counts"], splits["val"]["class_counts"], strict=True)
    ]
    return {
        "name": dataset.name,
        "source": dataset.source,
        "found_via": location.origin,
        "files": {role: str(path) for role, path in location.files.items()},
        "image_shape": list(dataset.image_shape),
        "num_classes": k,
        "class_names": list(dataset.class_names),
        "split_seed": None if location.origin == "package" else split_seed,  # its splits are its files
        "splits": splits,
        "train_val_class_counts": train_val,
    }


def format_info(info: dict) -> str:
    """`data_info`'s dict as a text table: one row per class, one column per split plus train+val."""
    c, h, w = info["image_shape"]
    seed = "none (the splits are the files)" if info["split_seed"] is None else info["split_seed"]
    lines = [
        f"dataset     {info['name']}",
        f"source      {info['source']} ({ORIGINS.get(info['found_via'], info['found_via'])})",
        f"images      {c} x {h} x {w} uint8",
        f"split seed  {seed}",
        "",
    ]
    columns = [*SPLITS, "train+val"]
    counts = {s: info["splits"][s]["class_counts"] for s in SPLITS}
    counts["train+val"] = info["train_val_class_counts"]
    totals = {s: info["splits"][s]["size"] for s in SPLITS}
    totals["train+val"] = totals["train"] + totals["val"]
    label_width = max(
        len("class"), len("total"), *(len(f"{i} {n}") for i, n in enumerate(info["class_names"]))
    )
    width = max(9, *(len(str(t)) for t in totals.values()))
    lines.append(f"{'class':<{label_width}}" + "".join(f"  {col:>{width}}" for col in columns))
    for i, class_name in enumerate(info["class_names"]):
        row = "".join(f"  {counts[col][i]:>{width}}" for col in columns)
        lines.append(f"{f'{i} {class_name}':<{label_width}}{row}")
    lines.append(f"{'total':<{label_width}}" + "".join(f"  {totals[col]:>{width}}" for col in columns))
    return "\n".join(lines)
