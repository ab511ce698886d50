"""`ffpipe bench throughput`, and the benchmark branch of `ffpipe report DIR`.

`ffpipe.cli` registers the flags; `bench_report` regenerates a benchmark's results.md and plots from its
results.json, so `ffpipe report` can try it before treating DIR as a sweep. Heavy modules (torch, matplotlib)
are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ffpipe.errors import FFPipeError

BENCHMARKS = ("throughput", "scaling")


def cmd_throughput(args: argparse.Namespace) -> int:
    from ffpipe.lab.bench.throughput import run_benchmark

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
        from ffpipe.lab.bench.throughput_report import render
    elif kind == "scaling":
        from ffpipe.lab.bench.scaling_report import render
    else:
        raise FFPipeError(f"{file}: unknown benchmark {kind!r}; expected one of {list(BENCHMARKS)}")
    try:
        written = render(result, file.parent)
    except (KeyError, TypeError, ValueError) as exc:
        raise FFPipeError(f"{file} is not a complete {kind} result ({type(exc).__name__}: {exc})") from None
    for out in written or []:
        print(f"wrote {out}")
    return True
