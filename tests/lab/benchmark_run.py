"""What the lab tier's benchmark tests share: one real `--quick` run of a benchmark script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_quick_benchmark(script: str, out: Path, timeout: int, *extra: str) -> dict:
    """Run `benchmarks/<script> --quick --out OUT` as a user would (one torch thread per process) and return
    its results.json; a failed run fails the test with the end of its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out),
                           *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())
