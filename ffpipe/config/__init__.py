"""Typed experiment configs, loaded from YAML, that read like a paper's hyperparameter table.

A config is a tree of dataclasses (`ffpipe.config.sections`: a typed field and a docstring per setting, the
allowed words of a setting as its `Literal` type). YAML gives the values, `--set a.b=c` overrides them, and
validation is strict: an unknown key (with a did-you-mean), a wrong type, a word not allowed, an out-of-range
value or an impossible combination is one `FFPipeError` line, because a typo in a 100-epoch run must cost
seconds, not a day. Each field is checked once, as it is read (`_coerce`); `validate` then checks the rules
that join fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ffpipe.config.sections import (
    AugmentConfig,
    Config,
    DataConfig,
    HeadConfig,
    LabelConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    Range,
    RunConfig,
    TrainConfig,
)
from ffpipe.errors import FFPipeError

DEFAULT_CONFIG = "configs/default.yaml"
"""The config `ffpipe train` and `ffpipe sweep` use when none is given and this file exists (a checkout)."""

__all__ = ["DEFAULT_CONFIG", "AugmentConfig", "Config", "DataConfig", "HeadConfig", "LabelConfig", "LossConfig",
           "ModelConfig", "OptimConfig", "PipelineConfig", "RunConfig", "TrainConfig", "apply_overrides", "dump_config",
           "from_dict", "load_config", "to_dict", "validate"]


def _fail(path: str, message: str) -> FFPipeError:
    return FFPipeError(f"config {path}: {message}" if path else f"config: {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_range(value: Any, bounds: Range, path: str) -> None:
    for name, ok in (("gt", lambda b: value > b), ("ge", lambda b: value >= b), ("lt", lambda b: value < b),
                     ("le", lambda b: value <= b)):
        bound = getattr(bounds, name)
        if bound is not None and not ok(bound):
            sign = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[name]
            raise _fail(path, f"must be {sign} {bound:g}, got {value!r}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` (types, `Literal` words, `Range`s), building nested
    dataclasses: the one validation pass of a field. bool is never an int here."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(tp)
        value = _coerce(value, base, path)
        for extra in extras:
            if isinstance(extra, Range):
                _check_range(value, extra, path)
        return value
    if origin is typing.Literal:
        words = typing.get_args(tp)
        if value not in words:
            guess = difflib.get_close_matches(str(value), [str(w) for w in words], n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise _fail(path, f"'{value}' is not one of {', '.join(map(str, words))}{hint}")
        return value
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
        errors = []
        for option in options:
            try:
                _coerce(value, option, path)
            except FFPipeError as exc:
                errors.append(str(exc))
        words = [e for e in errors if "is not one of" in e or "must be" in e]
        if words:  # the value had the right type for an option but not an allowed value: say which
            raise FFPipeError(words[0])
        names = " or ".join(_type_name(o) for o in options)
        raise _fail(path, f"expected {names}, got {type(value).__name__} {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(path, f"expected a list of {_type_name(item)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # a fixed-length record, written as a YAML list: [from, to, kind]
        items = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise _fail(path, f"expected a list of {len(items)} ({', '.join(_type_name(i) for i in items)}), "
                        f"got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, (v, item) in enumerate(zip(value, items))]
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


RETIRED = {"data.labels.negatives": "random"}
"""Fields that were removed because nothing read them, with the one value they ever took: run directories and
results written before keep them in config.yaml, and still load (any other value is an unknown key)."""


def _build(cls: type, values: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{path}.{key}" if path else str(key)
        if full in RETIRED and value == RETIRED[full]:
            continue
        if key not in hints:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else f"; known keys: {', '.join(names)}"
            raise _fail("", f"unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _check_combinations(cfg: Config) -> None:
    """Cross-field rules: each names the fields involved, so the fix is obvious from the one line."""
    m, loss = cfg.model, cfg.loss
    for name in ("width", "kernel", "pool", "stride", "in_pool"):
        if isinstance(getattr(m, name), list) and len(getattr(m, name)) != m.depth:
            raise _fail(f"model.{name}", f"has {len(getattr(m, name))} entries but model.depth is {m.depth}")
    group = loss.family == "group_ce"
    if group and cfg.data.labels.encoding != "none":
        raise _fail("data.labels.encoding", "loss.family group_ce takes the plain image: set it to 'none'")
    if not group and cfg.data.labels.encoding == "none":
        raise _fail("data.labels.encoding", f"'none' only works with loss.family group_ce, not {loss.family}")
    if group:
        from ffpipe.data.catalog import SPECS  # the class counts of the named datasets; no torch

        classes = SPECS[cfg.data.name].num_classes if cfg.data.name in SPECS else None
        uneven = [w for w in m.per_block("width") if classes and w % classes]
        if uneven:
            raise _fail("model.width", f"loss.family group_ce splits each block's channels into {classes} class "
                        f"groups, so every width must be a multiple of {classes}; got {uneven}")
    if group and cfg.data.labels.negatives_per_image != 1:
        raise _fail("data.labels.negatives_per_image", "group_ce has no negative stream; leave it at 1")
    if m.norm in ("group", "group_rms") and not group:
        raise _fail("model.norm", f"'{m.norm}' normalization needs loss.family group_ce")
    if m.type == "linear" and (m.shortcuts or any(p > 0 for p in m.per_block("in_pool"))):
        raise _fail("model.shortcuts" if m.shortcuts else "model.in_pool", "needs model.type conv")
    from ffpipe.ff.shortcuts import parse_shortcuts  # the topology rules live with the shortcuts; torch-only

    parse_shortcuts(m.shortcuts, m.depth)  # a bad topology is a config error, found at load
    if group and "goodness" in cfg.head.readouts:
        raise _fail("head.readouts", "group_ce has no label overlay, so no goodness readout; use 'group'")
    if not group and "group" in cfg.head.readouts:
        raise _fail("head.readouts", "the 'group' readout needs loss.family group_ce")
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


def validate(cfg: Config) -> Config:
    """Cross-field rules of a config whose fields already passed `_coerce` (types, words, ranges)."""
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
    """A config from a (YAML) tree: one pass over every field, then the cross-field rules."""
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
