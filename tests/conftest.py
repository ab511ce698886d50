"""Shared test helpers: the `ffpipe` command line, in-process."""

from __future__ import annotations

from ffpipe.cli import build_parser


def run_cli(*argv: str) -> int:
    """Parse `argv` as `ffpipe` does and run the command in this process; errors propagate (no exit code)."""
    args = build_parser().parse_args(list(argv))
    args.argv = list(argv[1:])
    return args.func(args)
