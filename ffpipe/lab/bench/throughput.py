"""FF pipeline vs data-parallel BP (DDP), side by side in one invocation at one global batch per step (issue 5).

What runs. For each model and each worker count N (`--workers`, default 2), every configuration is a real run
started by `ffpipe.lab.bench.runner` with one torch thread per process:
- FF pipeline with N stages, and every other stages x replicas shape with stages * replicas = N that fits the
  model's depth (replicas shard each global batch);
- FF sequential on 1 worker (`ffpipe train --stages 1`) and BP on 1 worker (`ffpipe train-bp`), once per model;
- DDP-BP on N workers (`ffpipe train-bp` under torchrun, each rank a 1/N shard of the global batch).

What is timed. Epoch 1 is warm-up (start-up, allocator, caches); epoch 2's training steps are timed (its
metrics record's samples/s); each run stops one step into epoch 3, so the final evaluation and its traffic fall
outside the timed epoch. Every configuration runs `repeats` times; a row holds the median, the min-max and
every repetition raw. Where a full epoch is more than this machine affords, a model trains on a seeded subset
of the training split (`data.train_subset`); time per epoch is always quoted for the full 6000-image epoch of
the embedded set, 6000 / samples/s.

Figures per row: speedup vs the same method on 1 worker; utilisation = speedup / N (as PFF reports it); FF / BP
throughput at the same worker count (DDP-BP for N > 1); bytes sent per step per worker (a stage's activation
bytes out, measured by the wire, plus for replicated stages the ring all-reduce 2(R-1)/R x its block gradient
bytes; for DDP `allreduce_bytes_per_step`); the achieved fraction of the bottleneck bound; idle % per stage.

Memory per worker, two measures (`ffpipe.run.measure.MemoryMeter`): peak RSS, which includes the ~300 MB torch
runtime of every process, and *training memory*, the peak minus what the process held just before its first
step, which is what a method's activations, gradients and optimizer state cost. `memory_ratio_ff_over_ddp` is
the training-memory ratio (our choice: on a CPU the runtime swamps the activations); `..._rss` the peak-RSS one.

Simulator check: every pipelined row is predicted by `ffpipe.lab.sim.validate.predict_measured` from a *separate*
profile, epoch 2 of the model's FF-sequential run (the repetition with the median samples/s), and compared
with the row's median measured samples/s. Time to accuracy: see `ffpipe.lab.bench.throughput_tta`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ffpipe.errors import FFPipeError
from ffpipe.lab.bench import runner
from ffpipe.lab.bench.models import (
    DEEP,
    FULL,
    MODELS,
    QUICK,
    TIMED_EPOCH,
    TRAIN_IMAGES,
    Size,
    attempt,
    config_text,
    timed_steps,
)
from ffpipe.lab.bench.throughput_tta import TTA, TTA_QUICK

ROW_FIELDS = ("model", "method", "label", "stages", "replicas", "workers", "processes", "oversubscribed",
              "samples_per_s", "min_samples_per_s", "max_samples_per_s", "epoch_s", "speedup_vs_1_worker",
              "utilisation", "ff_over_bp_throughput", "peak_memory_bytes_per_worker",
              "train_memory_bytes_per_worker", "tensor_memory_bytes_per_worker", "comm_bytes_per_step_per_worker",
              "bottleneck_fraction", "repetitions")
MICRO_BATCHES = 4
"""DDP-BP with gradient accumulation (`ddp_bp_accum`, deep nets): micro-batches per rank, the baseline a
skeptical reader asks for, since accumulation cuts BP's activation memory by about this factor."""


def configurations(model: str, workers: list[int], every_shape: bool = True) -> list[tuple[str, int, int, int]]:
    """(method, stages, replicas, workers) in table order. FF shapes have stages * replicas = N and fit the
    depth; `every_shape` False keeps only the N-stage pipeline (the quick mode: fewer process start-ups)."""
    depth = MODELS[model].depth
    rows = [("ff_sequential", 1, 1, 1)]
    for n in workers:
        shapes = [(s, n // s) for s in range(min(n, depth), 0, -1) if n % s == 0]
        rows += [("ff_pipeline", s, r, n) for s, r in (shapes if every_shape else shapes[:1])]
    accumulated = [("ddp_bp_accum", 1, 1, n) for n in workers] if model in DEEP else []
    return rows + [("bp", 1, 1, 1)] + [("ddp_bp", 1, 1, n) for n in workers] + accumulated


def grad_bytes(cfg_path: Path) -> list[int]:
    """float32 gradient bytes of every FF block, as the stages build them."""
    from ffpipe.config import load_config
    from ffpipe.data.loading import shape_for_config
    from ffpipe.ff.blocks import block_specs
    from ffpipe.ff.partition import block_params

    cfg = load_config(cfg_path)
    return [4 * block_params(s) for s in block_specs(cfg.model, shape_for_config(cfg.data))]


def keep_profile(run: Path, dest: Path) -> Path:
    """What the simulator reads of a 1-stage run (config.yaml, metrics.jsonl), kept once the run dir, with its
    checkpoints, is removed."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, dest / name)
    return dest


def _simulated_own_times(stages: list[dict], steps: int, batch: int, replicas: int) -> float:
    """`ffpipe.lab.sim`'s samples/s for this run from its OWN stage times and bytes (checks the schedule model only;
    the summary's simulator error is the separate-profile prediction). Replicated stages' measured compute
    already holds their gradient all-reduce, so no gradient bytes are passed again."""
    from ffpipe.lab.sim import StageSpec, link_preset, simulate_pipeline

    specs = [StageSpec(forward_s=s["compute_s_per_step"], update_s=0.0, out_bytes=s["bytes_out"] / steps,
                       blocks=tuple(s["blocks"])) for s in stages]
    return simulate_pipeline(specs, batch // replicas, link=link_preset("cpu-loopback"), replicas=replicas).throughput


def run_once(method: str, cfg: Path, stages: int, replicas: int, workers: int, steps: int, work: Path,
             grads: list[int], batch: int) -> tuple[dict, Path]:
    """One run; the figures of its timed epoch's record, and its run dir (the caller removes it)."""
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = (runner.ff_command(cfg, stages, replicas, steps, out) if method.startswith("ff")
           else runner.bp_command(cfg, workers, steps, out, MICRO_BATCHES if method == "ddp_bp_accum" else 1))
    timed, failures = attempt(cmd, out, epoch=TIMED_EPOCH)
    rec, n = timed["record"], timed["steps"]
    rep = {"samples_per_s": rec["samples_per_s"], "train_s": rec["train_s"], "timed_steps": n,
           "run_s": timed["run_s"], "bottleneck_fraction": None, "failed_attempts": failures}
    if "stages" in rec:
        st = rec["stages"]
        ring = 2 * (replicas - 1) / replicas
        train = [s.get("train_memory_bytes") for s in st]
        tensors = [s.get("peak_tensor_bytes") for s in st]
        rep.update({"peak_memory_bytes": max(s["peak_memory_bytes"] for s in st),
                    "tensor_memory_bytes": None if None in tensors else max(tensors),
                    "stage_tensor_memory_bytes": tensors,
                    "train_memory_bytes": None if None in train else max(train),
                    "stage_peak_memory_bytes": [s["peak_memory_bytes"] for s in st], "stage_train_memory_bytes": train,
                    "comm_bytes_per_step": max(s["bytes_out"] / n + ring * sum(grads[i] for i in s["blocks"])
                                               for s in st),
                    "bottleneck_fraction": rec["bottleneck"]["fraction"], "idle_pct": [s["idle_pct"] for s in st],
                    "partition": [len(s["blocks"]) for s in st],
                    "sim_own_times_samples_per_s": _simulated_own_times(st, n, batch, replicas)})
    else:
        rep.update({"peak_memory_bytes": rec["peak_memory_bytes"], "train_memory_bytes": rec["train_memory_bytes"],
                    "tensor_memory_bytes": rec.get("peak_tensor_bytes"),
                    "comm_bytes_per_step": rec.get("allreduce_bytes_per_step", 0)})
        if method == "ff_sequential":
            rep["block_compute_s_per_step"] = [b["compute_s"] / n for b in sorted(rec["blocks"],
                                                                                   key=lambda b: b["index"])]
    return rep, out


def _median(values: list) -> float | None:
    return None if not values or None in values else statistics.median(values)


def make_row(model: str, title: str, method: str, stages: int, replicas: int, workers: int, reps: list[dict],
             cores: int) -> dict:
    """One table row from its repetitions: medians, min-max, and whether it oversubscribes the cores."""
    rates = [r["samples_per_s"] for r in reps]
    med = statistics.median(rates)
    shape = f"{stages} stage(s) x {replicas} replica(s)" if method == "ff_pipeline" else f"{workers} worker(s)"
    if method == "ddp_bp_accum":
        shape += f", {MICRO_BATCHES} micro-batches each"
    fractions = [r["bottleneck_fraction"] for r in reps if r["bottleneck_fraction"] is not None]
    return {"model": model, "model_title": title, "method": method, "label": f"{method} {shape}",
            "stages": stages, "replicas": replicas, "workers": workers, "processes": workers,
            "oversubscribed": workers > cores, "samples_per_s": med, "min_samples_per_s": min(rates),
            "max_samples_per_s": max(rates), "epoch_s": TRAIN_IMAGES / med if med else None,
            "peak_memory_bytes_per_worker": _median([r["peak_memory_bytes"] for r in reps]),
            "train_memory_bytes_per_worker": _median([r["train_memory_bytes"] for r in reps]),
            "tensor_memory_bytes_per_worker": _median([r.get("tensor_memory_bytes") for r in reps]),
            "comm_bytes_per_step_per_worker": _median([r["comm_bytes_per_step"] for r in reps]),
            "bottleneck_fraction": statistics.median(fractions) if fractions else None,
            "idle_pct": [statistics.median(v) for v in zip(*(r["idle_pct"] for r in reps))] if fractions else None,
            "partition": reps[0].get("partition"), "repetitions": reps}


def relate(rows: list[dict]) -> None:
    """Speedup vs the same method on 1 worker, utilisation, and FF / BP at the same worker count, in place."""
    single = {"ff_pipeline": "ff_sequential", "ff_sequential": "ff_sequential", "ddp_bp": "bp", "ddp_bp_accum": "bp",
              "bp": "bp"}
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["method"] == single[r["method"]])
        r["speedup_vs_1_worker"] = r["samples_per_s"] / base["samples_per_s"]
        r["utilisation"] = r["speedup_vs_1_worker"] / r["workers"]
        bp = next((b for b in rows if b["model"] == r["model"] and b["method"] in ("bp", "ddp_bp")
                   and b["workers"] == r["workers"]), None)
        r["ff_over_bp_throughput"] = (r["samples_per_s"] / bp["samples_per_s"]
                                      if r["method"].startswith("ff") and bp else None)


def predict_rows(rows: list[dict], profile: Path, cores: int) -> dict:
    """Add the simulator's prediction from the separate 1-stage `profile` to every pipelined row; returns the
    profile's per-block seconds per step and, under "times", the profile as a times file (`ffpipe.lab.sim.times`
    format: save it to feed `ffpipe bench simulate --times`)."""
    from ffpipe.lab.sim.times import times_from_run
    from ffpipe.lab.sim.validate import predict_measured, relative_error

    times = times_from_run(profile, epoch=TIMED_EPOCH)
    for r in rows:
        if r["method"] == "ff_pipeline":
            pred = predict_measured(times, r["partition"], r["replicas"], cores=cores)
            r.update({"sim_predicted_samples_per_s": pred["samples_per_s"], "sim_limit": pred["limit"],
                      "sim_rel_error": relative_error(pred["samples_per_s"], r["samples_per_s"])})
    note = "epoch 2 of the FF-sequential repetition with the median samples/s; " + "; ".join(times.notes)
    seconds = [b.forward_s + b.update_s for b in times.blocks]
    return {"batch": times.batch, "block_compute_s_per_step": seconds, "source": note,
            "times": {"batch": times.batch, "measured_samples_per_s": times.measured_samples_per_s, "note": note,
                      "blocks": [{"compute_s": t, "out_bytes": b.out_bytes, "grad_bytes": b.grad_bytes}
                                 for t, b in zip(seconds, times.blocks)]}}


def measure_model(model: str, size: Size, workers: list[int], repeats: int, work: Path, every_shape: bool,
                  cores: int) -> tuple[list[dict], dict]:
    """All configurations of one model, `repeats` times each; (rows, simulator profile)."""
    title = MODELS[model].title.format(w=size.width)
    steps = timed_steps(size)
    cfg = work / f"{model}.yaml"
    cfg.write_text(config_text(model, size))
    grads = grad_bytes(cfg)
    rows, profiles = [], []
    for method, stages, replicas, n in configurations(model, workers, every_shape):
        reps = []
        for k in range(repeats):
            rep, out = run_once(method, cfg, stages, replicas, n, steps, work, grads, size.batch)
            if method == "ff_sequential":
                profiles.append(keep_profile(out, work / f"profile-{model}-{k}"))
            shutil.rmtree(out)
            reps.append(rep)
            print(f"{model} {method} {stages}x{replicas} on {n} worker(s), rep {k + 1}/{repeats}: "
                  f"{rep['samples_per_s']:,.0f} samples/s", flush=True)
        rows.append(make_row(model, title, method, stages, replicas, n, reps, cores))
    relate(rows)
    seq = rows[0]["repetitions"]
    median_rep = sorted(range(len(seq)), key=lambda k: seq[k]["samples_per_s"])[(len(seq) - 1) // 2]
    return rows, predict_rows(rows, profiles[median_rep], cores)


GOALS = (("ff_speedup_2w", ">=", 1.9, "wide MLP: FF pipeline 2 stages over FF sequential"),
         ("bottleneck_fraction_2w", ">=", 0.95, "wide MLP: FF pipeline 2 stages, achieved / bottleneck bound"),
         ("ff_over_ddp_throughput_2w", ">=", 1.0, "wide MLP: FF-pipeline epoch time <= DDP-BP epoch time "
                                                  "(FF / DDP samples/s >= 1), 2 workers"),
         ("memory_ratio_ff_over_ddp", "<=", 0.5, "deep CNN: training memory per worker, FF pipeline 2 stages "
                                                 "over DDP-BP 2 workers"),
         ("sim_max_rel_error", "<=", 0.10, "worst abs(predicted - measured) / measured over the pipelined rows"),
         ("deep_ff_over_ddp_throughput_2w", ">=", 1.3, "resnet17: FF pipeline 2 stages / DDP-BP 2 workers, "
                                                       "samples/s"),
         ("cnn14_ff_over_ddp_throughput_2w", ">=", 1.3, "cnn14: FF pipeline 2 stages / DDP-BP 2 workers, samples/s"),
         ("deep_memory_ratio_ff_over_ddp", "<=", 0.5, "resnet17: peak live tensor bytes per worker, FF pipeline 2 "
                                                      "stages over DDP-BP 2 workers"),
         ("deep_speedup_2w", ">=", 1.85, "cnn14: FF pipeline 2 stages over FF sequential"),
         ("deep_bottleneck_fraction_2w", ">=", 0.95, "cnn14: FF pipeline 2 stages, achieved / bottleneck bound"),
         ("tta_ff_over_ddp", "<=", 1.0, "time to the higher validation target, FF pipeline / DDP-BP"),
         ("cnn14_ff_step_over_bp_step", "<=", 0.75, "cnn14: FF-sequential step time / BP step time, 1 worker"),
         ("deep_ff_step_over_bp_step", "<=", 0.75, "resnet17: FF-sequential step time / BP step time, 1 worker"))


SUMMARY_FIELDS = (*(g[0] for g in GOALS), "memory_ratio_ff_over_ddp_rss")


def find_row(rows: list[dict], model: str, method: str, workers: int, stages: int | None = None) -> dict | None:
    """The row of `method` on `workers` workers (for ff_pipeline: `stages` stages, no replicas)."""
    return next((r for r in rows if r["model"] == model and r["method"] == method and r["workers"] == workers
                 and (stages is None or (r["stages"], r["replicas"]) == (stages, 1))), None)


def _two_workers(rows: list[dict], model: str) -> tuple[dict, dict]:
    """`model`'s FF pipeline on 2 stages and its DDP-BP on 2 workers ({} where not run)."""
    return find_row(rows, model, "ff_pipeline", 2, stages=2) or {}, find_row(rows, model, "ddp_bp", 2) or {}


def _memory(ff: dict, bp: dict) -> tuple[float | None, float | None]:
    """The two rows' memory per worker as the goal compares it: peak live tensor bytes where both runs
    measured them, else training memory (peak RSS growth)."""
    key = "tensor_memory_bytes_per_worker"
    if ff.get(key) is None or bp.get(key) is None:
        key = "train_memory_bytes_per_worker"
    return ff.get(key), bp.get(key)


def _step_ratio(rows: list[dict], model: str) -> float | None:
    """`model`'s FF-sequential step time over its BP step time on 1 worker (BP samples/s over FF's)."""
    ff, bp = find_row(rows, model, "ff_sequential", 1) or {}, find_row(rows, model, "bp", 1) or {}
    return _ratio(bp.get("samples_per_s"), ff.get("samples_per_s"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summary(rows: list[dict], tta: dict | None = None) -> dict:
    """The headline figures at 2 workers and whether each meets its goal (`met` is None where a figure could
    not be measured: its model was not run, or 2 is not among the worker counts)."""
    pipe, ddp = _two_workers(rows, "mlp")
    deep_ff, deep_ddp = _two_workers(rows, "deepcnn")
    predicted = [r for r in rows if r.get("sim_rel_error") is not None]
    worst = max(predicted, key=lambda r: r["sim_rel_error"], default=None)
    res_ff, res_ddp = _two_workers(rows, "resnet17")
    c14_ff, c14_ddp = _two_workers(rows, "cnn14")
    values = {"ff_speedup_2w": pipe.get("speedup_vs_1_worker"),
              "bottleneck_fraction_2w": pipe.get("bottleneck_fraction"),
              "ff_over_ddp_throughput_2w": _ratio(pipe.get("samples_per_s"), ddp.get("samples_per_s")),
              "memory_ratio_ff_over_ddp": _ratio(deep_ff.get("train_memory_bytes_per_worker"),
                                                 deep_ddp.get("train_memory_bytes_per_worker")),
              "sim_max_rel_error": worst["sim_rel_error"] if worst else None,
              "deep_ff_over_ddp_throughput_2w": _ratio(res_ff.get("samples_per_s"), res_ddp.get("samples_per_s")),
              "cnn14_ff_over_ddp_throughput_2w": _ratio(c14_ff.get("samples_per_s"), c14_ddp.get("samples_per_s")),
              "deep_memory_ratio_ff_over_ddp": _ratio(*_memory(res_ff, res_ddp)),
              "deep_speedup_2w": c14_ff.get("speedup_vs_1_worker"),
              "deep_bottleneck_fraction_2w": c14_ff.get("bottleneck_fraction"),
              "tta_ff_over_ddp": tta["summary"]["ff_over_ddp_time"] if tta else None,
              "cnn14_ff_step_over_bp_step": _step_ratio(rows, "cnn14"),
              "deep_ff_step_over_bp_step": _step_ratio(rows, "resnet17")}
    goals = {name: {"what": what, "target": f"{op} {limit:g}", "value": values[name],
                    "met": None if values[name] is None else bool(values[name] >= limit if op == ">="
                                                                  else values[name] <= limit)}
             for name, op, limit, what in GOALS}
    return {**values,
            "deep_memory_ratio_ff_over_ddp_train_rss": _ratio(res_ff.get("train_memory_bytes_per_worker"),
                                                              res_ddp.get("train_memory_bytes_per_worker")),
            "deep_memory_ratio_ff_over_ddp_accum": _ratio(*_memory(
                res_ff, find_row(rows, "resnet17", "ddp_bp_accum", 2) or {})),
            "memory_ratio_ff_over_ddp_rss": _ratio(deep_ff.get("peak_memory_bytes_per_worker"),
                                                   deep_ddp.get("peak_memory_bytes_per_worker")),
            "sim_max_rel_error_row": f"{worst['model']}: {worst['label']}" if worst else None,
            "sim_basis": "each pipelined row's median measured samples/s vs ffpipe.lab.sim.validate.predict_measured "
                         "from the profile of its model's FF-sequential repetition with the median samples/s",
            "goals": goals, "goals_met": sum(g["met"] is True for g in goals.values()),
            "time_to_accuracy": tta["summary"] if tta else None}


def _plan(args: argparse.Namespace) -> tuple[list[str], list[int], int, bool]:
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise FFPipeError(f"bad --models {unknown}: choose from {list(MODELS)}")
    try:
        workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        raise FFPipeError(f"--workers expects comma-separated integers, got {args.workers!r}") from None
    if not workers or workers[0] < 2:
        raise FFPipeError(f"--workers must be >= 2 (1 worker is always measured), got {args.workers!r}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        raise FFPipeError(f"--repeats must be >= 1, got {repeats}")
    sizes = QUICK if args.quick else FULL
    for m in models:
        bad = [n for n in workers if sizes[m].batch % n]
        if bad:
            raise FFPipeError(f"{m}: global batch {sizes[m].batch} does not split into {bad} workers")
    tta = (not args.quick) if args.tta is None else args.tta
    batch = (TTA_QUICK if args.quick else TTA)["batch"]  # the time-to-accuracy runs use the smallest N
    if tta and batch % workers[0]:
        raise FFPipeError(f"time to accuracy: global batch {batch} does not split into {workers[0]} workers "
                          "(or pass --no-tta)")
    return models, workers, repeats, tta


def run_benchmark(args: argparse.Namespace) -> int:
    """Measure, write results.json, then results.md and the plots from that JSON alone."""
    from ffpipe.lab.bench.throughput_report import render
    from ffpipe.lab.bench.throughput_tta import time_to_accuracy
    from ffpipe.lab.sim.predict import ANCHORS

    models, workers, repeats, tta = _plan(args)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out or runner.ROOT / "benchmarks" / "results" / ("throughput_quick" if args.quick
                                                                       else "throughput"))
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            model_rows, profiles[model] = measure_model(model, sizes[model], workers, repeats, Path(tmp),
                                                        every_shape=not args.quick, cores=cores)
            rows += model_rows
        tta_result = time_to_accuracy(TTA_QUICK if args.quick else TTA, workers[0], Path(tmp), cores) if tta else None
    result = {"benchmark": "throughput", "quick": args.quick, "machine": runner.machine(),
              "settings": {"workers": workers, "repeats": repeats, "timed_epoch": TIMED_EPOCH,
                           "epoch_images": TRAIN_IMAGES, "threads_per_process": 1,
                           "models": {m: {"title": MODELS[m].title.format(w=sizes[m].width),
                                          "width": sizes[m].width, "batch": sizes[m].batch,
                                          "train_subset": sizes[m].subset, "config": config_text(m, sizes[m])}
                                      for m in models}},
              "wall_s": time.perf_counter() - t0, "summary": summary(rows, tta_result), "row_fields": list(ROW_FIELDS),
              "rows": rows, "profiles": profiles, "tta": tta_result, "anchors": ANCHORS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    for path in render(json.loads((out / "results.json").read_text()), out):
        print(f"wrote {path}")
    return 0
