"""Calibrate and check the partition cost model (`ffpipe.ff.partition`) against measured block times.

For each deep benchmark net (tinycnn, cnn14, resnet17 at their throughput-benchmark sizes, batch 128), time
every block's training step on a one-stage copy of the net (`measure_block_seconds`: compute + apply, median
of a few steps, 1 torch thread), then
- fit the two elementwise constants of the cost model by least squares, time ~ a·flops + b·out + c·in
  (per stream), over all blocks of all nets, and report them in FLOP-equivalents (b/a, c/a) beside the
  constants the code uses (`OUT_ELEMENT`, `IN_ELEMENT`);
- for P = 2, 3 and 4 stages, the split each rule picks (flops, cost, measured) and its slowest stage's share
  of the measured step: the bound each rule allows, 1 / that share, against the best possible (measured).

    python benchmarks/partition_cost.py [--steps 6] [--models tinycnn,cnn14,resnet17]
writes benchmarks/results/partition/{results.json,results.md}. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from ffpipe.config import from_dict
from ffpipe.data import load_for_config
from ffpipe.ff.blocks import block_specs
from ffpipe.ff.network import Network
from ffpipe.ff.partition import IN_ELEMENT, OUT_ELEMENT, block_flops, out_elements, partition
from ffpipe.lab.bench import runner
from ffpipe.lab.bench.models import FULL, config_text
from ffpipe.run.model import measure_block_seconds

OUT = Path(__file__).parent / "results" / "partition"


def measure(name: str, steps: int) -> dict:
    cfg = from_dict(yaml.safe_load(config_text(name, FULL[name])))
    dataset = load_for_config(cfg.data)
    specs = block_specs(cfg.model, dataset.image_shape)
    network = Network.derive(cfg, specs, dataset.num_classes)
    seconds = measure_block_seconds(cfg, dataset, network, torch.device("cpu"), steps=steps)
    k = network.negatives
    streams = 2 + k if k else 1
    return {"specs": specs, "negatives": k, "seconds": seconds,
            "features": [[f, streams * out_elements(s), streams * s.in_features]
                         for f, s in zip(block_flops(specs, k), specs)]}


def split_share(bounds: list[tuple[int, int]], seconds: list[float]) -> float:
    return max(sum(seconds[a:b]) for a, b in bounds) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", default="tinycnn,cnn14,resnet17")
    args = parser.parse_args()
    torch.set_num_threads(1)
    nets = {name: measure(name, args.steps) for name in args.models.split(",")}
    features = np.array([row for net in nets.values() for row in net["features"]], dtype=float)
    times = np.array([t for net in nets.values() for t in net["seconds"]])
    coef, *_ = np.linalg.lstsq(features, times, rcond=None)
    fitted = {"out_element": coef[1] / coef[0], "in_element": coef[2] / coef[0]}
    used = np.array([1.0, OUT_ELEMENT, IN_ELEMENT]) * coef[0]
    rel = {"fit": np.abs(features @ coef - times) / times, "used": np.abs(features @ used - times) / times,
           "flops_only": np.abs(features[:, 0] * (times @ features[:, 0]) / (features[:, 0] @ features[:, 0])
                                - times) / times}
    rows = []
    for name, net in nets.items():
        for stages in (2, 3, 4):
            shares = {how: split_share(partition(net["specs"], stages, how, net["negatives"], net["seconds"]),
                                       net["seconds"]) for how in ("flops", "cost", "measured")}
            rows.append({"model": name, "stages": stages, **{f"{h}_split": partition(
                net["specs"], stages, h, net["negatives"], net["seconds"]) for h in shares},
                **{f"{h}_bound": 1 / s for h, s in shares.items()}})
    result = {"benchmark": "partition_cost", "command": "python benchmarks/partition_cost.py",
              "machine": runner.machine(),
              "steps": args.steps, "fitted": fitted, "used": {"out_element": OUT_ELEMENT, "in_element": IN_ELEMENT},
              "relative_error": {k: {"median": float(np.median(v)), "max": float(v.max())} for k, v in rel.items()},
              "block_ms": {name: [1000 * t for t in net["seconds"]] for name, net in nets.items()}, "splits": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = ["# Partition cost model against measured block times", "",
             f"`{result['command']}` on {result['machine']['cpu']} ({result['machine']['cores']} cores), torch "
             f"{result['machine']['torch']}, 1 thread, commit {result['machine']['commit']}.", "",
             f"Fitted constants (FLOP-equivalents per activation element and stream): out {fitted['out_element']:.0f}, "
             f"in {fitted['in_element']:.0f}; the code uses out {OUT_ELEMENT}, in {IN_ELEMENT}.", "",
             "| model | error of a block's time | median | max |", "|---|---|---|---|"]
    for k, v in result["relative_error"].items():
        lines.append(f"| all | {k} | {v['median']:.0%} | {v['max']:.0%} |")
    lines += ["", "Per-block ms per step: " + "; ".join(
        f"{n}: " + ", ".join(f"{t:.0f}" for t in ms) for n, ms in result["block_ms"].items()), "",
        "Bound of each rule's split (1 / slowest stage's share of the measured step; P is ideal):", "",
        "| model | P | flops split | bound | cost split | bound | measured split | bound |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stages']} | " + " | ".join(
            f"{' '.join(f'{a}..{b - 1}' for a, b in r[f'{h}_split'])} | {r[f'{h}_bound']:.2f}"
            for h in ("flops", "cost", "measured")) + " |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
