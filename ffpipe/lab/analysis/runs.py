"""Reading run directories back: their config, their per-epoch records and their final metrics.

Everything the analysis layer reports comes from what a run wrote (config.yaml, metrics.jsonl), never from
the process that trained it, so a sweep trained sequentially, as a pipeline, or half on another machine
reads the same. The grid axes of a sweep are recovered as the config keys whose values differ between its
runs (the seed aside), so `ffpipe report DIR` needs nothing but the directories.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from ffpipe.config.sections import Readout
from ffpipe.errors import FFPipeError
from ffpipe.run.records import read_records

SWEEP_FILE = "sweep.json"
MODEL_READOUTS = get_args(Readout)
"""The model accuracy of a run, in order of preference: the linear head (seed 003 compares layers with the
model's classification accuracy; our linear head is that classifier), else the goodness or group readout."""


LAYER_METRICS = ("auto", "threshold", "pair")


def layer_accuracy(block: dict, metric: str = "auto") -> float | None:
    """A block's local accuracy in one epoch record.

    `threshold`: seed 003 eq. 3, (TP + TN) / m over m = B positive + B negative samples, i.e.
    mean(acc_pos, acc_neg); only threshold families (bce, hinge) have it. `pair`: `acc_pair`, the fraction of
    images whose positive goodness beats their negative's, which every family with negatives has; group_ce
    blocks report their class accuracy `acc` instead. `auto`: threshold where there is one, else pair (else
    the group accuracy), so a sweep of one family reads the same as before `acc_pair` existed.
    """
    if metric not in LAYER_METRICS:
        raise FFPipeError(f"layer metric '{metric}' is not one of {', '.join(LAYER_METRICS)}")
    pos, neg = block.get("acc_pos"), block.get("acc_neg")
    threshold = (pos + neg) / 2.0 if isinstance(pos, int | float) and isinstance(neg, int | float) else None
    pair = block.get("acc_pair", block.get("acc"))
    pair = pair if isinstance(pair, int | float) else None
    if metric == "threshold":
        return threshold
    if metric == "pair":
        return pair
    return threshold if threshold is not None else pair


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists stay values (a per-block width list is one config value)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def _numbers(tree: Any, prefix: str) -> dict[str, float]:
    """Every finite number under `tree` by dotted key; list entries get 1-based keys (exit → exit.1, ...)."""
    if isinstance(tree, bool) or tree is None:
        return {}
    if isinstance(tree, int | float):
        return {prefix: float(tree)} if math.isfinite(tree) else {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree, 1) if isinstance(tree, list) else []
    out: dict[str, float] = {}
    for key, value in items:
        out.update(_numbers(value, f"{prefix}.{key}"))
    return out


@dataclass
class Run:
    """One run directory: its flattened config, its epoch records (re-run epochs collapsed) and test result."""

    path: Path
    config: dict[str, Any]
    epochs: list[dict] = field(default_factory=list)
    test: dict | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return int(self.config.get("train.seed", 0))

    @property
    def finished(self) -> bool:
        return self.test is not None

    def model_readout(self) -> str | None:
        """The readout that stands for "the model's accuracy" in this run (see MODEL_READOUTS)."""
        seen = {name for r in self.epochs for name in (r.get("val") or {})}
        return next((name for name in MODEL_READOUTS if name in seen), None)

    def final_metrics(self) -> dict[str, float]:
        """Every final number of the run, by name: `test.*`, the last `val.*`, the last epoch's `block<i>.*`
        (with `block<i>.acc`, seed 003 eq. 3), `stage<s>.*` and `bottleneck.*` of pipelined runs, the last
        epoch's throughput and the training time summed over epochs."""
        out: dict[str, float] = {}
        if self.test:
            out.update(_numbers(self.test, "test"))
        with_val = [r for r in self.epochs if r.get("val")]
        if with_val:
            out.update(_numbers(with_val[-1]["val"], "val"))
        if self.epochs:
            last = self.epochs[-1]
            for block in last.get("blocks") or []:
                prefix = f"block{block.get('index', '?')}"
                out.update(_numbers({k: v for k, v in block.items() if k != "index"}, prefix))
                acc = layer_accuracy(block)
                if acc is not None:
                    out[f"{prefix}.acc"] = acc
            for stage in last.get("stages") or []:
                fields = {k: v for k, v in stage.items() if k not in ("stage", "blocks")}
                out.update(_numbers(fields, f"stage{stage.get('stage', '?')}"))
            out.update(_numbers({k: v for k, v in (last.get("bottleneck") or {}).items()
                                 if k != "slowest_stage"}, "bottleneck"))
            out.update(_numbers({k: last.get(k) for k in ("step", "samples_per_s", "head_train_acc")}, "train"))
            for key in ("train_s", "wall_s"):
                out.update(_numbers(sum(r.get(key) or 0.0 for r in self.epochs), f"train.{key}_total"))
        return {k.replace("infer_ms_per_image", "ms_per_image"): v for k, v in out.items()
                if not k.endswith(".n") and "_ranges." not in k}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.yaml").is_file()


def load_run(path: Path) -> Run:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FFPipeError(f"cannot read {path / 'config.yaml'}: {exc}") from None
    records = read_records(path / "metrics.jsonl")
    epochs = [r for r in records if r.get("kind", "epoch") == "epoch" and "blocks" in r]
    tests = [r["test"] for r in records if r.get("kind") == "test" and isinstance(r.get("test"), dict)]
    return Run(path, flatten(config), epochs, tests[-1] if tests else None)


def find_runs(path: str | Path) -> list[Run]:
    """The run at `path`, or every run directory directly under it (a sweep), sorted by name."""
    path = Path(path)
    if not path.is_dir():
        raise FFPipeError(f"{path} is not a directory")
    if is_run_dir(path):
        return [load_run(path)]
    runs = [load_run(p) for p in sorted(path.iterdir()) if p.is_dir() and is_run_dir(p)]
    if not runs:
        raise FFPipeError(f"no run directories (config.yaml + metrics.jsonl) in {path}")
    return runs


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def grid_axes(runs: list[Run], sweep_dir: Path | None = None) -> list[str]:
    """Config keys that vary between the runs, except the seed: the sweep's grid axes.

    Their order is the sweep's `--grid` order when `sweep.json` is there, else the config's own order.
    """
    keys = [k for k in runs[0].config if k != "train.seed"]
    keys += [k for run in runs[1:] for k in run.config if k not in keys and k != "train.seed"]
    varying = [k for k in keys if len({_key(run.config.get(k)) for run in runs}) > 1]
    if sweep_dir is not None and (sweep_dir / SWEEP_FILE).is_file():
        order = [axis["key"] for axis in json.loads((sweep_dir / SWEEP_FILE).read_text()).get("axes", [])]
        varying.sort(key=lambda k: order.index(k) if k in order else len(order))
    return varying


@dataclass
class Group:
    """The runs of one configuration (every axis value equal), one per seed."""

    values: dict[str, Any]
    runs: list[Run]

    def label(self, shorts: dict[str, str] | None = None) -> str:
        if not self.values:
            return "all runs"
        return " ".join(f"{(shorts or {}).get(k, k)}={v}" for k, v in self.values.items())


def natural(value: Any) -> tuple:
    """A sort key under which numbers sort by value (16 before 128), then text, then lists element-wise."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return (1, str(value))
    if isinstance(value, list):
        return (2, tuple(natural(v) for v in value))
    return (0, value)


def group_runs(runs: list[Run], axes: list[str]) -> list[Group]:
    """Runs grouped by their axis values; groups sorted by those values (first axis slowest), runs by seed."""
    groups: dict[str, Group] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in axes}
        groups.setdefault(_key(list(values.values())), Group(values, [])).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
    return sorted(groups.values(), key=lambda g: tuple(natural(v) for v in g.values.values()))


@dataclass
class Row:
    """One configuration: its axis values, its finished runs and, per metric, (mean, std, n) over them."""

    values: dict[str, Any]
    runs: list[str]
    unfinished: list[str]
    stats: dict[str, tuple[float, float, int]]
