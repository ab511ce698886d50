"""Sweep grids: `--grid key=v1,v2,...` axes, their cartesian product with the seeds, and run names.

A grid point is one configuration (one value per axis); a run is a point × a seed. Every run is an ordinary
run directory named after its values, `DIR/width=16_kernel=3-seed0/`, so a sweep can be read, resumed or
reported from its directories alone.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ffpipe.errors import FFPipeError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def _number_or_text(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; a grid of learning rates means numbers, so we fix that."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return value


@dataclass(frozen=True)
class Axis:
    """One swept config key and its values, in the order given."""

    key: str
    values: tuple[Any, ...]


def parse_axis(text: str) -> Axis:
    """`model.width=16,32` → Axis("model.width", (16, 32)). Values are YAML scalars or flow lists, so
    `model.width=[16,32],[32,32]` sweeps two per-block width lists."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise FFPipeError(f"--grid expects key=v1,v2,..., got '{text}'")
    if key == "train.seed":
        raise FFPipeError("--grid train.seed: seeds are their own axis; use --seeds")
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError:
        raise FFPipeError(f"--grid {key}: cannot read the values '{raw}' (comma-separated YAML)") from None
    if not values or any(v is None or isinstance(v, dict) for v in values):
        raise FFPipeError(f"--grid {key}: every value must be a number, a string or a list, got '{raw}'")
    values = [_number_or_text(v) for v in values]
    names = [value_name(v) for v in values]
    if len(set(names)) != len(names):
        raise FFPipeError(f"--grid {key}: repeated value in '{raw}'")
    return Axis(key, tuple(values))


def parse_seeds(text: str) -> list[int]:
    """`5` → seeds 0..4; `1,3,7` → exactly those."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise FFPipeError(f"--seeds expects a count (5) or a list (1,3,7), got '{text}'") from None
    if "," not in text:
        if seeds[0] < 1:
            raise FFPipeError(f"--seeds must be at least 1, got {seeds[0]}")
        return list(range(seeds[0]))
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise FFPipeError(f"--seeds: seeds must be distinct and >= 0, got '{text}'")
    return seeds


def check_axes(axes: list[Axis]) -> None:
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise FFPipeError(f"--grid {key} is given twice; put all its values in one --grid")


def value_name(value: Any) -> str:
    """A value as it appears in a run name: lists joined by 'x' ([2, 1] → 2x1), unsafe characters → '-'."""
    if isinstance(value, list):
        return "x".join(value_name(v) for v in value)
    return _UNSAFE.sub("-", str(value))


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key (model.width → width), or the whole key where that is ambiguous."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def override(key: str, value: Any) -> str:
    """A `--set` string for `value`. JSON is valid YAML, so strings stay strings and lists stay lists."""
    return f"{key}={json.dumps(value)}"


@dataclass(frozen=True)
class Point:
    """One run of a sweep: a value per axis, and a seed."""

    values: tuple[tuple[str, Any], ...]
    seed: int

    def name(self, shorts: dict[str, str]) -> str:
        parts = "_".join(f"{shorts[key]}={value_name(value)}" for key, value in self.values)
        return f"{parts}-seed{self.seed}" if parts else f"seed{self.seed}"

    def overrides(self) -> list[str]:
        return [override(key, value) for key, value in self.values] + [f"train.seed={self.seed}"]


def expand(axes: list[Axis], seeds: list[int]) -> list[Point]:
    """The cartesian product of the axes (first axis slowest) × the seeds (fastest)."""
    check_axes(axes)
    combos = itertools.product(*(axis.values for axis in axes))
    return [Point(tuple(zip((a.key for a in axes), combo)), seed) for combo in combos for seed in seeds]
