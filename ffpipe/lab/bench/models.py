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
TIMED_TRAIN = "train: {epochs: 100, eval_every: 100000, progress: false, tensor_memory: true}\n"
"""No evaluation before the last step; every run records its peak of live tensor bytes (`MemoryMeter`)."""
TIMED_EPOCH = 2  # epoch 1 warms up; the run stops one step into epoch 3


GROUP_HEAD = "head: {mode: none, exclude_first: false, readouts: [group]}\n"
DEEPER_FORWARD = ("loss: {{family: group_ce, group_goodness: mean}}\n"
                  "optim: {{name: adamw, lr: 0.01, weight_decay: 0.0005, schedule: cosine, lr_min: 0.001}}\n")
"""DeeperForward's block recipe as the `*_cpu.yaml` configs hold it (their lr; see README, Results)."""


@dataclass(frozen=True)
class Model:
    title: str  # formatted with w = width
    body: str  # YAML sections, formatted with b = batch, w = width (w2, w4, w8: its multiples), s = subset key
    depth: int
    head: str = HEAD


DEPTH_GROUPS = {4: (1, 1, 1, 1), 8: (2, 2, 2, 2), 14: (4, 3, 3, 4), 17: (5, 4, 4, 4)}
"""Blocks per resolution group (widths w, 2w, 4w, 8w, each group after the first opened by a stride-2 conv):
DeeperForward's CNN-14 (4+3+3+4) and ResNet-17 (5+4+4+4), and our 1+1+1+1 and 2+2+2+2 below them (our choice,
so that depth is the only variable of a sweep)."""


def deep_layout(depth: int, residual: bool) -> tuple[list[int], list[int], list[list]]:
    """(width multiples of w, strides, shortcuts) of the `depth`-block net. A residual net joins block i - 2's
    output to block i's for every even i >= 2, by concat where the next block opens a group (so the width it
    reads doubles, as in ResNet-17) and by add elsewhere; its plain twin has the same convs and no joins."""
    if depth not in DEPTH_GROUPS:
        raise FFPipeError(f"depth {depth}: the deep nets are defined for {sorted(DEPTH_GROUPS)} blocks")
    multiples, stride, openers = [], [], set()
    for g, count in enumerate(DEPTH_GROUPS[depth]):
        openers.add(len(multiples))
        multiples += [2 ** g] * count
        stride += [2 if g else 1] + [1] * (count - 1)
    joins = [[dst - 2, dst, "concat" if dst + 1 in openers else "add"] for dst in range(2, depth, 2)]
    return multiples, stride, joins if residual else []


def deep_net(depth: int, residual: bool, title: str | None = None, joins: list[list] | None = None) -> Model:
    """A DeeperForward-style group-goodness net (CWConv blocks, group norm, no bias, kaiming), widths w..8w;
    `joins` replaces the shortcuts of `deep_layout`."""
    multiples, stride, layout_joins = deep_layout(depth, residual)
    joins = layout_joins if joins is None else joins
    width = ", ".join("{w}" if m == 1 else f"{{w{m}}}" for m in multiples)
    layout = f"width: [{width}], stride: {stride}"
    if joins:
        layout += ", shortcuts: [" + ", ".join(f"[{a}, {b}, {k}]" for a, b, k in joins) + "]"
    body = ("data: {{batch_size: {b}{s}, labels: {{encoding: none}}}}\n"
            f"model: {{{{type: conv, depth: {depth}, kernel: 3, pool: 0, {layout}, dropout: 0.2, bias: false, "
            "init: kaiming, input_norm: layer, norm: group}}\n" + DEEPER_FORWARD)
    kind = f"{len(joins)} shortcuts" if joins else "plain"
    return Model(title or f"{depth}-block group-goodness CNN, widths {{w}} to 8x{{w}}, {kind}", body, depth,
                 GROUP_HEAD)


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
    "tinycnn": Model("TinyCNN 4 blocks, widths {w} to 4x{w} (DeeperForward), group goodness",
                     "data: {{batch_size: {b}{s}, labels: {{encoding: none}}}}\n"
                     "model: {{type: conv, depth: 4, width: [{w}, {w2}, {w4}, {w4}], kernel: [5, 5, 3, 3], "
                     "pool: 0, in_pool: [0, 2, 2, 0], dropout: 0.2, bias: false, init: kaiming, "
                     "input_norm: layer, norm: group}}\n" + DEEPER_FORWARD, 4, GROUP_HEAD),
    "cnn14": deep_net(14, False, "CNN-14, widths {w} to 8x{w} (DeeperForward), group goodness"),
    "resnet17": deep_net(17, True, "ResNet-17, widths {w} to 8x{w} (DeeperForward), group goodness, 8 shortcuts",
                         joins=[[a, a + 2, "concat" if a % 4 == 2 else "add"] for a in range(0, 15, 2)]),
}
DEEP = ("tinycnn", "cnn14", "resnet17")


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
# The deep group-goodness nets run at their `*_cpu.yaml` widths (w = 20) and DeeperForward's batch 128.
FULL = {"mlp": Size(2000, 100, None), "cnn": Size(16, 100, 3000), "deepcnn": Size(16, 100, 2000),
        **{m: Size(20, 128, 2560) for m in DEEP}}
QUICK = {"mlp": Size(100, 500, 3000), "cnn": Size(4, 200, 1200), "deepcnn": Size(4, 200, 1200),
         **{m: Size(10, 64, 256) for m in DEEP}}


def timed_steps(size: Size) -> int:
    """Steps of one timed run: the warm-up epoch and the timed one (`TIMED_EPOCH`), plus one step into the next,
    so the final evaluation falls outside the timed epoch."""
    return TIMED_EPOCH * ((size.subset or TRAIN_IMAGES) // size.batch) + 1


def config_text(model: str | Model, size: Size, train: str = TIMED_TRAIN, dataset: str | None = None) -> str:
    """The YAML of one model (a name in MODELS, or a Model) at one size; `train` is the train section (one
    line); `dataset` replaces the embedded slice."""
    net = MODELS[model] if isinstance(model, str) else model
    subset = f", train_subset: {size.subset}" if size.subset else ""
    if dataset:
        subset += f", name: {dataset}"
    w = size.width
    return net.body.format(b=size.batch, w=w, w2=2 * w, w4=4 * w, w8=8 * w, s=subset) + net.head + train


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
