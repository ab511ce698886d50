"""The experiment commands: `ffpipe sweep`, `ffpipe report` and `ffpipe analyze dynamics|cam|tsne`.

`add_parser(subparsers)` registers all three on the main `ffpipe` parser; each command is a thin layer over
the library functions of this package and returns an exit code.
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
    from ffpipe.analysis.grid import parse_axis, parse_seeds
    from ffpipe.analysis.report import write_report
    from ffpipe.analysis.runs import is_run_dir
    from ffpipe.analysis.sweep import SweepPlan, run_sweep
    from ffpipe.cli import DEFAULT_CONFIG

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
    from ffpipe.analysis.report import report
    from ffpipe.analysis.runs import find_runs, is_run_dir
    from ffpipe.bench.command import bench_report

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
    from ffpipe.analysis.dynamics import format_dynamics, write_dynamics

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
    from ffpipe.analysis.cam import check_cam_layers, compute_cams, render_cams
    from ffpipe.analysis.probe import load_probe

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
    from ffpipe.analysis.probe import load_probe
    from ffpipe.analysis.tsne import _sklearn, parse_layers, render_tsne, tsne_layers, write_scores

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


def add_parser(subparsers) -> None:
    """Register `sweep`, `report` and `analyze {dynamics,cam,tsne}` on the `ffpipe` subcommand parser."""
    p = subparsers.add_parser("sweep", help="train a grid of configs × seeds, resumably, then report")
    p.add_argument("--config", help="base YAML config (default: configs/default.yaml if present)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept config key and its values, YAML, e.g. model.width=16,32 (repeatable)")
    p.add_argument("--seeds", default="1", help="number of seeds (5 → 0..4) or a list (1,3,7); default 1")
    p.add_argument("--stages", type=int, help="train every run as a pipeline of this many stages")
    p.add_argument("--parallel", type=int, default=1, metavar="J", help="runs at once, as subprocesses")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run (repeatable)")
    p.add_argument("--out", required=True, help="sweep directory; one run directory per grid point × seed")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("report", help="summary tables and plots of a sweep, or a run's final metrics")
    p.add_argument("path", help="a sweep directory or a single run directory")
    p.add_argument("--json", action="store_true", help="for a single run: print its final metrics as JSON")
    p.set_defaults(func=cmd_report)

    analyze = subparsers.add_parser("analyze", help="look inside trained runs").add_subparsers(
        dest="analyze_command", required=True)
    p = analyze.add_parser("dynamics", help="per-layer accuracy over training, delays, correlations (seed 003)")
    p.add_argument("path", help="a sweep directory (or one run directory)")
    p.add_argument("--target", type=float, default=0.7, help="layer accuracy whose first epoch is the delay")
    p.add_argument("--metric", choices=["auto", "threshold", "pair"], default="auto",
                   help="layer accuracy: seed 003's threshold accuracy, or acc_pair (auto: threshold if logged)")
    p.add_argument("--out", help="output directory (default: PATH/dynamics)")
    p.set_defaults(func=cmd_dynamics)

    p = analyze.add_parser("cam", help="class activation maps of a conv run (seed 000 §3.3)")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoint dir")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--n", type=int, default=8, help="number of images (the first n of the split)")
    p.add_argument("--layers", help="block indices, e.g. 2,3 (default: every block with a head slice)")
    p.add_argument("--label", default="predicted", choices=["predicted", "true"], help="class the maps are for")
    p.add_argument("--out", help="PNG path (default: RUN/analysis/cam_SPLIT.png)")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_cam)

    p = analyze.add_parser("tsne", help="t-SNE of each block's positive-stream activity (seed 004 Figs. 4-5)")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoint dir")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--layers", default="all", help="'all', or block indices and/or 'input', e.g. input,0,2")
    p.add_argument("--n", type=int, default=2000, help="number of images (a seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of t-SNE")
    p.add_argument("--stream", default="positive", choices=["positive", "neutral"],
                   help="positive: image + true label (seed 004); neutral: the neutral-label overlay")
    p.add_argument("--out", help="PNG path (default: RUN/analysis/tsne_SPLIT.png); scores go to the .json beside")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_tsne)
