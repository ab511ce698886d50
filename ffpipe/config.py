"""Typed experiment configs, loaded from YAML, that read like a paper's hyperparameter table.

A config is a tree of dataclasses. YAML gives the values, `--set a.b=c` overrides them, and validation is
strict: an unknown key (with a did-you-mean), a wrong type, an out-of-range value or an impossible combination
is one `FFPipeError` line, because a typo in a 100-epoch run must cost seconds, not a day.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffpipe.errors import FFPipeError


@dataclass
class LabelConfig:
    """How the label enters the input (seed 000 §2.1; Hinton's one-hot; `none` for channel-group losses)."""

    encoding: str = "fourier"
    label_set: int = 1
    k: float = 0.35
    k_reading: str = "share"
    negatives: str = "random"
    negatives_per_image: int = 1  # distinct wrong labels per image, each its own negative stream


@dataclass
class DataConfig:
    name: str = "fashion_mnist_small"
    dir: str | None = None
    split_seed: int = 0
    val_split: str = "random"
    batch_size: int = 100
    eval_batch_size: int = 500
    train_subset: int | None = None
    labels: LabelConfig = field(default_factory=LabelConfig)


@dataclass
class ModelConfig:
    """A stack of FF blocks. `width`, `kernel` and `pool` take one value for every block or one per block."""

    type: str = "conv"
    depth: int = 3
    width: int | list[int] = 16
    kernel: int | list[int] = 5
    stride: int = 1
    padding: str = "same"
    pool: int | list[int] = 0
    batchnorm: bool = False
    activation: str = "relu"
    init: str = "default"
    norm: str = "rms"
    preact_norm: str = "none"
    eps: float = 1e-8

    def per_block(self, name: str) -> list[int]:
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value] * self.depth


@dataclass
class LossConfig:
    """The local goodness objective of every block; see `ffpipe.ff.objectives` for the equations."""

    family: str = "bce"
    goodness: str = "sum"
    threshold: float | None = None
    alpha: float = 4.0
    margin: float = 0.0
    group_goodness: str = "mean_sq"
    peer_weight: float = 0.0
    peer_momentum: float = 0.9
    significance: bool = False
    significance_lr: float = 1e-3
    significance_at_inference: bool = True
    exclude_first: bool = False


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class HeadConfig:
    """The linear readout (seed 000 §2.3): `joint` is the papers' classifier, `local` needs no backward message."""

    mode: str = "joint"
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    exclude_first: bool = True
    ema_decay: float = 0.0  # > 0: the linear readout reads an average of the slices' weights (ffpipe.ff.head)
    readouts: list[str] = field(default_factory=lambda: ["linear", "goodness"])


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    eval_every: int = 1
    max_steps: int | None = None
    chunk_mode: str = "local"
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    progress: bool = True


@dataclass
class PipelineConfig:
    stages: int = 1
    partition: str | list[int] = "flops"
    queue_depth: int = 2
    replicas: int = 1


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None
    keep_checkpoints: int = 2


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.labels.encoding": ("onehot", "fourier", "none"),
    "data.labels.negatives": ("random",),
    "data.val_split": ("random", "last"),
    "data.labels.k_reading": ("share", "blend"),
    "model.type": ("linear", "conv"),
    "model.padding": ("same", "valid"),
    "model.activation": ("relu", "relu_fullgrad"),
    "model.init": ("default", "loewe"),
    "model.norm": ("rms", "group"),
    "loss.family": ("bce", "symba", "ncon", "hinge", "group_ce"),
    "model.preact_norm": ("none", "layer", "rms"),
    "loss.goodness": ("sum", "mean"),
    "loss.group_goodness": ("mean_sq", "mean"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.schedule": ("constant", "cooldown", "multistep", "cosine"),
    "head.mode": ("joint", "local", "none"),
    "head.optimizer": ("adam", "adamw", "sgd"),
    "train.chunk_mode": ("local", "backprop"),
    "train.device": ("cpu", "cuda", "auto"),
    "train.precision": ("fp32", "bf16"),
}
READOUTS = ("linear", "goodness", "group")
POSITIVE = {
    "data.batch_size", "data.eval_batch_size", "data.labels.negatives_per_image", "data.train_subset",
    "model.depth", "model.width", "model.kernel",
    "model.stride", "model.eps", "train.epochs", "train.eval_every", "train.max_steps", "pipeline.stages",
    "pipeline.queue_depth", "pipeline.replicas", "run.keep_checkpoints",
}
NON_NEGATIVE = {
    "optim.lr", "optim.weight_decay", "optim.momentum", "head.lr", "head.weight_decay", "head.momentum",
    "loss.peer_weight", "loss.significance_lr", "loss.alpha", "loss.margin", "model.pool", "optim.gamma",
    "data.split_seed", "train.seed",
}


def _fail(path: str, message: str) -> FFPipeError:
    return FFPipeError(f"config {path}: {message}" if path else f"config: {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses; bool is never an int here."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except FFPipeError:
                continue
        names = " or ".join(_type_name(o) for o in options)
        raise _fail(path, f"expected {names}, got {type(value).__name__} {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(path, f"expected a list of {_type_name(item)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(path, f"expected a section (mapping), got {type(value).__name__} {value!r}")
        return _build(tp, value, path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `5e-5` (no dot) as a string; a paper's table writes it that way
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise _fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if not isinstance(value, tp):
        raise _fail(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else f"; known keys: {', '.join(names)}"
            raise _fail("", f"unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _leaves(obj: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _check_ranges(cfg: Config) -> None:
    for path, value in _leaves(cfg):
        if path in CHOICES and value not in CHOICES[path]:
            guess = difflib.get_close_matches(str(value), CHOICES[path], n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise _fail(path, f"'{value}' is not one of {', '.join(CHOICES[path])}{hint}")
        values = value if isinstance(value, list) else [value]
        numbers = [v for v in values if isinstance(v, (int, float))]
        if path in POSITIVE and any(v <= 0 for v in numbers):
            raise _fail(path, f"must be > 0, got {value!r}")
        if path in NON_NEGATIVE and any(v < 0 for v in numbers):
            raise _fail(path, f"must be >= 0, got {value!r}")


def _check_combinations(cfg: Config) -> None:
    """Cross-field rules: each names the fields involved, so the fix is obvious from the one line."""
    m, loss = cfg.model, cfg.loss
    for name in ("width", "kernel", "pool"):
        if isinstance(getattr(m, name), list) and len(getattr(m, name)) != m.depth:
            raise _fail(f"model.{name}", f"has {len(getattr(m, name))} entries but model.depth is {m.depth}")
    if not 0.0 <= cfg.data.labels.k < 1.0:
        raise _fail("data.labels.k", f"must be in [0, 1), got {cfg.data.labels.k}")
    if not 0.0 <= cfg.head.ema_decay < 1.0:
        raise _fail("head.ema_decay", f"must be in [0, 1) (0 turns the readout average off), got {cfg.head.ema_decay}")
    if cfg.data.labels.label_set not in (1, 2):
        raise _fail("data.labels.label_set", f"must be 1 or 2, got {cfg.data.labels.label_set}")
    group = loss.family == "group_ce"
    if group and cfg.data.labels.encoding != "none":
        raise _fail("data.labels.encoding", "loss.family group_ce takes the plain image: set it to 'none'")
    if not group and cfg.data.labels.encoding == "none":
        raise _fail("data.labels.encoding", f"'none' only works with loss.family group_ce, not {loss.family}")
    if group and cfg.data.labels.negatives_per_image != 1:
        raise _fail("data.labels.negatives_per_image", "group_ce has no negative stream; leave it at 1")
    if m.norm == "group" and not group:
        raise _fail("model.norm", "'group' normalization needs loss.family group_ce")
    if group and "goodness" in cfg.head.readouts:
        raise _fail("head.readouts", "group_ce has no label overlay, so no goodness readout; use 'group'")
    if not group and "group" in cfg.head.readouts:
        raise _fail("head.readouts", "the 'group' readout needs loss.family group_ce")
    for readout in cfg.head.readouts:
        if readout not in READOUTS:
            raise _fail("head.readouts", f"'{readout}' is not one of {', '.join(READOUTS)}")
    if cfg.head.mode == "none" and "linear" in cfg.head.readouts:
        raise _fail("head.readouts", "the 'linear' readout needs head.mode joint or local")
    if m.type == "linear" and any(p > 0 for p in m.per_block("pool")):
        raise _fail("model.pool", "pooling needs model.type conv")
    if cfg.optim.schedule == "multistep" and not cfg.optim.milestones:
        raise _fail("optim.milestones", "schedule multistep needs at least one milestone epoch")
    if cfg.pipeline.stages > m.depth:
        raise _fail("pipeline.stages", f"{cfg.pipeline.stages} stages cannot split {m.depth} blocks")
    if cfg.data.batch_size % cfg.pipeline.replicas:
        raise _fail("data.batch_size", f"{cfg.data.batch_size} does not split into {cfg.pipeline.replicas} "
                    "equal replica shards (pipeline.replicas)")
    partition = cfg.pipeline.partition
    if isinstance(partition, list):
        if len(partition) != cfg.pipeline.stages or sum(partition) != m.depth or min(partition) < 1:
            raise _fail("pipeline.partition", f"{partition} must give each of the {cfg.pipeline.stages} "
                        f"stages >= 1 block and sum to model.depth {m.depth}")
    elif partition not in ("flops", "measured", "equal"):
        raise _fail("pipeline.partition", f"'{partition}' is not flops, measured, equal or a list of block counts")


def validate(cfg: Config) -> Config:
    _check_ranges(cfg)
    _check_combinations(cfg)
    return cfg


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise FFPipeError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings to a raw YAML tree; values parse as YAML, so `[2,1,1]` and `1e-3` work."""
    for item in overrides:
        keys, value = _parse_override(item)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise FFPipeError(f"--set {item}: '{key}' is not a section")
        node[keys[-1]] = value
    return tree


def from_dict(tree: dict | None) -> Config:
    return validate(_build(Config, tree or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None), apply `--set` overrides, validate."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FFPipeError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FFPipeError(f"config {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise FFPipeError(f"config {p} must be a mapping of sections, got {type(tree).__name__}")
    return from_dict(apply_overrides(tree, overrides or []))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Save the effective config next to a run's outputs, so every result can be rerun as it was."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
