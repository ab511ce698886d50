"""The experiment commands: `ffpipe sweep`, `ffpipe report` and `ffpipe analyze dynamics|cam|tsne`.

`ffpipe.cli` registers their flags and imports this module only when one of them runs; each command is a thin
layer over the library functions of this package and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ffpipe.errors import FFPipeError


def _parse_int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise FFPipeError(f"{flag} expects comma-separated block indices, got '{text}'") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from ffpipe.config import DEFAULT_CONFIG
    from ffpipe.lab.analysis.grid import parse_axis, parse_seeds
    from ffpipe.lab.analysis.report import write_report
    from ffpipe.lab.analysis.runs import is_run_dir
    from ffpipe.lab.analysis.sweep import SweepPlan, run_sweep

    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    if config is not None and not Path(config).is_file():
        raise FFPipeError(f"config file not found: {config}")
    if args.stages is not None and args.stages < 1:
        raise FFPipeError(f"--stages must be at least 1, got {args.stages}")
    plan = SweepPlan(Path(args.out), [parse_axis(g) for g in args.grid], parse_seeds(args.seeds), config,
                     list(args.overrides), args.stages)
    outcomes = run_sweep(plan, parallel=args.parallel)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "skipped", "failed")}
    print(f"sweep {plan.out}: {counts['trained']} trained, {counts['skipped']} already done, "
          f"{counts['failed']} failed, of {len(outcomes)} runs")
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"  failed: {outcome.name}: {outcome.message}")
    if any(is_run_dir(plan.run_dir(p)) for p in plan.points):
        for path in write_report(plan.out):
            print(f"wrote {path}")
    return 1 if counts["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from ffpipe.lab.analysis.report import report
    from ffpipe.lab.analysis.runs import find_runs, is_run_dir
    from ffpipe.lab.bench.commands import bench_report

    path = Path(args.path)
    if bench_report(path):
        return 0
    if args.json and is_run_dir(path):
        print(json.dumps(find_runs(path)[0].final_metrics()))
        return 0
    text, written = report(path)
    print(text)
    for file in written:
        print(f"wrote {file}")
    return 0


def cmd_dynamics(args: argparse.Namespace) -> int:
    from ffpipe.lab.analysis.dynamics import format_dynamics, write_dynamics

    result, written = write_dynamics(args.path, args.target, args.out, args.metric)
    print(format_dynamics(result))
    for file in written:
        print(f"wrote {file}")
    return 0


def _default_out(probe, name: str) -> Path:
    out = probe.run_dir / "analysis" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def cmd_cam(args: argparse.Namespace) -> int:
    from ffpipe.lab.analysis.cam import check_cam_layers, compute_cams, render_cams
    from ffpipe.lab.analysis.probe import load_probe

    if args.n < 1:
        raise FFPipeError(f"--n must be at least 1, got {args.n}")
    probe = load_probe(args.checkpoint, args.data_dir)
    layers = check_cam_layers(probe, _parse_int_list(args.layers, "--layers"))
    result = compute_cams(probe, args.split, args.n, layers, args.label)
    out = Path(args.out) if args.out else _default_out(probe, f"cam_{args.split}.png")
    title = f"{probe.checkpoint} ({args.split}, CAM of the {args.label} class)"
    render_cams(result, list(probe.dataset.class_names), out, title)
    correct = int((result.predicted == result.labels).sum())
    print(f"CAMs of {len(result.labels)} {args.split} images ({correct} classified correctly), blocks "
          f"{', '.join(map(str, layers))}: wrote {out}")
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from ffpipe.lab.analysis.probe import load_probe
    from ffpipe.lab.analysis.tsne import _sklearn, parse_layers, render_tsne, tsne_layers, write_scores

    _sklearn()  # fail before loading anything when scikit-learn is missing
    probe = load_probe(args.checkpoint, args.data_dir)
    layers = parse_layers(args.layers, probe.num_blocks)
    size = len(probe.dataset.split(args.split))
    if args.n > size:
        print(f"note: {args.split} has {size} images; embedding all of them")
    result = tsne_layers(probe, args.split, args.n, layers, args.seed, args.stream)
    out = Path(args.out) if args.out else _default_out(probe, f"tsne_{args.split}.png")
    render_tsne(result, list(probe.dataset.class_names), out)
    scores = write_scores(result, out.with_suffix(".json"), str(probe.checkpoint))
    for panel in result["panels"]:
        name = "input" if panel["layer"] == "input" else f"block {panel['layer']}"
        print(f"{name}: silhouette {panel['silhouette']:.4f}")
    print(f"wrote {out} and {scores}")
    return 0
