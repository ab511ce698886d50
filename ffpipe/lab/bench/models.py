"""The models the throughput benchmarks measure, at full and quick sizes, and how one timed run is started.

Shared by the throughput benchmark (`throughput`) and its time-to-accuracy part (`throughput_tta`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ffpipe.errors import FFPipeError
from ffpipe.lab.bench import runner

TRAIN_IMAGES = 6000  # the embedded fashion_mnist_small training split
HEAD = "head: {mode: local, exclude_first: true, readouts: [linear]}\n"
TIMED_TRAIN = "train: {epochs: 100, eval_every: 100000, progress: false}\n"  # no evaluation before the last step
TIMED_EPOCH = 2  # epoch 1 warms up; the run stops one step into epoch 3


@dataclass(frozen=True)
class Model:
    title: str  # formatted with w = width
    body: str  # YAML data + model sections, formatted with b = batch, w = width, s = the subset key or ""
    depth: int


MODELS = {
    "mlp": Model("wide MLP 4x{w} (linear), one-hot labels",
                 "data: {{batch_size: {b}{s}, labels: {{encoding: onehot}}}}\n"
                 "model: {{type: linear, depth: 4, width: {w}}}\n", 4),
    "cnn": Model("Scodellaro-style CNN 3x{w} 5x5, Fourier labels",
                 "data: {{batch_size: {b}{s}, labels: {{encoding: fourier, label_set: 1, k: 0.35}}}}\n"
                 "model: {{type: conv, depth: 3, width: {w}, kernel: 5, pool: 0}}\n", 3),
    "deepcnn": Model("deep CNN 8x{w} 3x3, no pooling, one-hot labels",
                     "data: {{batch_size: {b}{s}, labels: {{encoding: onehot}}}}\n"
                     "model: {{type: conv, depth: 8, width: {w}, kernel: 3, pool: 0}}\n", 8),
}


@dataclass(frozen=True)
class Size:
    width: int
    batch: int  # the global batch of one step, for every configuration
    subset: int | None  # data.train_subset (None: all 6000 training images)


# Full sizes (our choice), from FF-sequential steps of 100 measured on this 2-core machine with its other core
# busy (1 thread): MLP 4x2000 0.20 s, CNN 3x16 5x5 0.34 s, deep CNN 8x16 3x3 0.38-0.85 s. The subsets keep a
# model's slowest run (FF sequential: 2 epochs + 1 step, start-up, final evaluation) under 60 s: the deep CNN's
# measured 24 s. Deep CNN at width 16 and batch 100 without pooling: a block holds 16x28x28 floats (50 KB) per
# sample and row but 2.3 K parameters, so activations, not weights or optimizer state, dominate training memory.
FULL = {"mlp": Size(2000, 100, None), "cnn": Size(16, 100, 3000), "deepcnn": Size(16, 100, 2000)}
QUICK = {"mlp": Size(100, 500, 3000), "cnn": Size(4, 200, 1200), "deepcnn": Size(4, 200, 1200)}


def config_text(model: str, size: Size, train: str = TIMED_TRAIN) -> str:
    """The YAML of one model at one size; `train` is the train section (one line)."""
    subset = f", train_subset: {size.subset}" if size.subset else ""
    return MODELS[model].body.format(b=size.batch, w=size.width, s=subset) + HEAD + train


def attempt(cmd: list[str], out: Path, epoch: int, attempts: int = 2) -> tuple[dict, list[str]]:
    """`runner.timed_run`, started afresh (empty run dir) up to `attempts` times; returns its result and the
    stderr tails of the failed attempts, which results.json keeps. Why: torchrun worlds on this machine
    sometimes die in teardown after the run is complete ("terminate called without an active exception",
    SIGABRT, seen in about 1 of 5 DDP-BP runs); a retried run is a new, complete measurement."""
    failures = []
    while True:
        try:
            return runner.timed_run(cmd, out, epoch=epoch), failures
        except RuntimeError as exc:
            failures.append(str(exc)[-1500:])
            if len(failures) == attempts:
                raise FFPipeError(f"a benchmark run failed {attempts} times:\n" + "\n---\n".join(failures)) from None
            shutil.rmtree(out)
            out.mkdir()
