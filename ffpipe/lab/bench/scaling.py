"""Scaling benchmark (issue 5): FF-pipeline throughput against the number of stages, measured on this
machine, with `ffpipe.lab.sim` checked against every measured point and then extrapolated to 4, 8 and 16 devices.

Sweep. MLPs of depth {4, 8, 16} x width {500, 2000} on {1, 2, 4, 8} stages (stages <= depth); a CNN depth
sweep (conv depth {2, 4, 8} x {1, 2, 4} stages, 16 channels, 3x3, stride 1, no pooling, Fourier labels as in
seed 000); and a weak-scaling series, depth = stages in {1, 2, 4, 8} at width 784, our choice: 784 is the input
size, so every block is the same 784x784 layer and one block per stage is the same work on every stage (at
width 2000 the first block, 784->2000, costs about 0.4 of the others). Every point is a real `ffpipe train`
run (`ffpipe.lab.bench.runner`, one torch thread per process, `pipeline.partition: cost`, `head.mode: local`);
its throughput is the samples/s of epoch 2 (epoch 1 is warm-up; the run stops one step into epoch 3, so the
final evaluation falls outside the timed epoch). Speedup and utilisation (speedup / stages) are against the
same model's 1-stage run. A run with more processes than the machine has cores is oversubscribed: its
processes time-share the cores, so it measures the schedule under time-sharing, not device scaling; every
point records `oversubscribed` and the report labels it.

Simulator check. Each pipelined point is predicted from the SAME model's 1-stage run (its per-block epoch-2
times, `ffpipe.lab.sim.times.times_from_run`) with `ffpipe.lab.sim.validate.predict_measured`, over the run's own
partition, with the machine's core count (processor-sharing cap when oversubscribed). The extrapolation feeds
the deepest model of each MLP width and the deepest CNN to `ffpipe.lab.sim.predict.predict` for 4, 8 and 16
devices over NVLink and PCIe presets: a PREDICTION from CPU block times, i.e. the schedule's scaling shape for
these relative stage costs, not GPU speeds.

    python benchmarks/scaling.py [--quick] [--repeats N] [--train-subset N] [--out DIR]
    ffpipe bench scaling ...  (the same)
writes results.json, results.md and PNG plots into DIR (default benchmarks/results/scaling/).
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

TRAIN_IMAGES = 6000  # the embedded fashion_mnist_small training split
HEAD = "head: {mode: local, exclude_first: true, readouts: [linear]}\n"
TRAIN = "train: {epochs: 100, eval_every: 100000, progress: false}\n"
FULL = {"batch": 100, "mlp": {"widths": [500, 2000], "depths": [4, 8, 16], "stages": [1, 2, 4, 8]},
        "weak": {"family": "mlp", "width": 784, "depths": [1, 2, 4, 8]},
        "cnn": {"width": 16, "kernel": 3, "depths": [2, 4, 8], "stages": [1, 2, 4]}}
QUICK = {"batch": 200, "mlp": {"widths": [64], "depths": [2, 4], "stages": [1, 2, 4]},
         "weak": {"family": "mlp", "width": 64, "depths": [1, 2, 4]},
         "cnn": {"width": 4, "kernel": 3, "depths": [2], "stages": [1, 2]}, "train_subset": 3000}
DEVICES = (4, 8, 16)
LINKS = ("nvlink", "pcie")
SUMMARY_FIELDS = ("sim_goal_rel_error", "sim_points", "sim_max_rel_error", "sim_median_rel_error",
                  "sim_within_goal", "sim_points_not_oversubscribed", "sim_max_rel_error_not_oversubscribed",
                  "sim_median_rel_error_not_oversubscribed", "sim_within_goal_not_oversubscribed",
                  "speedup_at_cores", "oversubscribed_points")
GOAL = 0.10  # the target relative error of the simulator


def models(plan: dict) -> list[dict]:
    """Every model of `plan` once, with the stage counts it runs (ascending, 1 first: that run is the
    model's baseline and the simulator's profile); a model in both the sweep and the weak series runs once."""
    stages: dict[tuple, set[int]] = {}

    def add(family: str, depth: int, width: int, counts) -> None:
        stages.setdefault((family, depth, width), {1}).update(s for s in counts if s <= depth)

    for width in plan["mlp"]["widths"]:
        for depth in plan["mlp"]["depths"]:
            add("mlp", depth, width, plan["mlp"]["stages"])
    for depth in plan["weak"]["depths"]:
        add(plan["weak"]["family"], depth, plan["weak"]["width"], [depth])
    for depth in plan["cnn"]["depths"]:
        add("cnn", depth, plan["cnn"]["width"], plan["cnn"]["stages"])
    kernel = plan["cnn"]["kernel"]
    return [{"key": f"{family}-{depth}x{width}", "family": family, "depth": depth, "width": width,
             "title": f"MLP {depth}x{width}" if family == "mlp" else f"CNN {depth}x{width}ch {kernel}x{kernel}",
             "stages": sorted(counts)} for (family, depth, width), counts in stages.items()]


def config_text(model: dict, plan: dict, train_subset: int | None) -> str:
    """The run's YAML: the model, batch, label encoding (one-hot for MLPs, seed 000's Fourier labels for the
    CNN), the local head with one linear readout, and no evaluation before the end."""
    subset = f", train_subset: {train_subset}" if train_subset else ""
    if model["family"] == "mlp":
        labels, body = "{encoding: onehot}", f"{{type: linear, depth: {model['depth']}, width: {model['width']}}}"
    else:
        labels = "{encoding: fourier, label_set: 1, k: 0.35}"
        body = (f"{{type: conv, depth: {model['depth']}, width: {model['width']}, kernel: {plan['cnn']['kernel']}, "
                "pool: 0}")
    return f"data: {{batch_size: {plan['batch']}{subset}, labels: {labels}}}\nmodel: {body}\n" + HEAD + TRAIN


def _rep(timed: dict) -> dict:
    """What one repetition keeps of its epoch-2 record."""
    record = timed["record"]
    rep = {"samples_per_s": record["samples_per_s"], "steps": timed["steps"], "run_s": timed["run_s"]}
    if "stages" in record:
        rep["partition"] = [len(s["blocks"]) for s in record["stages"]]
        rep["stages"] = [{k: s[k] for k in ("blocks", "compute_s_per_step", "idle_pct", "send_blocked_pct")}
                         for s in record["stages"]]
        rep["bottleneck"] = record["bottleneck"]
    return rep


def _run(cfg: Path, stages: int, steps: int, work: Path) -> tuple[dict, Path]:
    out = Path(tempfile.mkdtemp(dir=work))
    return _rep(runner.timed_run(runner.ff_command(cfg, stages, 1, steps, out), out)), out


def _median_index(reps: list[dict]) -> int:
    """The repetition with the (lower) median samples/s: its idle % and bottleneck represent the point."""
    order = sorted(range(len(reps)), key=lambda i: reps[i]["samples_per_s"])
    return order[(len(order) - 1) // 2]


def profile_of(run_dir: Path):
    """The simulator's per-block times from a 1-stage run's epoch 2, the timed epoch (its last record is the
    one-step epoch 3)."""
    from ffpipe.lab.sim.times import times_from_run

    return times_from_run(run_dir, epoch=2)


def point_row(model: dict, stages: int, reps: list[dict], base_rate: float, cores: int, epoch_images: int) -> dict:
    """One measured point: median samples/s over repetitions (min-max), speedup and utilisation against the
    model's 1-stage median, and the median repetition's idle % per stage and bottleneck bound."""
    rates = [r["samples_per_s"] for r in reps]
    rate, mid = statistics.median(rates), reps[_median_index(reps)]
    processes = stages  # one process per stage: the sweep runs no replicas
    return {"model": model["key"], "family": model["family"], "title": model["title"], "depth": model["depth"],
           "width": model["width"], "stages": stages, "processes": processes, "oversubscribed": processes > cores,
           "samples_per_s": rate, "min_samples_per_s": min(rates), "max_samples_per_s": max(rates),
           "epoch_s": epoch_images / rate, "speedup_vs_1_stage": rate / base_rate,
           "utilisation": rate / base_rate / stages, "partition": mid.get("partition", [model["depth"]]),
           "idle_pct": [s["idle_pct"] for s in mid["stages"]] if "stages" in mid else None,
           "bottleneck": mid.get("bottleneck"), "prediction": None, "relative_error": None, "repetitions": reps}


def predict_point(row: dict, profile, cores: int) -> None:
    """Fill `row`'s prediction from the model's 1-stage profile, over the run's own partition."""
    from ffpipe.lab.sim.predict import json_safe
    from ffpipe.lab.sim.validate import predict_measured, relative_error

    pred = json_safe(predict_measured(profile, row["partition"], 1, cores=cores))
    row["prediction"] = pred
    row["relative_error"] = relative_error(pred["samples_per_s"], row["samples_per_s"])


def _layout(row: dict, one: float, devices: int) -> dict:
    speedup = row["samples_per_s"] / one
    return {"stages": row["stages"], "replicas": row["replicas"], "partition": row["partition"],
            "devices_used": row["devices_used"], "samples_per_s": row["samples_per_s"], "speedup": speedup,
            "efficiency": speedup / devices, "limit": row["limit"]}


def extrapolate(model: dict, profile) -> dict:
    """PREDICTION for 4, 8, 16 devices per link preset: the fastest stages x replicas layout, and the layout
    with the most stages (min(devices, depth), replicas filling the rest), from the CPU profile's block times."""
    from ffpipe.lab.sim.links import link_preset
    from ffpipe.lab.sim.predict import predict

    links = []
    for name in LINKS:
        out = predict(profile, DEVICES, link_preset(name))
        one = out["ff_1_device"]["samples_per_s"]
        rows = []
        for row in out["rows"]:
            n, layouts = row["devices"], [row["ff"], *row["ff_other_layouts"]]
            deepest = next(x for x in layouts if x["stages"] == min(n, model["depth"]))
            rows.append({"devices": n, "best": _layout(row["ff"], one, n), "most_stages": _layout(deepest, one, n)})
        links.append({"link": out["link"], "one_device_samples_per_s": one, "rows": rows})
    return {"prediction": True,
            "label": "PREDICTION (ffpipe.lab.sim from this machine's CPU block times; not measured)",
            "model": model["key"], "title": model["title"], "depth": model["depth"], "links": links}


def measure_model(model: dict, plan: dict, steps: int, repeats: int, work: Path, cores: int,
                  train_subset: int | None, extrapolated: bool) -> tuple[list[dict], dict | None]:
    """Run one model at every stage count; 1-stage first, whose median run dir is kept (as the profile) until
    every pipelined point of the model is predicted. Returns the points and the extrapolation (or None)."""
    here = Path(tempfile.mkdtemp(dir=work, prefix=model["key"] + "-"))
    cfg = here / "config.yaml"
    cfg.write_text(config_text(model, plan, train_subset))
    epoch_images = (train_subset or TRAIN_IMAGES) // plan["batch"] * plan["batch"]
    try:
        base = [_run(cfg, 1, steps, here) for _ in range(repeats)]
        reps = [r for r, _ in base]
        profile = profile_of(base[_median_index(reps)][1])
        base_rate = statistics.median(r["samples_per_s"] for r in reps)
        rows = [point_row(model, 1, reps, base_rate, cores, epoch_images)]
        print(f"{model['title']}, 1 stage: {base_rate:,.0f} samples/s", flush=True)
        for stages in model["stages"][1:]:
            runs = [_run(cfg, stages, steps, here) for _ in range(repeats)]
            for _, out in runs:
                shutil.rmtree(out)
            row = point_row(model, stages, [r for r, _ in runs], base_rate, cores, epoch_images)
            predict_point(row, profile, cores)
            rows.append(row)
            print(f"{model['title']}, {stages} stages: {row['samples_per_s']:,.0f} samples/s (predicted "
                  f"{row['prediction']['samples_per_s']:,.0f})", flush=True)
        return rows, extrapolate(model, profile) if extrapolated else None
    finally:
        shutil.rmtree(here, ignore_errors=True)


def summary(points: list[dict], cores: int) -> dict:
    """The simulator's error over all pipelined points and over those with no more processes than cores, and
    the measured speedup of each model at stages = cores."""
    def errors(rows):
        return [r["relative_error"] for r in rows if r["relative_error"] is not None]

    every, fits = errors(points), errors(p for p in points if not p["oversubscribed"])
    return {"sim_goal_rel_error": GOAL, "sim_points": len(every), "sim_max_rel_error": max(every, default=None),
            "sim_median_rel_error": statistics.median(every) if every else None,
            "sim_within_goal": sum(e <= GOAL for e in every), "sim_points_not_oversubscribed": len(fits),
            "sim_max_rel_error_not_oversubscribed": max(fits, default=None),
            "sim_median_rel_error_not_oversubscribed": statistics.median(fits) if fits else None,
            "sim_within_goal_not_oversubscribed": sum(e <= GOAL for e in fits),
            "speedup_at_cores": {p["model"]: p["speedup_vs_1_stage"] for p in points if p["stages"] == cores},
            "oversubscribed_points": sum(p["oversubscribed"] for p in points), "cores": cores}


def extrapolated_models(plan: dict, all_models: list[dict]) -> set[str]:
    """The deepest model of each swept MLP width and the deepest CNN."""
    keys = set()
    for family, widths in (("mlp", plan["mlp"]["widths"]), ("cnn", [plan["cnn"]["width"]])):
        for width in widths:
            same = [m for m in all_models if m["family"] == family and m["width"] == width]
            keys.add(max(same, key=lambda m: m["depth"])["key"])
    return keys


def run_benchmark(quick: bool, repeats: int, train_subset: int | None, command: str) -> dict:
    plan = QUICK if quick else FULL
    train_subset = train_subset or plan.get("train_subset")
    per_epoch = (train_subset or TRAIN_IMAGES) // plan["batch"]
    steps = 2 * per_epoch + 1  # epoch 1 warm-up, epoch 2 timed, 1 step of epoch 3 holds the final evaluation
    cores = runner.machine()["cores"]
    all_models = models(plan)
    chosen = extrapolated_models(plan, all_models)
    points, extrapolation = [], []
    load_start = [round(v, 2) for v in os.getloadavg()]  # a busy machine slows every point: recorded, reported
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in all_models:
            rows, extra = measure_model(model, plan, steps, repeats, Path(tmp), cores, train_subset,
                                        model["key"] in chosen)
            points += rows
            extrapolation += [extra] if extra else []
    return {"benchmark": "scaling", "quick": quick, "command": command, "machine": runner.machine(), "plan": plan,
            "batch": plan["batch"], "train_subset": train_subset, "steps_per_epoch": per_epoch, "steps": steps,
            "timed_epoch": 2, "repeats": repeats, "partition": "cost", "wall_s": time.perf_counter() - t0,
            "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
            "summary": summary(points, cores), "points": points, "extrapolation": extrapolation}


def cmd_scaling(args: argparse.Namespace) -> int:
    from ffpipe.lab.bench.scaling_report import render

    batch = (QUICK if args.quick else FULL)["batch"]
    if args.repeats < 1:
        raise FFPipeError(f"--repeats must be at least 1, got {args.repeats}")
    if args.train_subset is not None and not 2 * batch <= args.train_subset <= TRAIN_IMAGES:
        raise FFPipeError(f"--train-subset must be in [{2 * batch}, {TRAIN_IMAGES}] (2 steps of {batch} at "
                          f"least), got {args.train_subset}")
    command = " ".join(["python benchmarks/scaling.py", *(["--quick"] if args.quick else []),
                        f"--repeats {args.repeats}", *([f"--train-subset {args.train_subset}"]
                                                       if args.train_subset else [])])
    result = run_benchmark(args.quick, args.repeats, args.train_subset, command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(render(result, out))
    return 0
