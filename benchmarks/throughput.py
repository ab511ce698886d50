"""FF pipeline vs data-parallel BP (DDP), side by side in one invocation, at one global batch per step.

For each model and a worker count N, every configuration below is a real run started as a subprocess with
one torch thread per process (OMP_NUM_THREADS=1), and its throughput is read from the run's metrics.jsonl:
- FF pipeline, N stages (`ffpipe train --stages N`), and every other stages × replicas shape with
  stages · replicas = N (e.g. N = 2: 1 stage × 2 replicas); replicas shard each global batch;
- FF sequential on 1 worker (`ffpipe train --stages 1`);
- DDP-BP on N workers (torchrun `launch/train_bp.py`, each rank a 1/N shard of the global batch);
- BP on 1 worker (`ffpipe train-bp`).
Throughput is samples/s of the second epoch's training steps (epoch 1 is warm-up: start-up, allocator, caches);
the runs stop one step into epoch 3 so that the final evaluation (and its activation traffic) falls outside the
timed epoch. Time per epoch = 6000 / samples_per_s (the embedded set's 6000 training images). Speedup is against
the same method on 1 worker; utilisation = speedup / N (as PFF reports it, anchors §2). Peak memory per worker is
the max over ranks (or stages) of the peak resident set size on the CPU, which includes the ~300 MB torch runtime
of every process; bytes per step per worker are a stage's activation bytes out (FF, measured by the wire) plus,
for replicated stages, the ring all-reduce volume of its block gradients 2(N−1)/N × bytes (computed, as the BP
baseline computes `allreduce_bytes_per_step`); the joint head's parameters are not counted (head.mode=local).
Each pipelined run is also replayed in `ffpipe.sim` from its own measured stage times and bytes; the summary's
`sim_max_rel_error` is the worst relative gap between that prediction and the measured samples/s.

    python benchmarks/throughput.py [--quick] [--workers 2] [--repeats 3] [--models mlp,cnn,deepcnn] [--out DIR]
writes results.json, results.md and PNG plots into DIR (default benchmarks/results/throughput/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 6000  # the embedded fashion_mnist_small training split
HEAD = "head: {mode: local, exclude_first: true, readouts: [linear]}\n"
TRAIN = "train: {epochs: 100, eval_every: 100000, progress: false}\n"
MODELS = {
    "mlp": ("wide MLP 4x{w} (linear)", "data: {{batch_size: {b}, labels: {{encoding: onehot}}}}\n"
            "model: {{type: linear, depth: 4, width: {w}}}\n"),
    "cnn": ("Scodellaro-style CNN 3x{w} 5x5, Fourier labels",
            "data: {{batch_size: {b}, labels: {{encoding: fourier, label_set: 1, k: 0.35}}}}\n"
            "model: {{type: conv, depth: 3, width: {w}, kernel: 5, pool: 0}}\n"),
    "deepcnn": ("deep CNN 8x{w} 3x3, pool after blocks 3 and 6",
                "data: {{batch_size: {b}, labels: {{encoding: onehot}}}}\n"
                "model: {{type: conv, depth: 8, width: {w}, kernel: 3, pool: [0, 0, 2, 0, 0, 2, 0, 0]}}\n"),
}
DEPTH = {"mlp": 4, "cnn": 3, "deepcnn": 8}
FULL = {"batch": 100, "widths": {"mlp": 2000, "cnn": 16, "deepcnn": 32}}
QUICK = {"batch": 1000, "widths": {"mlp": 100, "cnn": 4, "deepcnn": 4}}
# anchors_numbers_and_mechanisms.md §1d (DeeperForward Table 5, CIFAR-10 per-epoch speedups) and §2 (PFF).
ANCHORS = {"DeeperForward pipeline (GPUs)": ([1, 2, 4], [1.0, 1.75, 2.48]),
           "BP-DDP in DeeperForward (GPUs)": ([1, 2, 4], [1.0, 1.59, 2.61]),
           "PFF 4x2000 MLP (nodes)": ([1, 4], [1.0, 3.75])}
ROW_FIELDS = ("model", "method", "label", "stages", "replicas", "workers", "processes", "oversubscribed",
              "samples_per_s", "min_samples_per_s", "max_samples_per_s", "epoch_s", "speedup_vs_1_worker",
              "utilisation", "ff_over_ddp_throughput", "peak_memory_bytes_per_worker",
              "comm_bytes_per_step_per_worker", "bottleneck_fraction", "repetitions")
SUMMARY_FIELDS = ("ff_speedup_2w", "bottleneck_fraction_2w", "ff_over_ddp_throughput_2w",
                  "memory_ratio_ff_over_ddp", "sim_max_rel_error")


def _wait(cmd: list[str], env: dict, timeout: float) -> tuple[int, str, int]:
    """Run `cmd`; return (exit code, stderr tail, peak RSS in bytes of the process tree's largest process).

    `os.wait4` gives the child's own rusage, whose ru_maxrss covers its waited-for descendants (Linux KiB)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace")[-3000:], usage.ru_maxrss * 1024


def command(method: str, cfg: Path, stages: int, replicas: int, workers: int, steps: int, out: Path) -> list[str]:
    common = ["--config", str(cfg), "--max-steps", str(steps), "--out", str(out)]
    if method.startswith("ff"):
        return [sys.executable, "-m", "ffpipe.cli", "train", "--stages", str(stages), "--replicas", str(replicas),
                *common]
    if workers == 1:
        return [sys.executable, "-m", "ffpipe.cli", "train-bp", *common]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(workers),
            str(ROOT / "launch" / "train_bp.py"), *common]


def block_grad_bytes(cfg_path: Path) -> list[int]:
    """Bytes of every FF block's parameters (= its gradients), built as the stages build them."""
    from ffpipe.config import load_config
    from ffpipe.data import load_dataset
    from ffpipe.nn import block_specs, build_block

    cfg = load_config(str(cfg_path), [])
    shape = load_dataset(cfg.data.name, cfg.data.dir, cfg.data.split_seed).image_shape
    return [sum(p.numel() * p.element_size() for p in build_block(s, 0).parameters())
            for s in block_specs(cfg.model, shape)]


def simulated(stages: list[dict], steps: int, batch: int, replicas: int) -> float:
    """`ffpipe.sim`'s prediction of this run's samples/s from its own measured per-stage compute time and
    message bytes per step over the `cpu-loopback` link preset (queue depth 2, the config default): it checks the
    schedule model (queues, transfers), not the compute model, which the measured times replace. The measured
    compute already holds the replicas' gradient all-reduce (`Stage._apply` syncs inside the timed update), so
    no gradient bytes are passed to the simulator again."""
    from ffpipe.sim import StageSpec, link_preset, simulate_pipeline

    specs = [StageSpec(forward_s=s["compute_s_per_step"], update_s=0.0, out_bytes=s["bytes_out"] / steps,
                       blocks=tuple(s["blocks"]))
             for s in stages]
    return simulate_pipeline(specs, batch // replicas, link=link_preset("cpu-loopback"), replicas=replicas).throughput


def run_once(method: str, cfg: Path, stages: int, replicas: int, workers: int, steps: int, work: Path,
             grads: list[int], batch: int) -> dict:
    """One run; the figures of its epoch-2 record."""
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = command(method, cfg, stages, replicas, workers, steps, out)
    t0 = time.perf_counter()
    code, err, tree_rss = _wait(cmd, {**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{err}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_epoch = {r["epoch"]: r for r in records if "epoch" in r}
    if 2 not in by_epoch:
        raise RuntimeError(f"{out}: no epoch-2 record; raise --steps")
    rec, steps2 = by_epoch[2], by_epoch[2]["step"] - by_epoch[1]["step"]
    row = {"samples_per_s": rec["samples_per_s"], "timed_steps": steps2, "run_s": time.perf_counter() - t0,
           "bottleneck_fraction": None}
    if "stages" in rec:
        row["peak_memory_bytes"] = max(s["peak_memory_bytes"] for s in rec["stages"])
        ring = 2 * (replicas - 1) / replicas
        row["comm_bytes_per_step"] = max(s["bytes_out"] / steps2 + ring * sum(grads[i] for i in s["blocks"])
                                         for s in rec["stages"])
        row["bottleneck_fraction"] = rec["bottleneck"]["fraction"]
        row["idle_pct"] = [s["idle_pct"] for s in rec["stages"]]
        row["sim_samples_per_s"] = simulated(rec["stages"], steps2, batch, replicas)
    elif "allreduce_bytes_per_step" in rec:
        row["peak_memory_bytes"] = rec["peak_memory_bytes"]
        row["comm_bytes_per_step"] = rec["allreduce_bytes_per_step"]
    else:  # the sequential FF trainer records no memory: the process's own peak RSS
        row["peak_memory_bytes"], row["comm_bytes_per_step"] = tree_rss, 0
    return row


def configurations(model: str, workers: int) -> list[tuple[str, int, int, int]]:
    """(method, stages, replicas, workers): FF shapes with stages · replicas = N that fit the model's depth."""
    shapes = [(s, workers // s) for s in range(workers, 0, -1) if workers % s == 0 and s <= DEPTH[model]]
    return ([("ff_pipeline", s, r, workers) for s, r in shapes] + [("ff_sequential", 1, 1, 1)]
            + [("ddp_bp", 1, 1, workers), ("bp", 1, 1, 1)])


def measure_model(model: str, width: int, batch: int, steps: int, workers: int, repeats: int, work: Path) -> list:
    title, body = MODELS[model]
    cfg = work / f"{model}.yaml"
    cfg.write_text(body.format(b=batch, w=width) + HEAD + TRAIN)
    grads = block_grad_bytes(cfg)
    rows = []
    for method, stages, replicas, n in configurations(model, workers):
        reps = [run_once(method, cfg, stages, replicas, n, steps, work, grads, batch) for _ in range(repeats)]
        rates = [r["samples_per_s"] for r in reps]
        med = statistics.median(rates)
        shape = f"{stages} stage(s) x {replicas} replica(s)" if method == "ff_pipeline" else f"{n} worker(s)"
        fraction = [r["bottleneck_fraction"] for r in reps if r["bottleneck_fraction"] is not None]
        rows.append({"model": model, "model_title": title.format(w=width), "method": method,
                     "label": f"{method} {shape}", "stages": stages, "replicas": replicas, "workers": n,
                     "processes": n, "oversubscribed": n > (os.cpu_count() or 1), "samples_per_s": med,
                     "min_samples_per_s": min(rates), "max_samples_per_s": max(rates),
                     "epoch_s": TRAIN_IMAGES / med if med else None,
                     "peak_memory_bytes_per_worker": statistics.median(r["peak_memory_bytes"] for r in reps),
                     "comm_bytes_per_step_per_worker": statistics.median(r["comm_bytes_per_step"] for r in reps),
                     "bottleneck_fraction": statistics.median(fraction) if fraction else None,
                     "repetitions": reps})
        print(f"{model} {rows[-1]['label']}: {med:,.0f} samples/s", flush=True)
    single = {"ff_pipeline": "ff_sequential", "ff_sequential": "ff_sequential", "ddp_bp": "bp", "bp": "bp"}
    ddp = next(r for r in rows if r["method"] == "ddp_bp")
    for r in rows:
        base = next(b for b in rows if b["method"] == single[r["method"]])
        r["speedup_vs_1_worker"] = r["samples_per_s"] / base["samples_per_s"]
        r["utilisation"] = r["speedup_vs_1_worker"] / r["workers"]
        r["ff_over_ddp_throughput"] = r["samples_per_s"] / ddp["samples_per_s"] if r["method"] != "bp" else None
    return rows


def summary(rows: list[dict], workers: int) -> dict:
    def row(model: str, method: str, stages: int | None = None) -> dict | None:
        return next((r for r in rows if r["model"] == model and r["method"] == method
                     and (stages is None or r["stages"] == stages)), None)

    pipe = row("mlp", "ff_pipeline", workers)
    errors = [abs(rep["sim_samples_per_s"] - rep["samples_per_s"]) / rep["samples_per_s"]
              for r in rows for rep in r["repetitions"] if "sim_samples_per_s" in rep]
    deep_ff, deep_ddp = row("deepcnn", "ff_pipeline", workers), row("deepcnn", "ddp_bp")
    memory = deep_ff["peak_memory_bytes_per_worker"] / deep_ddp["peak_memory_bytes_per_worker"] \
        if deep_ff and deep_ddp else None
    return {"workers": workers,
            "ff_speedup_2w": pipe["speedup_vs_1_worker"] if pipe else None,
            "bottleneck_fraction_2w": pipe["bottleneck_fraction"] if pipe else None,
            "ff_over_ddp_throughput_2w": pipe["ff_over_ddp_throughput"] if pipe else None,
            "memory_ratio_ff_over_ddp": memory,
            "sim_max_rel_error": max(errors) if errors else None,
            "sim_max_rel_error_note": "max over FF pipeline repetitions of |sim - measured| / measured samples/s, "
                                      "the simulator fed each run's measured stage times and bytes (see "
                                      "`simulated`)" if errors else "not_measured",
            "note": "the _2w fields are for --workers N (here N = workers); the MLP fields need model mlp, "
                    "the memory ratio model deepcnn (null when not run)"}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": "cpu",
            "threads_per_process": 1, "python": platform.python_version(),
            "bench_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    lines = [f"# FF pipeline vs DDP-BP throughput ({'quick' if result['quick'] else 'full'} mode)", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}, 1 thread per process; "
             f"global batch {result['batch']} per step; epoch 2 timed ({result['steps']} steps run); "
             f"median of {result['repeats']} repetition(s) (min–max). Epoch time = {TRAIN_IMAGES} / samples/s "
             "(embedded fashion_mnist_small). Memory = peak RSS per process (includes the torch runtime).", ""]
    head = ("| run | samples/s (min–max) | epoch s | speedup vs 1w | utilisation | FF/DDP | peak MiB/worker "
            "| KiB/step/worker | bottleneck fraction |")
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == model]
        lines += [f"## {rows[0]['model_title']}", "", head, "|" + "---|" * 9]
        for r in rows:
            tag = " **(oversubscribed)**" if r["oversubscribed"] else ""
            ratio = f"{r['ff_over_ddp_throughput']:.2f}" if r["ff_over_ddp_throughput"] is not None else ""
            frac = f"{r['bottleneck_fraction']:.2f}" if r["bottleneck_fraction"] is not None else ""
            lines.append(f"| {r['label']}{tag} | {r['samples_per_s']:,.0f} ({r['min_samples_per_s']:,.0f}–"
                         f"{r['max_samples_per_s']:,.0f}) | {r['epoch_s']:.2f} | {r['speedup_vs_1_worker']:.2f}× | "
                         f"{r['utilisation']:.2f} | {ratio} | {r['peak_memory_bytes_per_worker'] / 2**20:,.0f} | "
                         f"{r['comm_bytes_per_step_per_worker'] / 1024:,.1f} | {frac} |")
        lines.append("")
    lines += ["## Summary", "", *(f"- {k}: {v}" for k, v in s.items())]
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 5))
    top = max([4] + [r["workers"] for r in rows])
    ax.plot([1, top], [1, top], "k--", label="ideal")
    for name, (x, y) in ANCHORS.items():
        ax.plot(x, y, "s:", alpha=0.6, label=name)
    for model in models:
        for method in ("ff_pipeline", "ddp_bp"):
            pts = sorted({(1, 1.0)} | {(r["workers"], r["speedup_vs_1_worker"]) for r in rows
                                       if r["model"] == model and r["method"] == method and r["replicas"] == 1})
            ax.plot(*zip(*pts), "o-", label=f"{model} {method} (ours)")
    ax.set(xlabel="workers (processes)", ylabel="speedup vs same method on 1 worker", title="Scaling")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=120)
    plt.close(fig)
    pairs = (("ff_sequential", "bp", "1 worker: FF seq / BP"), ("ff_pipeline", "ddp_bp", "N workers: FF pipe / DDP"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (ff, bp, name) in enumerate(pairs):
        vals = [next(r for r in rows if r["model"] == m and r["method"] == ff)["samples_per_s"]
                / next(r for r in rows if r["model"] == m and r["method"] == bp)["samples_per_s"] for m in models]
        ax.bar([i + 0.4 * k for i in range(len(models))], vals, width=0.4, label=name)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks([i + 0.2 for i in range(len(models))], models)
    ax.set(ylabel="FF / BP throughput", title="FF vs BP throughput (same global batch)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ff_over_bp.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    ax.barh([f"{r['model']}: {r['label']}" for r in rows], [r["peak_memory_bytes_per_worker"] / 2**20 for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="peak RSS per worker (MiB)", title="Memory per worker")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths, batch 1000, 1 repetition, MLP only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per run (default 3; quick 1)")
    parser.add_argument("--models", default=None, help="comma-separated from mlp,cnn,deepcnn (quick default: mlp)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    models = (args.models or ("mlp" if args.quick else "mlp,cnn,deepcnn")).split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown or args.workers < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error(f"bad --models {unknown} (choose from {list(MODELS)}), --workers or --repeats")
    repeats = args.repeats or (1 if args.quick else 3)
    per_epoch = TRAIN_IMAGES // plan["batch"]
    steps = 2 * per_epoch + 1  # epoch 1 warm-up, epoch 2 timed, 1 step of epoch 3 holds the final evaluation
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            rows += measure_model(model, plan["widths"][model], plan["batch"], steps, args.workers, repeats, Path(tmp))
    result = {"quick": args.quick, "machine": machine(), "batch": plan["batch"], "steps": steps,
              "repeats": repeats, "workers": args.workers, "wall_s": time.perf_counter() - t0,
              "summary": summary(rows, args.workers), "row_fields": list(ROW_FIELDS), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(result))
    plots(rows, out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
