"""What every test tier shares: the `ffpipe` command line in-process (`run_cli`), a tiny MLP config
(`tiny_config`), and the tiers themselves. Tests under tests/lab/ test the lab tooling (sim, bench, analysis):
they carry the `lab` marker, which the default run deselects (`python -m pytest -q -m lab` runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffpipe.cli import build_parser

TINY_MLP = """\
data: {batch_size: 50, labels: {encoding: onehot}}
model: {type: linear, depth: 3, width: 32}
head: {mode: %s}
train: {epochs: 1, progress: false}
"""
"""A 3×32 MLP on the embedded slice: a few training steps take well under a second."""

LAB = Path(__file__).parent / "lab"


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if LAB in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture
def run_cli():
    """Parse argv as `ffpipe` does and run the command in this process; errors propagate (no exit code)."""

    def run(*argv: str) -> int:
        args = build_parser().parse_args(list(argv))
        args.argv = list(argv[1:])
        return args.func(args)

    return run


@pytest.fixture
def tiny_config(tmp_path):
    """Write the tiny MLP config with a `joint` (default) or `local` head; returns its path."""

    def write(head: str = "joint") -> Path:
        path = tmp_path / f"tiny-{head}.yaml"
        path.write_text(TINY_MLP % head)
        return path

    return write
