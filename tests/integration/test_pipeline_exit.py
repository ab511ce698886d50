"""A completed pipeline run exits 0, every time: every channel ends with its STOP before the process group goes.

Issue 11: the `joint` head's error channel never carried a STOP, so a receive stayed posted in its pump
thread, and tearing gloo down under it ended finished runs with `terminate called without an active
exception` (SIGABRT) now and then. One run proves little, so each case runs several times, through the
canonical torchrun entry point. `benchmarks/exit_stress.py` runs 40 in a row under CPU load.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 2  # per stage count, 4 runs in all; the 40-run proof under load is benchmarks/exit_stress.py


def torchrun(cfg: Path, out: Path, stages: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={stages}",
           str(ROOT / "launch" / "train.py"), "--config", str(cfg), "--stages", str(stages), "--max-steps", "8",
           "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("stages", [2, 3])
def test_completed_joint_head_runs_exit_zero_every_time(tmp_path, tiny_config, stages):
    cfg = tiny_config("joint")
    for attempt in range(REPEATS):
        result = torchrun(cfg, tmp_path / f"run{attempt}", stages)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "terminate called" not in output, (attempt, output[-1500:])
        assert "test accuracy" in output
