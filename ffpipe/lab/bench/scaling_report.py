"""results.md and the plots of the scaling benchmark, from its results.json alone (`ffpipe report DIR`).

Every table and plot marks oversubscribed points (more processes than the machine's cores): their processes
time-share the cores, so they show the schedule under time-sharing, never device scaling. Everything under
"Extrapolation" is a PREDICTION of `ffpipe.lab.sim`, labelled so.
"""

from __future__ import annotations

from pathlib import Path

from ffpipe.run.plots import save_png, subplots

PLOTS = {"strong_scaling.png": "strong scaling: speedup vs stages per model (fixed model)",
         "weak_scaling.png": "weak scaling: sample-blocks/s vs stages (1 block per stage)",
         "idle_per_stage.png": "idle % per stage, deepest models at 2 stages and at the most stages",
         "sim_vs_measured.png": "simulator (predicted from each model's 1-stage run) vs measured samples/s"}


def cores_of(result: dict) -> int:
    return result["machine"]["cores"]


def strong_series(result: dict) -> dict[str, list[dict]]:
    """Strong scaling: for every model measured at two or more stage counts, its points by stages."""
    series: dict[str, list[dict]] = {}
    for p in result["points"]:
        series.setdefault(p["model"], []).append(p)
    return {k: sorted(v, key=lambda p: p["stages"]) for k, v in series.items() if len(v) > 1}


def weak_series(result: dict) -> list[dict]:
    """Weak scaling: the plan's depth = stages models (1 block per stage) at its fixed width. Work per sample
    grows with depth, so the rate compared is sample-blocks/s = samples/s x depth, whose ideal is stages x the
    1-block 1-stage rate; weak efficiency = samples/s at P stages / samples/s of the 1-block model."""
    weak = result["plan"]["weak"]
    by = {(p["depth"], p["stages"]): p for p in result["points"]
          if p["family"] == weak["family"] and p["width"] == weak["width"]}
    base = by.get((1, 1))
    rows = []
    for depth in weak["depths"]:
        p = by.get((depth, depth))
        if p is not None:
            rows.append({**p, "sample_blocks_per_s": p["samples_per_s"] * depth,
                         "weak_efficiency": p["samples_per_s"] / base["samples_per_s"] if base else None})
    return rows


def sweep_points(result: dict, family: str) -> list[dict]:
    """The strong-scaling sweep of one family (the weak series' extra models are left to their own table)."""
    plan = result["plan"][family]
    widths = plan.get("widths", [plan.get("width")])
    return [p for p in result["points"] if p["family"] == family and p["width"] in widths
            and p["depth"] in plan["depths"]]


def idle_points(result: dict) -> list[dict]:
    """A few configurations for the idle plot: each extrapolated (deepest) model at 2 stages and at its most."""
    chosen = []
    for extra in result["extrapolation"]:
        piped = [p for p in result["points"] if p["model"] == extra["model"] and p["stages"] > 1]
        if piped:
            top = max(piped, key=lambda p: p["stages"])
            chosen += [p for p in piped if p["stages"] == 2 and p is not top] + [top]
    return chosen


def processes_cell(p: dict, cores: int) -> str:
    return f"{p['processes']} **oversubscribed** (> {cores} cores)" if p["oversubscribed"] else str(p["processes"])


def _rate(p: dict, repeats: int) -> str:
    text = f"{p['samples_per_s']:,.0f}"
    return text + (f" ({p['min_samples_per_s']:,.0f}–{p['max_samples_per_s']:,.0f})" if repeats > 1 else "")


def _idle(p: dict) -> str:
    return ", ".join(f"{v:.0f}" for v in p["idle_pct"]) if p["idle_pct"] is not None else "–"


def sweep_table(points: list[dict], result: dict) -> list[str]:
    cores, repeats = cores_of(result), result["repeats"]
    lines = ["| model | stages | partition | processes | samples/s | s per timed epoch | speedup vs 1 stage "
             "| utilisation | idle % per stage | bottleneck bound samples/s | fraction of bound | slowest stage |",
             "|" + "---|" * 12]
    for p in points:
        b = p["bottleneck"]
        bound = (f"{b['bound_samples_per_s']:,.0f} | {b['fraction']:.2f} | {b['slowest_stage']}" if b
                 else "– | – | –")
        lines.append(f"| {p['title']} | {p['stages']} | {p['partition']} | {processes_cell(p, cores)} | "
                     f"{_rate(p, repeats)} | {p['epoch_s']:.2f} | {p['speedup_vs_1_stage']:.2f}× | "
                     f"{p['utilisation']:.2f} | {_idle(p)} | {bound} |")
    return lines + [""]


def weak_table(result: dict) -> list[str]:
    cores = cores_of(result)
    lines = ["| depth = stages | processes | samples/s | sample-blocks/s | ideal sample-blocks/s | weak efficiency "
             "| idle % per stage |", "|" + "---|" * 7]
    rows = weak_series(result)
    base = next((r for r in rows if r["stages"] == 1), None)
    for r in rows:
        ideal = f"{base['sample_blocks_per_s'] * r['stages']:,.0f}" if base else "–"
        eff = f"{r['weak_efficiency']:.2f}" if r["weak_efficiency"] is not None else "–"
        lines.append(f"| {r['stages']} | {processes_cell(r, cores)} | {_rate(r, result['repeats'])} | "
                     f"{r['sample_blocks_per_s']:,.0f} | {ideal} | {eff} | {_idle(r)} |")
    return lines + [""]


def validation_table(result: dict) -> list[str]:
    cores, goal = cores_of(result), result["summary"]["sim_goal_rel_error"]
    lines = ["| model | stages | partition | processes | measured samples/s | predicted samples/s | relative error "
             f"| within {goal:.0%} | predicted limit |", "|" + "---|" * 9]
    for p in result["points"]:
        if p["prediction"] is None:
            continue
        pred, err = p["prediction"], p["relative_error"]
        lines.append(f"| {p['title']} | {p['stages']} | {p['partition']} | {processes_cell(p, cores)} | "
                     f"{p['samples_per_s']:,.0f} | {pred['samples_per_s']:,.0f} | {err:.1%} | "
                     f"{'yes' if err <= goal else '**no**'} | {pred['limit']} |")
    return lines + [""]


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def validation_summary(result: dict) -> list[str]:
    s = result["summary"]
    return [f"- all pipelined points ({s['sim_points']}): max relative error {_num(s['sim_max_rel_error'], '.1%')}, "
            f"median {_num(s['sim_median_rel_error'], '.1%')}, {s['sim_within_goal']} within "
            f"{s['sim_goal_rel_error']:.0%}",
            f"- points with processes ≤ cores ({s['sim_points_not_oversubscribed']}): max relative error "
            f"{_num(s['sim_max_rel_error_not_oversubscribed'], '.1%')}, median "
            f"{_num(s['sim_median_rel_error_not_oversubscribed'], '.1%')}, "
            f"{s['sim_within_goal_not_oversubscribed']} within {s['sim_goal_rel_error']:.0%}", ""]


def extrapolation_table(result: dict) -> list[str]:
    lines = ["| model | link | devices | fastest layout stages×replicas (partition) | predicted samples/s | "
             "predicted speedup | predicted efficiency | limit | most-stages layout | its predicted samples/s "
             "| its speedup |", "|" + "---|" * 11]
    for extra in result["extrapolation"]:
        for link in extra["links"]:
            for row in link["rows"]:
                b, m = row["best"], row["most_stages"]
                lines.append(f"| {extra['title']} | {link['link']['name']} | {row['devices']} | {b['stages']}×"
                             f"{b['replicas']} ({b['partition']}) | {b['samples_per_s']:,.0f} | {b['speedup']:.2f}× | "
                             f"{b['efficiency']:.2f} | {b['limit']} | {m['stages']}×{m['replicas']} | "
                             f"{m['samples_per_s']:,.0f} | {m['speedup']:.2f}× |")
    return lines + [""]


def markdown(result: dict) -> str:
    m, cores = result["machine"], cores_of(result)
    weak = result["plan"]["weak"]
    subset = f"data.train_subset={result['train_subset']}, " if result["train_subset"] else ""
    lines = [f"# Scaling: FF-pipeline throughput vs stages ({'quick' if result['quick'] else 'full'} mode)", "",
             f"`{result['command']}` — {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}, "
             f"{m['threads_per_process']} thread per process; batch {result['batch']}, {subset}"
             f"{result['steps_per_epoch']} steps per epoch, epoch {result['timed_epoch']} timed ({result['steps']} "
             f"steps run); partition {result['partition']}; head local, one linear readout; "
             f"{result['repeats']} repetition(s) per point" + (" (median, min–max)" if result["repeats"] > 1 else "")
             + f"; wall time {result['wall_s'] / 60:.1f} min; load average (1, 5, 15 min) "
             f"{result['load_average']['start']} at the start, {result['load_average']['end']} at the end "
             "(anything above 0 besides this benchmark's own processes slows the points).", "",
             f"**This machine has {cores} cores.** A run with more processes (one per stage) than cores is marked "
             "**oversubscribed**: its processes time-share the cores, so it shows the pipeline schedule under "
             "time-sharing, not device scaling (hollow markers and the dotted line at "
             f"{cores} stages in the plots). Speedup and utilisation (= speedup / stages) are against the same "
             "model's 1-stage run. The bottleneck bound is the batch over the slowest stage's compute time per "
             "step.", "",
             "## MLP sweep (strong scaling)", "", *sweep_table(sweep_points(result, "mlp"), result),
             "## CNN sweep (strong scaling)", "", *sweep_table(sweep_points(result, "cnn"), result),
             f"## Weak scaling: depth = stages, {weak['family'].upper()} width {weak['width']}", "",
             "One block per stage; the ideal keeps samples/s constant, i.e. sample-blocks/s grows as stages × "
             "the 1-block 1-stage rate.", "", *weak_table(result),
             "## Simulator validation: predicted vs measured", "",
             "Each pipelined point predicted by `ffpipe.lab.sim.validate.predict_measured` from the same model's "
             "1-stage run (its per-block times of the timed epoch), over the run's own partition, the "
             "cpu-loopback link and a processor-sharing cap at the core count. Goal: ≤ "
             f"{result['summary']['sim_goal_rel_error']:.0%} error.", "",
             *validation_table(result), *validation_summary(result),
             "## Extrapolation to 4, 8 and 16 devices — PREDICTION, not measured", "",
             "**Every number in this table is a prediction of `ffpipe.lab.sim.predict`**, from the per-block times of "
             "each model's 1-stage run on this CPU, over the NVLink (H100) and PCIe 4 link presets. The block "
             "times are CPU times, so this shows the schedule's scaling shape for these relative stage costs "
             "(and the links' share), not GPU speeds. Fastest layout = the best stages × replicas with "
             "stages × replicas ≤ devices; most-stages layout = min(devices, depth) stages. Speedup is over "
             "the predicted 1-device rate. Replicas split the global batch of "
             f"{result['batch']}, and a block's time is taken as linear in its batch (`efficiency` 1), which is "
             "optimistic for small per-replica batches on a GPU.", "", *extrapolation_table(result),
             "## Plots", "", *(f"- `{name}`: {what}" for name, what in PLOTS.items()), "",
             "## Summary", "", *(f"- {k}: {v}" for k, v in result["summary"].items())]
    return "\n".join(lines) + "\n"


def _marker(ax, x, y, over: bool, color, label=None) -> None:
    ax.plot([x], [y], "o", color=color, mfc="none" if over else color, label=label)


def _stage_axis(ax, stages: list[int], cores: int) -> None:
    """Stages on a log2 axis with integer ticks; a dotted line at the core count and the oversubscribed side
    (more processes than cores) shaded."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(stages, [str(s) for s in stages])
    ax.minorticks_off()
    ax.axvline(cores, color="grey", ls=":", label=f"{cores} cores")
    if max(stages) > cores:
        ax.axvspan(cores, max(stages) * 1.1, color="red", alpha=0.07,
                   label="oversubscribed (processes > cores; hollow markers): time-shared, not device scaling")


def strong_plot(result: dict, path: Path) -> None:
    series = strong_series(result)
    families = [f for f in ("mlp", "cnn") if any(v[0]["family"] == f for v in series.values())]
    fig, axes = subplots(1, len(families), figsize=(6 * len(families), 4.5), squeeze=False)
    for ax, family in zip(axes[0], families):
        top = max(p["stages"] for v in series.values() for p in v if p["family"] == family)
        ideal = [2 ** i for i in range(top.bit_length())]  # the log-2 stage axis: y = x drawn through its ticks
        ax.plot(ideal, ideal, "k--", label="ideal (speedup = stages)")
        for k, pts in enumerate(v for v in series.values() if v[0]["family"] == family):
            color = f"C{k % 10}"
            ax.plot([p["stages"] for p in pts], [p["speedup_vs_1_stage"] for p in pts], "-", color=color)
            for i, p in enumerate(pts):
                _marker(ax, p["stages"], p["speedup_vs_1_stage"], p["oversubscribed"], color,
                        pts[0]["title"] if i == 0 else None)
        _stage_axis(ax, sorted({p["stages"] for v in series.values() for p in v if p["family"] == family}),
                    cores_of(result))
        ax.set(xlabel="stages (processes)", ylabel="speedup vs same model on 1 stage",
               title=f"{family.upper()} strong scaling (measured, CPU)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def weak_plot(result: dict, path: Path) -> None:
    rows, weak = weak_series(result), result["plan"]["weak"]
    fig, ax = subplots(figsize=(6, 4.5))
    base = next((r for r in rows if r["stages"] == 1), None)
    if base:
        top = max(r["stages"] for r in rows)
        ideal = [2 ** i for i in range(top.bit_length())]
        ax.plot(ideal, [s * base["sample_blocks_per_s"] for s in ideal], "k--", label="ideal")
    ax.plot([r["stages"] for r in rows], [r["sample_blocks_per_s"] for r in rows], "-", color="C0")
    for i, r in enumerate(rows):
        _marker(ax, r["stages"], r["sample_blocks_per_s"], r["oversubscribed"], "C0",
                f"{weak['family'].upper()} width {weak['width']}, depth = stages" if i == 0 else None)
    if rows:
        _stage_axis(ax, [r["stages"] for r in rows], cores_of(result))
    ax.set(xlabel="stages = blocks", ylabel="sample-blocks/s (samples/s × depth)",
           title="Weak scaling, 1 block per stage (measured, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def idle_plot(result: dict, path: Path) -> None:
    points = idle_points(result)
    fig, axes = subplots(1, max(len(points), 1), figsize=(3.2 * max(len(points), 1), 3.6), squeeze=False)
    for ax, p in zip(axes[0], points):
        ax.bar(range(len(p["idle_pct"])), p["idle_pct"], color="C3" if p["oversubscribed"] else "C0")
        tag = "\nOVERSUBSCRIBED" if p["oversubscribed"] else ""
        ax.set_xticks(range(len(p["idle_pct"])))
        ax.set(xlabel="stage", ylabel="idle %", ylim=(0, 100), title=f"{p['title']}, {p['stages']} stages{tag}")
        ax.title.set_fontsize(8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def sim_plot(result: dict, path: Path) -> None:
    from matplotlib import ticker

    points = [p for p in result["points"] if p["prediction"] is not None]
    goal = result["summary"]["sim_goal_rel_error"]
    fig, ax = subplots(figsize=(5.5, 5))
    if points:
        values = [v for p in points for v in (p["samples_per_s"], p["prediction"]["samples_per_s"])]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="predicted = measured")
        ax.fill_between([lo, hi], [lo * (1 - goal), hi * (1 - goal)], [lo * (1 + goal), hi * (1 + goal)],
                        color="grey", alpha=0.2, label=f"±{goal:.0%}")
        for family, color in (("mlp", "C0"), ("cnn", "C1")):
            for over in (False, True):
                sel = [p for p in points if p["family"] == family and p["oversubscribed"] == over]
                if sel:
                    ax.plot([p["samples_per_s"] for p in sel], [p["prediction"]["samples_per_s"] for p in sel], "o",
                            color=color, mfc="none" if over else color,
                            label=f"{family.upper()}{' (oversubscribed)' if over else ''}")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            axis.set_minor_formatter(ticker.NullFormatter())
    ax.set(xlabel="measured samples/s", ylabel="predicted samples/s (from the 1-stage run)",
           title="ffpipe.lab.sim vs measured (pipelined points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def render(result: dict, out_dir: Path) -> str:
    """Write results.md and every plot of `result` (a scaling results.json) into `out_dir`; return the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (out_dir / "results.md").write_text(text)
    for name, plot in zip(PLOTS, (strong_plot, weak_plot, idle_plot, sim_plot)):
        plot(result, out_dir / name)
    return text
