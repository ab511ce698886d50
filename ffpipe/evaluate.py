"""`ffpipe eval`: rebuild a network from a checkpoint's own config and score it on a split.

The config comes from the checkpoint manifest, so a checkpoint is self-describing; it loads into a single
sequential stage, whatever partition it was trained with (checkpoints are keyed by global block index).
"""

from __future__ import annotations

import dataclasses
import json

from ffpipe.checkpoint import resolve_checkpoint
from ffpipe.config import from_dict
from ffpipe.errors import FFPipeError
from ffpipe.trainer import Network


def evaluate_checkpoint(path: str, split: str = "test", readout: str = "all", data_dir: str | None = None) -> dict:
    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "manifest.json").read_text())
    cfg = from_dict(meta["config"])
    cfg.pipeline = dataclasses.replace(cfg.pipeline, stages=1, partition="flops")
    if data_dir is not None:
        cfg.data.dir = data_dir
    if readout != "all":
        if readout not in cfg.head.readouts:
            raise FFPipeError(f"readout '{readout}' was not trained in this run; it has {cfg.head.readouts}")
        cfg.head.readouts = [readout]
    net = Network.build(cfg)
    net.load(ckpt)
    result = net.evaluate(net.dataset.split(split)).result()
    accuracy = {k: v for k, v in result.items() if k in ("linear", "goodness", "group")}
    return {"split": split, "accuracy": accuracy, "n": result["n"], "exit": result["exit"],
            "epoch": meta["epoch"], "checkpoint": str(ckpt)}
