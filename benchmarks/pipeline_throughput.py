"""Pipeline vs one stage, measured side by side in one invocation, with one thread per process.

Every configuration is a real `ffpipe train` run (the pipelined ones start one process per stage through
torchrun, gloo on loopback); throughput is read from the run's metrics.jsonl: samples/s of the training
steps of the second epoch (the first one holds the start-up and warm-up), as recorded by the trainer
(sequential) or by the coordinator (pipeline: replica-0 samples over the slowest stage's training wall time).
The bottleneck bound is 1 / the slowest stage's measured compute time per step.

    python benchmarks/pipeline_throughput.py [--repeats 3] [--steps 100] [--quick]
writes benchmarks/results/pipeline/{results.json,results.md,throughput.png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from ffpipe.lab.bench import runner

OUT = runner.ROOT / "benchmarks" / "results" / "pipeline"
MLP = """\
data: {{batch_size: 100, labels: {{encoding: onehot}}}}
model: {{type: linear, depth: {depth}, width: {width}}}
head: {{mode: local, exclude_first: true, readouts: [linear]}}
train: {{epochs: 100, eval_every: 1000, progress: false}}
"""
CNN = """\
data: {batch_size: 100, labels: {encoding: fourier}}
model: {type: conv, depth: 4, width: [64, 16, 16, 16], kernel: [5, 3, 3, 3], pool: [0, 2, 0, 0]}
head: {mode: local, readouts: [linear]}
train: {epochs: 100, eval_every: 1000, progress: false}
"""


def run(config: str, stages: int, steps: int, extra: list[str], workdir: Path) -> dict:
    cfg = workdir / f"cfg-{abs(hash(config))}.yaml"
    cfg.write_text(config)
    out = Path(tempfile.mkdtemp(dir=workdir))
    epoch = runner.timed_run(runner.ff_command(cfg, stages, 1, steps, out) + extra, out)["record"]
    row = {"samples_per_s": epoch["samples_per_s"]}
    if "stages" in epoch:
        row["idle_pct"] = [s["idle_pct"] for s in epoch["stages"]]
        row["bound_samples_per_s"] = epoch["bottleneck"]["bound_samples_per_s"]
        row["bound_fraction"] = epoch["bottleneck"]["fraction"]
        row["blocks_per_stage"] = [s["blocks"] for s in epoch["stages"]]
    return row


def measure(name, config, stages, steps, extra, repeats, workdir) -> dict:
    reps = [run(config, stages, steps, extra, workdir) for _ in range(repeats)]
    rates = [r["samples_per_s"] for r in reps]
    summary = {"name": name, "stages": stages, "extra": extra, "median_samples_per_s": statistics.median(rates),
               "min": min(rates), "max": max(rates), "repetitions": reps}
    if "bound_fraction" in reps[0]:
        summary["median_bound_fraction"] = statistics.median(r["bound_fraction"] for r in reps)
        summary["median_idle_pct"] = [statistics.median(col) for col in zip(*(r["idle_pct"] for r in reps))]
        summary["blocks_per_stage"] = reps[0]["blocks_per_stage"]
    print(f"{name}: {summary['median_samples_per_s']:,.0f} samples/s", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="60 warm-up steps (epoch 1), the rest timed")
    parser.add_argument("--quick", action="store_true", help="small widths, 1 repeat (a smoke run)")
    args = parser.parse_args()
    width, steps, repeats = (200, 70, 1) if args.quick else (2000, args.steps, args.repeats)
    mlp = MLP.format(depth=4, width=width)
    balanced = MLP.format(depth=4, width=f"[{width}, {width}, {width}, 784]")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, config in ((f"MLP 4x{width}", mlp), (f"MLP {width}-{width}-{width}-784 (balanced)", balanced)):
            one = measure(f"{label}, 1 stage (sequential)", config, 1, steps, [], repeats, work)
            two = measure(f"{label}, 2 stages [2,2]", config, 2, steps, ["--set", "pipeline.partition=[2,2]"],
                          repeats, work)
            two["speedup_vs_1_stage"] = two["median_samples_per_s"] / one["median_samples_per_s"]
            rows += [one, two]
        for depth in (1, 4):
            row = measure(f"MLP 4x{width}, 2 stages, queue_depth {depth}", mlp, 2, steps,
                          ["--set", "pipeline.partition=[2,2]", "--set", f"pipeline.queue_depth={depth}"], repeats,
                          work)
            rows.append(row)
        for how in ("equal", "flops", "measured"):
            rows.append(measure(f"unbalanced CNN, 2 stages, partition {how}", CNN, 2, steps,
                                ["--set", f"pipeline.partition={how}"], repeats, work))
    machine = runner.machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, "steps": steps, "rows": rows}, indent=2))
    lines = ["| configuration | samples/s (median, min–max) | vs 1 stage | fraction of bound | idle % per stage |",
             "|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['speedup_vs_1_stage']:.2f}×" if "speedup_vs_1_stage" in r else ""
        frac = f"{r['median_bound_fraction']:.2f}" if "median_bound_fraction" in r else ""
        idle = ", ".join(f"{v:.0f}" for v in r.get("median_idle_pct", []))
        lines.append(f"| {r['name']} | {r['median_samples_per_s']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f}) | "
                     f"{speed} | {frac} | {idle} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, OUT / "throughput.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    names = [r["name"] for r in rows]
    ax.barh(names, [r["median_samples_per_s"] for r in rows], xerr=[
        [r["median_samples_per_s"] - r["min"] for r in rows], [r["max"] - r["median_samples_per_s"] for r in rows]])
    ax.invert_yaxis()
    ax.set_xlabel("training samples/s (1 thread per process, 2-core CPU)")
    ax.set_title("ffpipe: pipeline vs one stage")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
