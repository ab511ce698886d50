"""What an FF step costs against a BP step: the FF-sequential step / the BP twin's step, per deep net.

An FF block runs a forward and a weight gradient; a BP layer runs a forward, a weight gradient and an input
gradient, so by the kernels an FF step of a conv net should cost about 0.6-0.75 of a BP step. This measures
it on the throughput benchmark's nets and sizes (`ffpipe.lab.bench.models.FULL`, batch 128, 1 torch thread):
each measurement is a fresh process (`python -m ffpipe.lab.bench.steps ff|bp CFG WARMUP STEPS`) timing
STEPS steps after WARMUP, on batches drawn before the clock starts. FF and BP run in turn, FF BP FF BP ...,
and the ratio is taken pair by pair, so a machine whose speed drifts (ours does, by up to 20% between runs
of one command) moves both halves of a pair alike; the median pair is the result, min and max its spread.

    python benchmarks/step_ratio.py [--models tinycnn,cnn14,resnet17] [--pairs 6] [--steps 12]
    python benchmarks/step_ratio.py --quick --out /tmp/ratio          # small nets, 2 pairs (a lab test)
writes results.json and results.md to --out (default benchmarks/results/step_ratio). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ffpipe.lab.bench.models import DEEP, FULL, QUICK, config_text
from ffpipe.lab.bench.runner import machine

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.75  # the FF-beats-DDP issue's goal for cnn14 and resnet17


def measure(method: str, cfg: Path, warmup: int, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "ffpipe.lab.bench.steps", method, str(cfg), str(warmup), str(steps)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)
    if done.returncode:
        raise SystemExit(f"step_ratio: error: {method} on {cfg.name}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def net(name: str, cfg: Path, pairs: int, warmup: int, steps: int) -> dict:
    runs = [(measure("ff", cfg, warmup, steps), measure("bp", cfg, warmup, steps)) for _ in range(pairs)]
    ratios = [ff["step_ms"] / bp["step_ms"] for ff, bp in runs]
    return {"net": name, "pairs": pairs, "steps": steps, "warmup": warmup,
            "ff_step_ms": [ff["step_ms"] for ff, _ in runs], "bp_step_ms": [bp["step_ms"] for _, bp in runs],
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ff_step_ms_median": statistics.median(ff["step_ms"] for ff, _ in runs),
            "bp_step_ms_median": statistics.median(bp["step_ms"] for _, bp in runs)}


def report(result: dict) -> str:
    m = result["machine"]
    lines = ["# FF step / BP step", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, commit {m['commit']}, 1 torch thread per process; "
             f"`{result['command']}`, {result['wall_s'] / 60:.1f} min. Each row: {result['pairs']} pairs of fresh "
             f"processes (FF then BP), {result['steps']} timed steps each after {result['warmup']} warm-up steps.",
             "", f"| net | FF ms/step | BP ms/step | FF / BP (median pair) | min - max | goal <= {GOAL} |",
             "|---|---|---|---|---|---|"]
    for row in result["nets"]:
        met = "met" if row["ratio_median"] <= GOAL else "missed"
        lines.append(f"| {row['net']} | {row['ff_step_ms_median']:.0f} | {row['bp_step_ms_median']:.0f} | "
                     f"**{row['ratio_median']:.3f}** | {row['ratio_min']:.3f} - {row['ratio_max']:.3f} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEEP))
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="QUICK sizes, 2 pairs of 2 steps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_ratio"))
    args = ap.parse_args(argv)
    sizes, pairs, warmup, steps = (QUICK, 2, 1, 2) if args.quick else (FULL, args.pairs, 3, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), []
    for name in args.models.split(","):
        cfg = out / f"{name}.yaml"
        cfg.write_text(config_text(name, sizes[name]))
        rows.append(net(name, cfg, pairs, warmup, steps))
        print(f"{name}: FF/BP {rows[-1]['ratio_median']:.3f} ({rows[-1]['ratio_min']:.3f}-{rows[-1]['ratio_max']:.3f})",
              flush=True)
    result = {"machine": machine(), "command": " ".join(["python benchmarks/step_ratio.py", *(argv or sys.argv[1:])]),
              "quick": args.quick, "pairs": pairs, "steps": steps, "warmup": warmup, "nets": rows,
              "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
