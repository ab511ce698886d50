"""Accuracy against CPU-seconds on MNIST and Fashion-MNIST: ffpipe's committed runs beside the peer engines' own code.

Why CPU-seconds: the peers and ffpipe use the cores differently (threads in one process, a pipeline of
processes), so wall time favours whoever uses more cores; CPU-seconds is what a run costs. ffpipe's points are
read from committed `metrics.jsonl` files (`cpu_s` and the validation group readout per epoch, the test
readout of the block range chosen on validation at the end). The peer points are the issue's measurements of
the peers' unmodified code on a 2-core VM of this class, 1 torch thread, first epoch (not re-run here):
CwComp (AAAI 2024) and DeeperForward's TinyCNN at full width (ICLR 2025); CwComp's Fashion-MNIST epoch was not
timed, so its CPU-seconds there are its MNIST epoch's (the same net on as many images).

The depth table puts the 4-, 14- and 17-block group-goodness nets side by side at one budget (about an hour of
wall time on the full Fashion-MNIST, each net given the epochs that fit), so it says whether depth and
shortcuts pay at this budget; nets, widths and epochs are read from each run's config.yaml.

    python benchmarks/accuracy_vs_cpu.py [--out DIR]   # README.md and accuracy_vs_cpu.png (default: the results dir)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ffpipe.run.plots import save_png, subplots
from ffpipe.run.records import read_records

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy"
MNIST_FAST = "ffpipe mnist_fast.yaml (TinyCNN ÷5, 2 stages, batch 32, 3 epochs)"
DATASETS = {  # dataset: ({our run label: run dir}, [(peer, readout, test accuracy, CPU-seconds) after epoch 1])
    "MNIST": ({f"{MNIST_FAST}, seed {seed}": f"mnist_fast/seed{seed}" for seed in range(3)},
              [("CwComp", "softmax head", 0.9841, "688"), ("CwComp", "group goodness readout", 0.9667, "688"),
               ("DeeperForward TinyCNN (full width)", "group goodness readout", 0.9553, "1139")]),
    "Fashion-MNIST": ({"ffpipe fashion_mnist_tinycnn_cpu.yaml (TinyCNN ÷5, 2 stages, batch 128, 10 epochs), seed 0":
                       "tinycnn_cpu/fashion_mnist_10ep",
                       "ffpipe fashion_mnist_tinycnn_hour.yaml (TinyCNN ÷2.5, flips, 2 stages, batch 128, 20 epochs), "
                       "seed 0": "tinycnn_hour/fashion_mnist_20ep"},
                      [("CwComp", "softmax head", 0.8564, "≈688"),
                       ("CwComp", "group goodness readout", 0.8285, "≈688")]),
}

DEPTH_HOUR = {"TinyCNN ÷2.5": "tinycnn_hour/fashion_mnist_20ep", "CNN-14 ÷5": "deep_hour/cnn14_fashion_mnist_20ep",
              "ResNet-17 ÷5": "deep_hour/resnet17_fashion_mnist_14ep"}


def ours(run: str) -> dict:
    records = read_records(RESULTS / run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    test = next(r for r in records if r["kind"] == "test")["test"]
    return {"cpu_s": [r["cpu_s"] for r in epochs], "val": [r["val"]["group"] for r in epochs],
            "test": test["group_selected"], "wall_s": sum(r["wall_s"] for r in epochs), "test_record": test}


def depth_section(ax) -> list[str]:
    """The one-hour depth table, and each net's validation curve drawn on `ax` (the Fashion-MNIST panel)."""
    lines = ["## Depth at one hour (Fashion-MNIST, full data)\n",
             "| net | blocks | shortcuts | widths | epochs | **test**, range chosen on val | test, all blocks | "
             "best single block, test | wall (train + val) | CPU-seconds | source |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, (name, run) in enumerate(DEPTH_HOUR.items()):
        r, model = ours(run), yaml.safe_load((RESULTS / run / "config.yaml").read_text())["model"]
        test, widths = r["test_record"], model["width"]
        if run not in DATASETS["Fashion-MNIST"][0].values():  # the panel's own runs are drawn already
            ax.plot(r["cpu_s"], r["val"], "o-", color=f"C{k + 2}", markersize=3, label=f"ffpipe {name} (val per epoch)")
            ax.plot([r["cpu_s"][-1]], [r["test"]], "*", markersize=12, color=f"C{k + 2}", label=f"ffpipe {name} (test)")
        best = max(range(len(test["group_blocks"])), key=test["group_blocks"].__getitem__)
        first, last = test["group_selected_range"]
        lines.append(f"| {name} | {model['depth']} | {len(model.get('shortcuts') or [])} | "
                     f"{'-'.join(str(w) for w in dict.fromkeys(widths))} | {len(r['val'])} | "
                     f"**{100 * r['test']:.2f}%** (blocks {first}-{last}) | {100 * test['group']:.2f}% | "
                     f"{100 * test['group_blocks'][best]:.2f}% (block {best}) | {r['wall_s'] / 60:.0f} min | "
                     f"{r['cpu_s'][-1]:.0f} | [{run}]({run}/metrics.jsonl) |")
    return lines + [""]


def section(dataset: str, ax) -> list[str]:
    """One dataset's table rows, and its points drawn on `ax`."""
    runs, peers = DATASETS[dataset]
    lines = [f"## {dataset}\n", "| system | readout | accuracy | CPU-seconds | source |", "|---|---|---|---|---|"]
    for k, (label, run) in enumerate(runs.items()):
        r = ours(run)
        name = f"{label.split(' (')[0]}, {label.rsplit(', ', 1)[-1]}"
        ax.plot(r["cpu_s"], r["val"], "o-", color=f"C{k}", label=f"{name} (val per epoch)")
        ax.plot([r["cpu_s"][-1]], [r["test"]], "*", markersize=12, color=f"C{k}", label=f"{name} (test)")
        for cpu, val in zip(r["cpu_s"], r["val"]):
            lines.append(f"| {label} | group readout, validation | {100 * val:.2f}% | {cpu:.0f} | "
                         f"[{run}]({run}/metrics.jsonl) |")
        lines.append(f"| {label} | group readout, range chosen on val, **test** | **{100 * r['test']:.2f}%** | "
                     f"{r['cpu_s'][-1]:.0f} ({r['wall_s']:.0f} s wall) | [{run}]({run}/metrics.jsonl) |")
    for k, (system, readout, acc, cpu) in enumerate(peers):
        ax.plot([float(cpu.strip("≈"))], [acc], "s^v"[k], markersize=9, color=("k", "0.45", "C3")[k],
                label=f"{system}, {readout} (epoch 1)")
        lines.append(f"| {system} | {readout}, test | {100 * acc:.2f}% | {cpu} | the peer's own code, epoch 1 |")
    ax.set(xlabel="CPU-seconds of training", ylabel=f"{dataset} accuracy", title=f"accuracy per CPU-second, {dataset}")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = subplots(1, len(DATASETS), figsize=(13, 6.5))
    fig.subplots_adjust(bottom=0.36, wspace=0.25)
    lines = ["# Accuracy per CPU-second\n", __doc__.split("\n\n")[1].replace("\n", " ") + "\n",
             "`python benchmarks/accuracy_vs_cpu.py` regenerates this file and `accuracy_vs_cpu.png`.\n"]
    for dataset, ax in zip(DATASETS, axes):
        lines += section(dataset, ax)
    lines += depth_section(axes[-1])
    for ax in axes:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    save_png(fig, out / "accuracy_vs_cpu.png")
    lines.append("![accuracy vs CPU-seconds](accuracy_vs_cpu.png)\n")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'README.md'}, accuracy_vs_cpu.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
