"""Train named variants of one config side by side and tabulate what each learned.

    python benchmarks/variants.py --config CFG --out DIR [--set k=v ...] \\
        --variant NAME:k=v,k=v ... [--variant ...] [--title TEXT]

Every variant is a real `ffpipe train` run (one after another, never two at once) of CFG with the shared
`--set` overrides and then its own. DIR gets one run directory per variant plus:
- results.json: per variant its overrides, wall time, per-epoch validation readouts, per-block `acc_pair`
  (or the threshold accuracies / group accuracy, whichever the loss family reports) and per-block goodness
  readout accuracy, and the final test readouts;
- results.md: one row per variant;
- curves.png: validation linear and goodness/group accuracy per epoch, one line per variant.
A variant whose run directory already holds a test record is read, not retrained, so an interrupted study
resumes where it stopped. `--test-checkpoints` also scores every kept checkpoint on the test split
(`ffpipe eval`), for per-epoch test curves; keep enough of them with `--set run.keep_checkpoints=N`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ffpipe.run.plots import save_png, subplots
from ffpipe.run.records import read_records

READOUTS = ("linear", "goodness", "group")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:k=v,k=v`; commas inside brackets belong to a list value (`model.width=[16,32]`)."""
    name, _, sets = text.partition(":")
    parts, depth, current = [], 0, ""
    for char in sets:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return name, [s for s in [*parts, current] if s]


def train(config: str, shared: list[str], own: list[str], run_dir: Path) -> float:
    cmd = [sys.executable, "-m", "ffpipe.cli", "train", "--config", config, "--out", str(run_dir),
           "--set", "train.progress=false"]
    for item in shared + own:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"variant {run_dir.name} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - t0


def checkpoint_tests(run_dir: Path) -> list[dict]:
    from ffpipe.run.sequential import evaluate_checkpoint

    rows = []
    for ckpt in sorted((run_dir / "checkpoints").glob("epoch-*"), key=lambda p: int(p.name.split("-")[1])):
        if (ckpt / "manifest.json").is_file():
            result = evaluate_checkpoint(str(ckpt), "test")
            rows.append({"epoch": result["epoch"], **result["accuracy"]})
    return rows


def summarize(name: str, own: list[str], run_dir: Path, seconds: float | None) -> dict:
    records = read_records(run_dir / "metrics.jsonl")
    epochs = [r for r in records if "blocks" in r]
    test = next(r["test"] for r in records if r.get("kind") == "test")
    last = epochs[-1]
    local = {key: [b.get(key) for b in last["blocks"]] for key in ("acc_pair", "acc_pos", "acc_neg", "acc")
             if any(key in b for b in last["blocks"])}
    val = [{"epoch": r["epoch"], **{k: r["val"][k] for k in READOUTS if k in r["val"]}} for r in epochs if "val" in r]
    return {"name": name, "overrides": own, "seconds": seconds, "train_s": sum(r["train_s"] for r in epochs),
            "epochs": last["epoch"], "local": local, "val": val,
            "val_blocks": {k: v for k, v in epochs[-1].get("val", {}).items() if k.endswith("_blocks")},
            "test": {k: test[k] for k in test
                     if k in READOUTS or k.endswith(("_blocks", "_selected", "_selected_range"))}}


def markdown(rows: list[dict], title: str, command: str) -> str:
    lines = [f"# {title}\n", f"`{command}`\n",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, one run at a time.\n",
             "| variant | overrides | epochs | train s | local accuracy per block (last epoch) | "
             "goodness/group readout per block (val) | test linear | test goodness/group | "
             "test, range chosen on val |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        local = "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in vals if v is not None)
                          for k, vals in r["local"].items())
        blocks = "; ".join(" ".join(f"{v:.2f}" for v in vals) for vals in r["val_blocks"].values())
        scored = r["test"].get("goodness", r["test"].get("group"))
        name = next((k[: -len("_selected")] for k in r["test"] if k.endswith("_selected")), None)
        chosen = "-" if name is None else \
            f"{r['test'][name + '_selected']:.4f} (blocks {r['test'][name + '_selected_range']})"
        lines.append(f"| {r['name']} | {', '.join(r['overrides']) or '-'} | {r['epochs']} | {r['train_s']:.0f} | "
                     f"{local} | {blocks or '-'} | {r['test'].get('linear', float('nan')):.4f} | "
                     f"{'-' if scored is None else f'{scored:.4f}'} | {chosen} |")
    lines += ["\n## Per epoch (validation; test where the run's checkpoints were scored)\n",
              "| variant | epoch | val linear | val goodness/group | test linear | test goodness/group |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        tests = {t["epoch"]: t for t in r.get("test_per_epoch", [])}
        for v in r["val"]:
            t = tests.get(v["epoch"], {})
            cells = [v.get("linear"), v.get("goodness", v.get("group")), t.get("linear"),
                     t.get("goodness", t.get("group"))]
            shown = ["-" if c is None else f"{c:.4f}" for c in cells]
            lines.append(f"| {r['name']} | {v['epoch']} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(rows):
        epochs = [v["epoch"] for v in r["val"]]
        for ax, key in zip(axes, ("linear", "scored")):
            ys = [v.get("goodness", v.get("group")) if key == "scored" else v.get("linear") for v in r["val"]]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, marker=".", color=f"C{i % 10}", label=r["name"])
    axes[0].set(title="validation, linear readout", xlabel="epoch", ylabel="accuracy")
    axes[1].set(title="validation, goodness (or group) readout", xlabel="epoch", ylabel="accuracy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="shared", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:k=v,k=v")
    parser.add_argument("--title", default="Variants")
    parser.add_argument("--test-checkpoints", action="store_true", help="score every kept checkpoint on test")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.variant:
        name, own = parse_variant(text)
        run_dir = out / name
        done = (run_dir / "metrics.jsonl").is_file() and any(
            r.get("kind") == "test" for r in read_records(run_dir / "metrics.jsonl"))
        seconds = None if done else train(args.config, args.shared, own, run_dir)
        rows.append(summarize(name, own, run_dir, seconds))
        if args.test_checkpoints:
            rows[-1]["test_per_epoch"] = checkpoint_tests(run_dir)
        print(f"{name}: test {rows[-1]['test']}", flush=True)
    command = "python benchmarks/variants.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "results.json").write_text(json.dumps({"command": command, "machine": platform.platform(),
                                                  "variants": rows}, indent=1))
    (out / "results.md").write_text(markdown(rows, args.title, command))
    plot(rows, out / "curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
