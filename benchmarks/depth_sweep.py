"""Depth sweep: FF pipeline (2 stages) against DDP-BP (2 workers) on group-goodness CNNs of 4, 8, 14 and 17 blocks,
plain and residual: samples/s and memory per worker as depth grows.

Why: FF's claim over backprop grows with depth (BP's backward crosses every layer and keeps every activation
alive; an FF stage holds its own blocks' one step). The nets are `ffpipe.lab.bench.models.deep_layout`'s
(the depth study's; 14 plain is CNN-14), at the throughput benchmark's deep-net size (width 20, batch 128,
2560 training images, `FULL`), timed exactly as that benchmark times a row (`ffpipe.lab.bench.throughput.run_once`:
a real `ffpipe train --stages 2` or `ffpipe train-bp` under torchrun, 1 torch thread per process, epoch 2 timed).
Each repetition runs a net's FF pipeline and then its DDP-BP, so a drifting machine moves both halves of a
pair alike; the ratio is taken per repetition and its median reported.

    python benchmarks/depth_sweep.py [--depths 4 8 14 17] [--repeats 2] [--out benchmarks/results/depth_sweep]
    python benchmarks/depth_sweep.py --quick --out /tmp/sweep       # widths 10, 256 images, 1 repetition

writes results.json, results.md and depth_sweep.png to --out. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ffpipe.lab.bench import runner
from ffpipe.lab.bench.models import DEPTH_GROUPS, FULL, QUICK, TIMED_EPOCH, config_text, deep_net, timed_steps
from ffpipe.lab.bench.throughput import grad_bytes, run_once
from ffpipe.run.plots import save_png, subplots

METHODS = (("ff_pipeline", 2), ("ddp_bp", 1))  # (method, stages) on 2 workers
MIB = 2 ** 20


def measure_net(depth: int, residual: bool, size, repeats: int, work: Path) -> dict:
    """One net's repetitions of both methods; the row of medians and the per-repetition ratios."""
    net = deep_net(depth, residual)
    cfg = work / f"d{depth}{'r' if residual else 'p'}.yaml"
    cfg.write_text(config_text(net, size))
    grads, steps = grad_bytes(cfg), timed_steps(size)
    reps = {m: [] for m, _ in METHODS}
    for k in range(repeats):
        for method, stages in METHODS:
            rep, out = run_once(method, cfg, stages, 1, 2, steps, work, grads, size.batch)
            shutil.rmtree(out)
            reps[method].append(rep)
            print(f"depth {depth} {'residual' if residual else 'plain'} {method} rep {k + 1}/{repeats}: "
                  f"{rep['samples_per_s']:,.0f} samples/s", flush=True)
    ff, bp = reps["ff_pipeline"], reps["ddp_bp"]
    ratios = [f["samples_per_s"] / b["samples_per_s"] for f, b in zip(ff, bp)]
    mem = [f["tensor_memory_bytes"] / b["tensor_memory_bytes"] for f, b in zip(ff, bp)]
    med = lambda reps, key: statistics.median(r[key] for r in reps)  # noqa: E731
    return {"depth": depth, "kind": "residual" if residual else "plain", "title": net.title.format(w=size.width),
            "ff_samples_per_s": med(ff, "samples_per_s"), "ddp_samples_per_s": med(bp, "samples_per_s"),
            "ff_over_ddp": statistics.median(ratios), "ff_over_ddp_per_rep": ratios,
            "ff_tensor_mib": med(ff, "tensor_memory_bytes") / MIB,
            "ddp_tensor_mib": med(bp, "tensor_memory_bytes") / MIB,
            "memory_ff_over_ddp": statistics.median(mem), "partition": ff[0]["partition"],
            "bottleneck_fraction": med(ff, "bottleneck_fraction"), "repetitions": reps}


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = subplots(1, 3, figsize=(15, 4.2))
    for kind, style in (("plain", "-"), ("residual", "--")):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["depth"])
        depths = [r["depth"] for r in mine]
        axes[0].plot(depths, [r["ff_samples_per_s"] for r in mine], "o" + style, color="C0",
                     label=f"FF pipeline, {kind}")
        axes[0].plot(depths, [r["ddp_samples_per_s"] for r in mine], "s" + style, color="C3", label=f"DDP-BP, {kind}")
        axes[1].plot(depths, [r["ff_over_ddp"] for r in mine], "o" + style, label=kind)
        axes[2].plot(depths, [r["ff_tensor_mib"] for r in mine], "o" + style, color="C0", label=f"FF pipeline, {kind}")
        axes[2].plot(depths, [r["ddp_tensor_mib"] for r in mine], "s" + style, color="C3", label=f"DDP-BP, {kind}")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    ticks = sorted({r["depth"] for r in rows})
    axes[0].set(title="samples/s, 2 workers", xlabel="blocks", ylabel="samples/s", xticks=ticks)
    axes[1].set(title="FF pipeline / DDP-BP samples/s", xlabel="blocks", xticks=ticks)
    axes[2].set(title="peak live tensor MiB per worker", xlabel="blocks", xticks=ticks)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def report(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = ["# Depth sweep: FF pipeline 2 stages vs DDP-BP 2 workers\n",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, commit {m['commit']}, 1 torch thread per process; "
             f"`{s['command']}`, {result['wall_s'] / 60:.1f} min. Width {s['width']}, batch {s['batch']}, "
             f"{s['train_subset']} training images, epoch {TIMED_EPOCH} timed, {s['repeats']} repetition(s) "
             "(medians; the ratio is the median of the per-repetition ratios). Memory: peak live tensor bytes per "
             "worker (the larger stage for FF).\n",
             "| blocks | kind | FF pipeline samples/s | DDP-BP samples/s | FF / DDP (per rep) | FF MiB | DDP MiB | "
             "FF / DDP memory | split | of bound |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = ", ".join(f"{x:.2f}" for x in r["ff_over_ddp_per_rep"])
        lines.append(f"| {r['depth']} | {r['kind']} | {r['ff_samples_per_s']:,.0f} | {r['ddp_samples_per_s']:,.0f} | "
                     f"**{r['ff_over_ddp']:.2f}** ({per}) | {r['ff_tensor_mib']:.1f} | {r['ddp_tensor_mib']:.1f} | "
                     f"{r['memory_ff_over_ddp']:.2f} | {r['partition']} | {r['bottleneck_fraction']:.2f} |")
    return "\n".join(lines) + "\n\n![depth sweep](depth_sweep.png)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=sorted(DEPTH_GROUPS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(runner.ROOT / "benchmarks" / "results" / "depth_sweep"))
    args = parser.parse_args(argv)
    bad = [d for d in args.depths if d not in DEPTH_GROUPS]
    if bad or args.repeats < 1:
        parser.error(f"depths must be among {sorted(DEPTH_GROUPS)} and --repeats >= 1")
    size = (QUICK if args.quick else FULL)["cnn14"]
    repeats = 1 if args.quick else args.repeats
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_net(d, residual, size, repeats, Path(tmp)) for d in args.depths for residual in (False, True)]
    command = "python benchmarks/depth_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "depth_sweep", "machine": runner.machine(), "wall_s": time.perf_counter() - t0,
              "settings": {"command": command.strip(), "repeats": repeats, "width": size.width, "batch": size.batch,
                           "train_subset": size.subset, "workers": 2},
              "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(report(result))
    plot(rows, out / "depth_sweep.png")
    print(f"wrote {out}/results.json, results.md, depth_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
