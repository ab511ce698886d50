"""Do completed pipeline runs exit 0, every time, under load? Runs the canonical command N times in a row.

    python benchmarks/exit_stress.py [--runs 40] [--burners 2] [--stages 2] [--max-steps 12]
                                     [--config configs/default.yaml] [--out DIR]

Each run is `torchrun --standalone --nproc-per-node P launch/train.py --config CFG --stages P --max-steps N`,
the command issue 11 found ending in SIGABRT (`terminate called without an active exception`) after a
finished run. `--burners` CPU-bound processes (a busy loop each) run beside every run, so the stages are
descheduled at awkward moments as on a loaded machine. A run counts as clean when torchrun exits 0 and no
stage printed `terminate called`. Results (one row per run plus the count) go to DIR/results.json and
DIR/results.md; the default DIR is benchmarks/results/exit_stress/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def burn(stop) -> None:
    """A CPU-bound busy loop until `stop` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def one_run(args, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.stages}",
           str(ROOT / "launch" / "train.py"), "--config", args.config, "--stages", str(args.stages),
           "--max-steps", str(args.max_steps), "--out", str(run_dir), "--set", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    output = result.stdout + result.stderr
    aborted = "terminate called" in output
    return {"returncode": result.returncode, "terminate_called": aborted, "seconds": time.perf_counter() - t0,
            "clean": result.returncode == 0 and not aborted,
            "tail": "" if result.returncode == 0 and not aborted else output[-600:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exit_stress"))
    args = parser.parse_args(argv)
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for p in burners:
        p.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.runs):
                row = one_run(args, Path(tmp) / f"run{i}")
                rows.append(row)
                print(f"run {i + 1}/{args.runs}: exit {row['returncode']}"
                      f"{'  terminate called' if row['terminate_called'] else ''}  {row['seconds']:.1f} s", flush=True)
    finally:
        stop.set()
        for p in burners:
            p.join()
    clean = sum(r["clean"] for r in rows)
    summary = {"runs": len(rows), "clean": clean, "burners": args.burners, "stages": args.stages,
               "max_steps": args.max_steps, "config": os.path.relpath(args.config, ROOT)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / "results.json").write_text(json.dumps({"summary": summary, "machine": machine, "runs": rows}, indent=1))
    lines = ["# Exit codes of completed pipeline runs under load\n",
             f"`python benchmarks/exit_stress.py --runs {args.runs} --burners {args.burners} --stages {args.stages} "
             f"--max-steps {args.max_steps}` on {machine['platform']}, {machine['cpus']} CPUs.\n",
             f"**{clean} of {len(rows)} runs exited 0 without `terminate called`**, with {args.burners} CPU-bound "
             "processes beside them.\n", "| run | exit code | terminate called | seconds |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['returncode']} | {'yes' if r['terminate_called'] else 'no'} | {r['seconds']:.1f} |"
              for i, r in enumerate(rows)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"{clean} of {len(rows)} runs clean")
    return 0 if clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
