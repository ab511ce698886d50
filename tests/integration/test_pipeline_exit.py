"""A completed pipeline run exits 0, every time: every channel ends with its STOP before the process group goes.

Issue 11: the `joint` head's error channel never carried a STOP, so a receive stayed posted in its pump
thread, and tearing gloo down under it ended finished runs with `terminate called without an active
exception` (SIGABRT) now and then. One run proves little, so each case runs several times, through the
canonical torchrun entry point. `benchmarks/exit_stress.py` runs 40 in a row under CPU load.

The second run of each case runs under NCCL's pair semantics (`FFPIPE_EMULATE_NCCL=1`, `ffpipe.pipeline.wire`):
there the joint head's error channel, had it shared its rank pair's process group with the activations, or a
clock synchronized the whole device, would deadlock at step 1, as it would on GPUs. It must end with the very
weights of the run without emulation, heads included (their staleness is fixed by the schedule, not timing).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffpipe.run.checkpoint import diff_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def torchrun(cfg: Path, out: Path, stages: int, emulate_nccl: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={stages}",
           str(ROOT / "launch" / "train.py"), "--config", str(cfg), "--stages", str(stages), "--max-steps", "8",
           "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "FFPIPE_EMULATE_NCCL": str(int(emulate_nccl))})


@pytest.mark.parametrize("stages", [3])  # P = 2 under the emulation: test_pipeline's joint-head test
def test_completed_joint_head_runs_exit_zero_every_time(tmp_path, tiny_config, stages):
    cfg = tiny_config("joint")
    for emulate in (False, True):
        result = torchrun(cfg, tmp_path / f"run{int(emulate)}", stages, emulate)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "terminate called" not in output, (emulate, output[-1500:])
        assert "test accuracy" in output and ("NCCL pair emulation on" in output) == emulate
    diff = diff_checkpoints(tmp_path / "run0", tmp_path / "run1")
    assert diff["identical"] and all(row["head"]["identical"] for row in diff["blocks"] if "head" in row), diff
