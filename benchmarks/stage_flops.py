"""How close does one FF stage step come to the machine's matmul speed?

Measured side by side in one process: the FLOP/s of `Stage.step` for one linear FF block (positive, negative
and neutral streams stacked into one batch, local BCE loss, Adam step) against a plain `torch.mm` doing the
same FLOPs in one call ([5B, 1000] @ [1000, 1000]). FLOPs counted for the stage step: forward over the 3B
stacked rows and weight gradient over the 2B rows that carry a loss (block inputs are detached, so no input
gradient):
    flops = 2·in·out·(3B + 2B)
A conv block is timed too; its FLOP/s are lower because CPU convolutions (im2col / direct kernels in oneDNN)
reach a smaller fraction of peak than one large GEMM, and pooling, ReLU and the RMS norm are memory-bound.

    python benchmarks/stage_flops.py [--threads 2] [--repeats 5] [--steps 30]
writes benchmarks/results/stage_flops/{results.json,results.md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ffpipe.config import load_config
from ffpipe.data import Dataset, Split
from ffpipe.ff.blocks import block_specs
from ffpipe.ff.network import Network
from ffpipe.ff.packet import PacketSource
from ffpipe.ff.stage import Recipe, Stage

OUT = Path(__file__).parent / "results" / "stage_flops"


def synthetic_dataset(shape: tuple[int, int, int], n: int = 2000) -> Dataset:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g))
    return Dataset("synthetic", split, split, split, 10, tuple(str(i) for i in range(10)), "synthetic")


def time_stage(overrides: list[str], shape, steps: int) -> tuple[float, int]:
    """Seconds per `Stage.step` (median of `steps`), and the FLOPs of one step."""
    cfg = load_config(None, overrides + ["head.mode=none", "head.readouts=[goodness]", "train.progress=false"])
    data = synthetic_dataset(shape)
    specs = block_specs(cfg.model, shape)
    stage = Stage(Recipe.of(cfg), Network.derive(cfg, specs, 10), 0, len(specs))
    packets = list(PacketSource(cfg, data).train_packets(epoch=1))[: steps + 5]
    times = []
    for i, packet in enumerate(packets):
        t0 = time.perf_counter()
        stage.step(packet)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    b = cfg.data.batch_size
    flops = sum(s.flops() * 5 * b for s in specs)
    return statistics.median(times), flops


def time_matmul(rows: int, inner: int, cols: int, steps: int) -> float:
    a, w = torch.randn(rows, inner), torch.randn(inner, cols)
    times = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        torch.mm(a, w)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, width = 100, 1000
    mlp = ["model.type=linear", "model.depth=1", f"model.width={width}", f"data.batch_size={b}",
           "data.labels.encoding=onehot", "model.init=loewe"]
    conv = ["model.type=conv", "model.depth=1", "model.width=32", "model.kernel=3", f"data.batch_size={b}",
            "data.labels.encoding=onehot"]
    rows = []
    for name, overrides, shape in (("linear 1000->1000", mlp, (1, 1, 1000)),
                                   ("conv 16->32 3x3 on 28x28", conv, (16, 28, 28))):
        reps = []
        for _ in range(args.repeats):
            step_s, flops = time_stage(overrides, shape, args.steps)
            mm_s = time_matmul(5 * b, width, width, args.steps)
            reps.append({"step_s": step_s, "step_gflops": flops / step_s / 1e9,
                         "matmul_gflops": 2 * 5 * b * width * width / mm_s / 1e9})
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        rows.append({"model": name, "batch": b, **med, "ratio": med["step_gflops"] / med["matmul_gflops"],
                     "repetitions": reps})
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__, "device": "cpu"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["| block | batch | stage step GFLOP/s | matmul [500x1000]@[1000x1000] GFLOP/s | ratio |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['step_gflops']:.1f} | {r['matmul_gflops']:.1f} | "
                     f"{r['ratio']:.2f} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
