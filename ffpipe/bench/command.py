"""`ffpipe bench throughput`, and the benchmark branch of `ffpipe report DIR`.

`add_parser` registers `throughput` on `ffpipe bench`'s subparsers; `bench_report` regenerates a benchmark's
results.md and plots from its results.json, so `ffpipe report` can try it before treating DIR as a sweep.
Heavy modules (torch, matplotlib) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ffpipe.errors import FFPipeError

BENCHMARKS = ("throughput", "scaling")
MODEL_NAMES = ("mlp", "cnn", "deepcnn")  # ffpipe.bench.throughput.MODELS, named here without importing torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `ffpipe bench throughput` and `benchmarks/throughput.py`."""
    p.add_argument("--quick", action="store_true",
                   help="tiny models, 1 repetition, N-stage pipelines only, no time to accuracy: a smoke test")
    p.add_argument("--workers", default="2", help="comma-separated worker counts N >= 2 (default 2)")
    p.add_argument("--repeats", type=int, help="repetitions per configuration (default 3; quick 1)")
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help=f"comma-separated from {','.join(MODEL_NAMES)} (default all)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure time to accuracy (default: on in full mode; --quick --tta: a tiny smoke)")
    p.add_argument("--out", help="results dir (default benchmarks/results/throughput, quick: throughput_quick)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `throughput` (for `ffpipe bench`); its func takes `args` and returns an exit code."""
    p = subparsers.add_parser("throughput", help="FF pipeline vs DDP-BP throughput, memory and time to accuracy",
                              description="Runs real FF (sequential, pipelined) and BP (1 process, DDP) trainings "
                                          "side by side and writes results.json, results.md and PNG plots.")
    add_arguments(p)
    p.set_defaults(func=cmd_throughput)
    return p


def cmd_throughput(args: argparse.Namespace) -> int:
    from ffpipe.bench.throughput import run_benchmark

    return run_benchmark(args)


def bench_report(path: str | Path) -> bool:
    """If `path`/results.json is a benchmark result (a "benchmark" key), rewrite its results.md and plots from
    the JSON alone, print what was written and return True; otherwise False (not a benchmark dir)."""
    file = Path(path) / "results.json"
    if not file.is_file():
        return False
    try:
        result = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FFPipeError(f"cannot read {file}: {exc}") from None
    if not isinstance(result, dict) or "benchmark" not in result:
        return False
    kind = result["benchmark"]
    if kind == "throughput":
        from ffpipe.bench.throughput_report import render
    elif kind == "scaling":
        from ffpipe.bench.scaling_report import render
    else:
        raise FFPipeError(f"{file}: unknown benchmark {kind!r}; expected one of {list(BENCHMARKS)}")
    try:
        written = render(result, file.parent)
    except (KeyError, TypeError, ValueError) as exc:
        raise FFPipeError(f"{file} is not a complete {kind} result ({type(exc).__name__}: {exc})") from None
    for out in written or []:
        print(f"wrote {out}")
    return True
