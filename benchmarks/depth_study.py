"""Depth study (issue 13): group-goodness FF-CNNs of 4, 8, 14 and 17 blocks, plain and residual, one budget.

    python benchmarks/depth_study.py --out DIR [--depths 4 8 14 17] [--epochs 2] [--subset N]
                                     [--stages 2] [--set KEY=VALUE ...]

Every net is `configs/fashion_mnist_resnet17_cpu.yaml`'s recipe (DeeperForward's CWConv blocks, group norm,
AdamW + cosine) with only the model's depth, widths, strides and shortcuts changed, so depth and shortcuts are
the only variables. The layouts are `ffpipe.lab.bench.models.deep_layout`'s (widths 20/40/80/160, DeeperForward's
/ 5), which the throughput depth sweep (`benchmarks/depth_sweep.py`) times as well. Each net trains with
`benchmarks/variants.py` (real `ffpipe train` runs, one at a time,
pipelined on `--stages` stages), and DIR gets its results.json/md plus:
- depth.png: test accuracy (block range chosen on validation) against depth, plain vs residual, and the
  per-block validation group accuracy of every net (why depth does or does not help);
- depth.md: the table behind it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import variants

from ffpipe.errors import FFPipeError
from ffpipe.lab.bench.models import DEPTH_GROUPS, deep_layout
from ffpipe.run.plots import save_png, subplots

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_resnet17_cpu.yaml"
WIDTH = 20  # DeeperForward's widths / 5


def layout(depth: int, residual: bool) -> list[str]:
    """The `--set` overrides of one net of the study."""
    try:
        multiples, stride, joins = deep_layout(depth, residual)
    except FFPipeError as exc:
        raise SystemExit(str(exc)) from None
    width = [WIDTH * m for m in multiples]
    sets = [f"model.depth={depth}", f"model.width={width}".replace(" ", ""),
            f"model.stride={stride}".replace(" ", "")]
    return sets + ["model.shortcuts=[" + ",".join(f"[{a},{b},{k}]" for a, b, k in joins) + "]"]


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(12, 4.2))
    for kind, marker in (("plain", "o"), ("residual", "s")):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["depth"])
        axes[0].plot([r["depth"] for r in mine], [r["test_selected"] for r in mine], marker=marker, label=kind)
        for r in mine:
            axes[1].plot(range(len(r["val_blocks"])), r["val_blocks"], marker=".", linestyle="-" if kind == "plain"
                         else "--", label=f"{kind} {r['depth']}")
    axes[0].set(title="test accuracy, block range chosen on validation", xlabel="blocks", ylabel="accuracy",
                xticks=sorted(DEPTH_GROUPS))
    axes[0].legend()
    axes[1].set(title="validation group accuracy of each block alone", xlabel="block", ylabel="accuracy")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--depths", type=int, nargs="+", default=sorted(DEPTH_GROUPS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="data.train_subset (default: the full split)")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--set", dest="shared", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    shared = [f"train.epochs={args.epochs}", f"pipeline.stages={args.stages}", *args.shared]
    if args.subset:
        shared.append(f"data.train_subset={args.subset}")
    names = [(f"{kind}{d}", d, kind) for d in args.depths for kind in ("plain", "residual")]
    argv_variants = ["--config", str(CONFIG), "--out", args.out, "--title", "Depth study: plain vs residual"]
    for item in shared:
        argv_variants += ["--set", item]
    for name, d, kind in names:
        argv_variants += ["--variant", f"{name}:" + ",".join(layout(d, kind == "residual"))]
    variants.main(argv_variants)
    out = Path(args.out)
    studied = {r["name"]: r for r in json.loads((out / "results.json").read_text())["variants"]}
    rows = []
    for name, d, kind in names:
        r = studied[name]
        rows.append({"name": name, "depth": d, "kind": kind, "test_selected": r["test"]["group_selected"],
                     "range": r["test"]["group_selected_range"], "test_all_blocks": r["test"]["group"],
                     "val_blocks": r["val_blocks"]["group_blocks"], "train_s": r["train_s"],
                     "s_per_epoch": r["train_s"] / r["epochs"]})
    plot(rows, out / "depth.png")
    lines = ["# Depth study: group-goodness FF-CNNs, plain vs residual\n",
             f"`python benchmarks/depth_study.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n",
             "| net | blocks | test (range chosen on val) | range | test, all blocks | s/epoch | "
             "best single block (val) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        best = max(range(len(r["val_blocks"])), key=lambda i: r["val_blocks"][i])
        lines.append(f"| {r['kind']} | {r['depth']} | {r['test_selected']:.4f} | {r['range']} | "
                     f"{r['test_all_blocks']:.4f} | {r['s_per_epoch']:.0f} | {best}: {r['val_blocks'][best]:.4f} |")
    (out / "depth.md").write_text("\n".join(lines) + "\n")
    (out / "depth.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
