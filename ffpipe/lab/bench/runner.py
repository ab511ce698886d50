"""Start one real training run as a subprocess and read what it measured: the benchmarks' only way to run.

Every run is a normal `ffpipe train` / `ffpipe train-bp` (DDP under torchrun) command with one torch thread
per process (OMP_NUM_THREADS=1), so a benchmark measures exactly what a user would run. Throughput is read
from the run's own metrics.jsonl: the samples/s of one epoch's training steps (`timed_epoch`), so start-up,
process launch and evaluation never enter a rate.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
"""The repository root (configs/, launch/, benchmarks/ live here in a checkout)."""


def machine() -> dict:
    """What every results.json records about the machine it was measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": "cpu", "commit": commit,
            "threads_per_process": 1, "python": platform.python_version(), "platform": platform.platform(),
            "bench_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def ff_command(cfg: Path, stages: int, replicas: int, steps: int, out: Path) -> list[str]:
    """`ffpipe train` with `stages` x `replicas` processes (1 x 1 runs the sequential trainer in-process)."""
    return [sys.executable, "-m", "ffpipe.cli", "train", "--config", str(cfg), "--stages", str(stages),
            "--replicas", str(replicas), "--max-steps", str(steps), "--out", str(out)]


def bp_command(cfg: Path, workers: int, steps: int, out: Path, micro_batches: int = 1) -> list[str]:
    """`ffpipe train-bp`: one process, or DDP over `workers` processes under torchrun (gloo on the CPU);
    `micro_batches` > 1 accumulates gradients over that many micro-batches per rank (`train.micro_batches`)."""
    common = ["train-bp", "--config", str(cfg), "--max-steps", str(steps), "--out", str(out)]
    if micro_batches > 1:
        common += ["--set", f"train.micro_batches={micro_batches}"]
    if workers == 1:
        return [sys.executable, "-m", "ffpipe.cli", *common]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(workers),
            "-m", "ffpipe.cli", *common]


def run_command(cmd: list[str], timeout: float = 1800, threads: int = 1) -> tuple[int, str]:
    """Run `cmd` with OMP_NUM_THREADS=`threads`; return (exit code, stderr tail). A run past `timeout` is killed.

    Memory is not read here: each trainer records its own (`ffpipe.run.measure.MemoryMeter`); a child's
    `ru_maxrss` would include its parent's high-water mark."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return -9, f"killed after {timeout:g} s"
    return done.returncode, done.stderr[-3000:]


def epoch_records(out: Path) -> dict[int, dict]:
    """A run's epoch records by epoch number."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["epoch"]: r for r in map(json.loads, lines) if "epoch" in r}


def timed_run(cmd: list[str], out: Path, epoch: int = 2, timeout: float = 1800, threads: int = 1) -> dict:
    """Run `cmd` (which writes run dir `out`) and return its `epoch` record with the steps that epoch ran,
    and the wall time. A failed run raises RuntimeError with its stderr tail."""
    t0 = time.perf_counter()
    code, err = run_command(cmd, timeout, threads)
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{err}")
    records = epoch_records(out)
    if epoch not in records or epoch - 1 not in records and epoch > 1:
        raise RuntimeError(f"{out}: no epoch-{epoch} record; run more steps")
    steps = records[epoch]["step"] - (records[epoch - 1]["step"] if epoch > 1 else 0)
    return {"record": records[epoch], "steps": steps, "run_s": time.perf_counter() - t0}
