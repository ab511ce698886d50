"""results.md and the PNG plots of a throughput benchmark, from its results.json alone (`ffpipe report DIR`).

Everything here is a pure function of the JSON `ffpipe.lab.bench.throughput` wrote, so the report can be
regenerated, byte for byte, without running anything. A row whose processes outnumber the machine's cores is
marked "oversubscribed" wherever it appears: its processes time-share cores, so its rate is not a scaling
result.
"""

from __future__ import annotations

from pathlib import Path

from ffpipe.lab.bench.models import MODELS
from ffpipe.run.plots import save_png, subplots

MiB = 2**20
PLOTS = ("speedup.png", "ff_over_bp.png", "memory.png", "sim_vs_measured.png", "idle.png")


def _f(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: float | None) -> str:
    return _f(value / MiB if value is not None else None, ",.1f")


def row_label(row: dict, cores: int) -> str:
    """A row's name in every table: its label, and the oversubscription mark where processes > cores."""
    tag = f" **(oversubscribed: {row['processes']} processes on {cores} cores)**" if row["oversubscribed"] else ""
    return row["label"] + tag


def _short(row: dict) -> str:
    """A row's name on a plot axis."""
    return f"{row['model']}: {row['label']}" + (" (oversubscribed)" if row["oversubscribed"] else "")


def _header(result: dict) -> list[str]:
    m, st = result["machine"], result["settings"]
    return [f"# FF pipeline vs DDP-BP throughput ({'quick' if result['quick'] else 'full'} mode)", "",
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}, commit "
            f"{m.get('commit') or 'not recorded'}, "
            f"{st['threads_per_process']} torch thread per process; benchmark wall time "
            f"{result['wall_s'] / 60:.1f} min.", "",
            f"Every configuration: epoch 1 warm-up, epoch {st['timed_epoch']} timed, {st['repeats']} repetition(s): "
            f"median (min-max). Epoch s = {st['epoch_images']} / samples/s, the full embedded epoch, also for "
            "models trained on a subset. Processes > cores are marked oversubscribed.", "",
            "| model | title | width | global batch | training images |", "|---|---|---|---|---|",
            *(f"| {k} | {v['title']} | {v['width']} | {v['batch']} | {v['train_subset'] or st['epoch_images']} |"
              for k, v in st["models"].items()), ""]


def _goals(result: dict) -> list[str]:
    s = result["summary"]
    met = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["## Goals", "", "| figure | what | value | goal | met |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {g['what']} | {_f(g['value'], '.3f')} | {g['target']} | {met[g['met']]} |"
              for name, g in s["goals"].items()]
    retried = sum(bool(rep.get("failed_attempts")) for r in result["rows"] for rep in r["repetitions"])
    retried += sum(bool(m.get("failed_attempts")) for m in (result.get("tta") or {}).get("methods", {}).values())
    lines += ["", f"Also: peak-RSS memory ratio FF / DDP (deep CNN) {_f(s['memory_ratio_ff_over_ddp_rss'], '.3f')}; "
              f"worst simulator row: {s['sim_max_rel_error_row'] or '-'}. Simulator basis: {s['sim_basis']}. "
              f"Runs started again after a failed attempt: {retried} (stderr in results.json, failed_attempts).", ""]
    return lines


def _model_tables(result: dict, model: str, cores: int) -> list[str]:
    rows = [r for r in result["rows"] if r["model"] == model]
    lines = [f"## {rows[0]['model_title']}", "",
             "| run | processes | samples/s (min-max) | epoch s | speedup vs 1 worker | utilisation | FF / BP "
             "same workers | KiB sent/step/worker | bottleneck fraction |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kib = r["comm_bytes_per_step_per_worker"] / 1024
        lines.append(f"| {row_label(r, cores)} | {r['processes']} | {_f(r['samples_per_s'])} "
                     f"({_f(r['min_samples_per_s'])}-{_f(r['max_samples_per_s'])}) | {_f(r['epoch_s'], '.2f')} | "
                     f"{_f(r['speedup_vs_1_worker'], '.2f')} | {_f(r['utilisation'], '.2f')} | "
                     f"{_f(r['ff_over_bp_throughput'], '.2f')} | {kib:,.1f} | {_f(r['bottleneck_fraction'], '.2f')} |")
    lines += ["", "Memory per worker (max over a run's stages or ranks, median over repetitions):", "",
              "| run | peak live tensor MiB | training MiB (RSS growth) | peak RSS MiB | tensor MiB per stage | "
              "training MiB per stage (first repetition) |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_mib(r.get(k)) for k in ("tensor_memory_bytes_per_worker", "train_memory_bytes_per_worker",
                                           "peak_memory_bytes_per_worker")]
        first = r["repetitions"][0]
        per_stage = [", ".join(_mib(v) for v in first[k]) if first.get(k) else "-"
                     for k in ("stage_tensor_memory_bytes", "stage_train_memory_bytes")]
        lines.append(f"| {row_label(r, cores)} | " + " | ".join(cells + per_stage) + " |")
    profile = result["profiles"].get(model)
    if profile:
        seconds = ", ".join(f"{1000 * v:.2f}" for v in profile["block_compute_s_per_step"])
        lines += ["", f"FF-sequential profile (simulator input), ms per block per step of {profile['batch']}: "
                  f"{seconds}.", ""]
    return lines


def _sim_and_idle(result: dict, cores: int) -> list[str]:
    piped = [r for r in result["rows"] if r["method"] == "ff_pipeline"]
    lines = ["## Simulator vs measured", "",
             "Predicted by `ffpipe.lab.sim.validate.predict_measured` from the separate FF-sequential profile of "
             "the same model (cpu-loopback link between stages, cpu-allreduce between replicas, processor sharing when "
             "processes > cores).",
             "", "| model | run | measured samples/s | predicted | rel. error | limit |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {row_label(r, cores)} | {_f(r['samples_per_s'])} | "
              f"{_f(r.get('sim_predicted_samples_per_s'))} | {_f(r.get('sim_rel_error'), '.3f')} | "
              f"{r.get('sim_limit') or '-'} |" for r in piped]
    lines += ["", "## Idle % per stage", "", "| model | run | partition (blocks per stage) | idle % per stage |",
              "|---|---|---|---|"]
    lines += [f"| {r['model']} | {row_label(r, cores)} | {r['partition']} | "
              f"{', '.join(f'{v:.1f}' for v in r['idle_pct'] or [])} |" for r in piped]
    return lines + [""]


def _tta(tta: dict | None, cores: int) -> list[str]:
    if not tta:
        return ["## Time to accuracy", "", "Not measured in this invocation (--no-tta, or --quick).", ""]
    methods = tta["methods"]
    lines = ["## Time to accuracy", "",
             f"{MODELS[tta['model']].title.format(w=tta['width'])} on {tta.get('dataset') or 'fashion_mnist_small'}, "
             f"global batch {tta['batch']}, up to {tta['epochs']} epochs, validation after every epoch; time = "
             "cumulative training seconds (sum of the epoch records' train_s; start-up and evaluation excluded for "
             f"both). FF read through its {tta['readouts']['ff_pipeline']} readout, BP through its classifier.", "",
             "| run | readout | target | first epoch reaching it | training s to it | final val |",
             "|---|---|---|---|---|---|"]
    for m in methods.values():
        for hit in m["reached"]:
            name = row_label({**m, "processes": m["workers"]}, cores)
            when = (f"{hit['epoch']} | {hit['train_s']:.1f}" if hit["reached"]
                    else f"not reached in {tta['epochs']} | -")
            lines.append(f"| {name} | {m['readout']} | {hit['target']:.2f} | {when} | {m['final_val']:.3f} |")
    s = tta["summary"]
    lines += ["", f"FF time / DDP time to {s['target']:.2f}: {_f(s['ff_over_ddp_time'], '.2f')}.", "",
              "| epoch | " + " | ".join(f"{k} val | {k} cum. s" for k in methods) + " |",
              "|---|" + "---|---|" * len(methods)]
    for points in zip(*(m["curve"] for m in methods.values())):
        lines.append(f"| {points[0]['epoch']} | "
                     + " | ".join(f"{p['val']:.3f} | {p['cum_train_s']:.1f}" for p in points) + " |")
    return lines + [""]


def markdown(result: dict) -> str:
    """results.md as a string: header, goals, one section per model, simulator, idle, time to accuracy."""
    cores = result["machine"]["cores"]
    lines = _header(result) + _goals(result)
    if result.get("reading"):  # prose written after the run, kept in the JSON so a re-render keeps it
        lines += ["## Reading the goals", "", *result["reading"], ""]
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        lines += _model_tables(result, model, cores)
    lines += _sim_and_idle(result, cores) + _tta(result.get("tta"), cores)
    lines += ["## Definitions", "",
              "- Speedup: samples/s over the same method on 1 worker (FF pipeline over FF sequential, DDP-BP over "
              "BP); utilisation = speedup / workers.",
              "- KiB sent per step per worker: FF, a stage's activation bytes out (measured by the wire) plus, with "
              "replicas, the ring all-reduce 2(R-1)/R x its gradient bytes; DDP, 2(N-1)/N x the gradient bytes.",
              "- Training memory: peak RSS minus the RSS just before the first step (torch runtime, data and model "
              "excluded; ffpipe.run.measure.MemoryMeter). Peak RSS: the process's high-water mark, runtime included.",
              "- Peak live tensor MiB: the most bytes held by live tensors at once during one profiler-sampled "
              "training step per epoch (train.tensor_memory); what a method's activations, gradients and optimizer "
              "state cost, without the allocator's or the runtime's slack.",
              "- Bottleneck fraction: achieved samples/s over global batch / the slowest stage's compute per step."]
    return "\n".join(lines) + "\n"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_png(fig, path)


def plot_speedup(result: dict, path: Path) -> Path:
    """Speedup vs workers, ours (N-stage pipelines and DDP) against the ideal line and the papers' anchors."""
    rows = result["rows"]
    fig, ax = subplots(figsize=(7, 5))
    top = max([4] + [r["workers"] for r in rows])
    ax.plot([1, top], [1, top], "k--", lw=1, label="ideal")
    names = {"deeperforward_pipeline_speedup": "DeeperForward pipeline (GPUs)",
             "deeperforward_bp_ddp_speedup": "BP-DDP in DeeperForward (GPUs)", "pff_all_layers_speedup": "PFF (nodes)"}
    for key, name in names.items():
        pts = sorted([(1, 1.0)] + [(int(k), v) for k, v in result["anchors"].get(key, {}).items()])
        ax.plot(*zip(*pts), "s:", alpha=0.6, label=f"{name}, paper")
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in ("ff_pipeline", "ddp_bp"):
            mine = [r for r in rows if r["model"] == model and r["method"] == method
                    and (method == "ddp_bp" or (r["stages"], r["replicas"]) == (r["workers"], 1))]
            pts = sorted([(1, 1.0, False)] + [(r["workers"], r["speedup_vs_1_worker"], r["oversubscribed"])
                                              for r in mine])
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{model} {method} (ours)")
            over = [p for p in pts if p[2]]
            if over:
                ax.plot([p[0] for p in over], [p[1] for p in over], "o", mfc="white", color=line.get_color())
    ax.set(xlabel="workers (processes); hollow = oversubscribed", ylabel="speedup vs same method on 1 worker",
           title="Scaling")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_ff_over_bp(result: dict, path: Path) -> Path:
    """FF / BP throughput per model: 1 worker (sequential vs BP) and N workers (N-stage pipeline vs DDP)."""
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    groups = [(1, "1 worker: FF sequential / BP")] + [(n, f"{n} workers: FF {n} stages / DDP-BP")
                                                      for n in result["settings"]["workers"]]
    fig, ax = subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for k, (n, name) in enumerate(groups):
        vals = [next((r["ff_over_bp_throughput"] for r in rows if r["model"] == m and r["workers"] == n
                      and r["method"].startswith("ff") and r["replicas"] == 1), None) for m in models]
        ax.bar([i + width * k for i in range(len(models))], [v or 0 for v in vals], width=width,
               label=name + (" (oversubscribed)" if n > result["machine"]["cores"] else ""))
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models)
    ax.set(ylabel="FF / BP samples/s", title="FF vs BP throughput at the same global batch")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_memory(result: dict, path: Path) -> Path:
    """Memory per worker, both measures, every row."""
    rows = result["rows"]
    fig, axes = subplots(1, 2, figsize=(12, 0.32 * len(rows) + 1.6), sharey=True)
    names = [_short(r) for r in rows]
    for ax, key, title in ((axes[0], "train_memory_bytes_per_worker", "training memory (peak - RSS at start)"),
                           (axes[1], "peak_memory_bytes_per_worker", "peak RSS (torch runtime included)")):
        ax.barh(names, [(r[key] or 0) / MiB for r in rows])
        ax.set(xlabel="MiB per worker", title=title)
    axes[0].invert_yaxis()
    axes[0].tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def plot_sim(result: dict, path: Path) -> Path:
    """Predicted vs measured samples/s of every pipelined row, with y = x and a +-10% band."""
    rows = [r for r in result["rows"] if r.get("sim_predicted_samples_per_s")]
    fig, ax = subplots(figsize=(6, 5.5))
    top = max([1.0] + [max(r["samples_per_s"], r["sim_predicted_samples_per_s"]) for r in rows]) * 1.15
    ax.plot([0, top], [0, top], "k-", lw=1, label="y = x")
    ax.fill_between([0, top], [0, 0.9 * top], [0, 1.1 * top], color="grey", alpha=0.25, label="+-10%")
    for r in rows:
        ax.plot(r["samples_per_s"], r["sim_predicted_samples_per_s"], "o", mfc="white" if r["oversubscribed"] else None,
                label=_short(r))
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured samples/s (median)", ylabel="predicted samples/s",
           title="Simulator (separate 1-stage profile) vs measured")
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_idle(result: dict, path: Path) -> Path:
    """Idle % of every stage of every pipelined row."""
    rows = [r for r in result["rows"] if r.get("idle_pct")]
    fig, ax = subplots(figsize=(8, 0.35 * max(1, sum(len(r["idle_pct"]) for r in rows)) + 1.5))
    names, vals = [], []
    for r in rows:
        for k, v in enumerate(r["idle_pct"]):
            names.append(f"{_short(r)} stage {k}")
            vals.append(v)
    ax.barh(names, vals)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set(xlabel="idle % of the timed epoch (waiting for input)", title="Idle per stage")
    return _save(fig, path)


def plot_tta(tta: dict, path: Path) -> Path:
    """Validation accuracy against cumulative training time, with the targets."""
    fig, ax = subplots(figsize=(7, 4.5))
    for m in tta["methods"].values():
        ax.plot([p["cum_train_s"] for p in m["curve"]], [p["val"] for p in m["curve"]], "o-", ms=3,
                label=f"{m['label']} ({m['readout']})")
    for t in tta["targets"]:
        ax.axhline(t, color="grey", ls=":", lw=1)
    ax.set(xlabel="cumulative training s", ylabel="validation accuracy", title="Time to accuracy")
    ax.legend(fontsize=8)
    return _save(fig, path)


def render(result: dict, out_dir: Path) -> list[Path]:
    """Write results.md and every plot into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    md = out_dir / "results.md"
    md.write_text(markdown(result))
    makers = (plot_speedup, plot_ff_over_bp, plot_memory, plot_sim, plot_idle)
    written = [md] + [make(result, out_dir / name) for make, name in zip(makers, PLOTS)]
    if result.get("tta"):
        written.append(plot_tta(result["tta"], out_dir / "tta.png"))
    return written
