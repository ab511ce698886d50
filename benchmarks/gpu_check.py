"""The first run on a GPU: does ffpipe's GPU path work, and what does an FF step cost there against BP?

Three checks, each a section of `results.json` and `results.md` in the output folder:
1. step: the sequential FF step and its BP twin's step (`ffpipe.lab.bench.steps`) of cnn14 and resnet17 at
   full width (`configs/fashion_mnist_*.yaml`, batch 128, 32x32), on the embedded Fashion-MNIST slice so that
   no download is needed: samples/s and the peak allocated device memory. DeeperForward reports its FF 1.43x
   faster than BP per epoch on one GPU.
2. determinism: two identical FF runs (`torch.use_deterministic_algorithms`) must end with identical weights.
3. pipeline: `ffpipe train --stages P` with every stage on the one device (on a GPU they share it over gloo,
   the wire staging activations through host memory), the residual net at P = 2 and the joint-head default
   config at P = 3: exit status, samples/s, the bottleneck bound (from CUDA events on a GPU), and the weights
   against the sequential trainer's on the same device (bitwise on the CPU; on a GPU the max difference is
   reported, since the cuDNN kernels the processes pick need not be the same).

    python benchmarks/gpu_check.py [--device cuda] [--out benchmarks/results/gpu_check]   # < 8 min on one GPU
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/check                 # < 1 min, a test runs it
--quick shrinks the nets (widths / 10, batch 32) and the step counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before CUDA starts

import torch  # noqa: E402
import yaml  # noqa: E402

from ffpipe.config import load_config, to_dict  # noqa: E402
from ffpipe.lab.bench import runner  # noqa: E402
from ffpipe.lab.bench.steps import bp_step, ff_step  # noqa: E402
from ffpipe.run.checkpoint import diff_checkpoints  # noqa: E402
from ffpipe.run.records import read_records  # noqa: E402
from ffpipe.run.sequential import SequentialRunner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"cnn14": ROOT / "configs" / "fashion_mnist_cnn14.yaml",
           "resnet17": ROOT / "configs" / "fashion_mnist_resnet17.yaml"}
SLICE = ["data.name=fashion_mnist_small", "train.progress=false"]


def overrides(name: str, device: str, quick: bool) -> list[str]:
    cfg = load_config(CONFIGS[name])
    extra = [*SLICE, f"train.device={device}"]
    if quick:
        extra += [f"model.width={[max(10, w // 10) for w in cfg.model.width]}", "data.batch_size=32"]
    return extra


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state.detach().cpu()]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in _tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in _tensors(item)]
    return []


def determinism(device: str, quick: bool, steps: int) -> dict:
    """Two fresh runs of `steps` FF steps of resnet17 under deterministic algorithms: identical weights?"""
    torch.use_deterministic_algorithms(True)
    try:
        weights = []
        for _ in range(2):
            runner = SequentialRunner(load_config(CONFIGS["resnet17"], overrides("resnet17", device, quick)))
            runner.start(Path("."), resume=False)  # nothing is read or written there without resume
            runner.set_epoch(1)
            for step, packet in zip(range(1, steps + 1), runner.batches(1, 0)):
                runner.train_step(step, packet)
            weights.append([t for stage in runner.stages for t in _tensors(stage.state_dict())])
    finally:
        torch.use_deterministic_algorithms(False)
    identical = all(torch.equal(a, b) for a, b in zip(*weights))
    return {"steps": steps, "tensors": len(weights[0]), "identical": identical}


def ffpipe_train(cfg_path: Path, out: Path, stages: int, steps: int,
                 sequential: bool = False) -> tuple[int, float, str]:
    """`ffpipe train` as the benchmarks run it (`runner.ff_command`); (exit code, wall s, stderr tail)."""
    cmd = runner.ff_command(cfg_path, stages, 1, steps, out) + (["--sequential"] if sequential else [])
    t0 = time.perf_counter()
    code, err = runner.run_command(cmd, timeout=300)
    return code, time.perf_counter() - t0, err


def pipeline(name: str, cfg_path: Path, sets: list[str], stages: int, steps: int, work: Path) -> dict:
    """`ffpipe train --stages P` against `--sequential` on the same device, same config, same steps."""
    cfg = load_config(cfg_path, sets)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    rc, seconds, tail = ffpipe_train(path, work / f"{name}-pipe", stages, steps)
    seq_rc, _, seq_tail = ffpipe_train(path, work / f"{name}-seq", stages, steps, sequential=True)
    row = {"name": name, "stages": stages, "steps": steps, "exit": rc, "wall_s": seconds, "sequential_exit": seq_rc}
    if rc != 0 or seq_rc != 0:
        return {**row, "error": (tail if rc else seq_tail).strip().splitlines()[-1:]}
    epoch = next(r for r in read_records(work / f"{name}-pipe" / "metrics.jsonl") if r["kind"] == "epoch")
    diff = diff_checkpoints(work / f"{name}-seq", work / f"{name}-pipe")
    return {**row, "samples_per_s": epoch["samples_per_s"], "bound_samples_per_s":
            epoch["bottleneck"]["bound_samples_per_s"], "fraction_of_bound": epoch["bottleneck"]["fraction"],
            "identical_to_sequential": diff["identical"],
            "max_abs_diff": max(r["block"]["max_abs_diff"] for r in diff["blocks"])}


def report(result: dict) -> str:
    m = result["machine"]
    lines = [f"# GPU-path check ({result['device']}{', quick' if result['quick'] else ''})", "",
             f"{m.get('gpu') or m['cpu']}, torch {m['torch']}, commit {m['commit']}; "
             f"`{result['command']}`, {result['wall_s']:.0f} s.", "",
             "| net | FF samples/s | BP samples/s | FF step / BP step | FF peak MiB | BP peak MiB |",
             "|---|---|---|---|---|---|"]
    mib = lambda b: f"{b / 2**20:.0f}" if b is not None else "-"  # noqa: E731
    for name, row in result["step"].items():
        ff, bp = row["ff"], row["bp"]
        lines.append(f"| {name} | {ff['samples_per_s']:.0f} | {bp['samples_per_s']:.0f} | "
                     f"{ff['step_ms'] / bp['step_ms']:.2f} | {mib(ff['peak_bytes'])} | {mib(bp['peak_bytes'])} |")
    d = result["determinism"]
    lines += ["", f"Determinism: two runs of {d['steps']} steps, {d['tensors']} tensors, identical: "
              f"**{d['identical']}**.", "",
              "| pipeline | P | exit | samples/s | bound | fraction | identical to sequential | max abs diff |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["pipeline"]:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['stages']} | {row['exit']} | error: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['name']} | {row['stages']} | {row['exit']} | {row['samples_per_s']:.0f} | "
                     f"{row['bound_samples_per_s']:.0f} | {row['fraction_of_bound']:.2f} | "
                     f"{row['identical_to_sequential']} | {row['max_abs_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="small nets, few steps (for a CPU test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here (run with --device cpu --quick for the CPU check)",
              file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    warmup, steps = (1, 2) if args.quick else (5, 20)
    t0 = time.perf_counter()
    step = {}
    for name in CONFIGS:
        cfg = load_config(CONFIGS[name], overrides(name, args.device, args.quick))
        step[name] = {"ff": ff_step(cfg, warmup, steps), "bp": bp_step(cfg, warmup, steps)}
    resnet = overrides("resnet17", args.device, args.quick)
    runs = [pipeline("resnet17", CONFIGS["resnet17"], resnet, 2, 4 if args.quick else 30, out / "runs")]
    if not args.quick:
        runs.append(pipeline("default-joint-head", ROOT / "configs" / "default.yaml",
                             [f"train.device={args.device}", "train.progress=false"], 3, 30, out / "runs"))
    result = {"machine": {**runner.machine(), "device": args.device,
                          "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
              "device": args.device, "quick": args.quick, "command": " ".join(["python benchmarks/gpu_check.py",
                                                                             *(argv or sys.argv[1:])]),
              "step": step, "determinism": determinism(args.device, args.quick, 2 if args.quick else 10),
              "pipeline": runs}
    result["wall_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(report(result))
    print(report(result))
    failed = [r["name"] for r in runs if r["exit"] or r.get("sequential_exit")] + \
        ([] if result["determinism"]["identical"] else ["determinism"])
    if failed:
        print(f"gpu_check: error: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
