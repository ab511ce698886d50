"""The `ffpipe` command: every subcommand is registered here, each a thin layer over the library, with one-line
errors for anything the user can fix. The lab's commands (sweep, report, analyze, bench) are imported only when
one of them runs, so training never loads the lab tooling.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import get_args

from ffpipe.config import DEFAULT_CONFIG
from ffpipe.config.sections import Device, KReading, Readout
from ffpipe.errors import FFPipeError

SPLITS = ("train", "val", "test")  # the data's splits, as `ffpipe.data.Dataset` names them


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags of every training command: config, overrides, data, steps, device, output."""
    p.add_argument("--config", help=f"YAML experiment config (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--data-dir", help="where the dataset lives (overrides data.dir)")
    p.add_argument("--max-steps", type=int, help="stop after N training steps")
    p.add_argument("--device", choices=get_args(Device), help="overrides train.device")
    p.add_argument("--out", help="run directory (default: run.out_dir/run.name)")


def load_cli_config(args: argparse.Namespace):
    from ffpipe.config import load_config

    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    overrides = list(args.overrides)
    for flag, key in (("data_dir", "data.dir"), ("stages", "pipeline.stages"), ("replicas", "pipeline.replicas"),
                      ("max_steps", "train.max_steps"),
                      ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(path, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    """Sequential in this process, one worker of a torchrun job, or a pipeline this process starts."""
    from ffpipe.pipeline import launch
    from ffpipe.run.console import final_line
    from ffpipe.run.loop import run_dir_for
    from ffpipe.run.sequential import train

    cfg = load_cli_config(args)
    if launch.in_torchrun() and not args.sequential:
        world = int(os.environ["WORLD_SIZE"])
        stages = args.stages or world // (args.replicas or 1)
        cfg = launch.with_shape(cfg, stages, args.replicas or max(1, world // stages))
        return launch.run_worker(cfg, args.out, args.resume)
    if args.resume and not args.out:
        raise FFPipeError("--resume needs --out RUN_DIR (the run to continue)")
    if cfg.pipeline.stages * cfg.pipeline.replicas > 1 and not args.sequential:
        return launch.spawn(args.argv, cfg, str(run_dir_for(cfg, args.out)))
    summary = train(cfg, out=args.out, resume=args.resume)
    print(final_line(summary["run_dir"], summary["step"], summary["test"]))
    return 0


def cmd_train_bp(args: argparse.Namespace) -> int:
    """`ffpipe train-bp` and `launch/train_bp.py`: one process, or one rank of a torchrun DDP job; only rank 0
    prints."""
    from ffpipe.baselines import train_bp, train_bp_distributed
    from ffpipe.pipeline.launch import in_torchrun

    cfg = load_cli_config(args)
    summary = train_bp_distributed(cfg, args.out) if in_torchrun() else train_bp(cfg, args.out)
    if summary["run_dir"] is not None:
        test = summary["test"]
        print(f"run: {summary['run_dir']}  steps: {summary['step']}  processes: {summary['world_size']}  "
              f"test accuracy: bp {test['bp']:.4f}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ffpipe.run.sequential import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.split, args.readout, args.data_dir)
    if args.json:
        print(json.dumps(result))
    else:
        for name, acc in result["accuracy"].items():
            print(f"{args.split} {name}: {acc:.4f} (n={result['n']})")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from ffpipe.data import data_info, format_info

    info = data_info(args.name, args.data_dir)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_labels_show(args: argparse.Namespace) -> int:
    from ffpipe.data import load_dataset
    from ffpipe.ff.labels import make_encoder
    from ffpipe.run.plots import render_label_grid

    data = load_dataset(args.dataset, args.data_dir)
    image = data.test.images[args.index].float() / 255.0
    encoder = make_encoder(args.encoding, data.num_classes, data.image_shape, label_set=args.label_set, k=args.k,
                           k_reading=args.k_reading)
    title = (f"{args.encoding} labels (set {args.label_set}, K={args.k}, {args.k_reading}) on {args.dataset} "
             f"test #{args.index}")
    path = render_label_grid(encoder, image, args.out, title=title)
    print(f"wrote {path}")
    return 0


def cmd_ckpt_diff(args: argparse.Namespace) -> int:
    from ffpipe.run.checkpoint import diff_checkpoints

    result = diff_checkpoints(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(result))
    else:
        for row in result["blocks"]:
            parts = "  ".join(f"{part}: max|diff| {row[part]['max_abs_diff']:.3g} "
                              f"{'identical' if row[part]['identical'] else 'differs'}"
                              for part in ("block", "head") if part in row)
            print(f"block {row['index']}  {parts}")
        print("FF blocks bitwise identical" if result["identical"] else "FF blocks differ")
    return 0


def _lab(module: str, name: str):
    """A command of the lab tooling (`ffpipe.lab`), imported only when it runs."""
    return lambda args: getattr(importlib.import_module(module), name)(args)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffpipe", description="Forward-Forward training, layer-parallel.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_engine_commands(sub)
    _add_experiment_commands(sub)
    _add_bench_commands(sub)
    return parser


def _add_engine_commands(sub) -> None:
    p = sub.add_parser("train", help="train an FF network")
    _add_model_args(p)
    p.add_argument("--stages", type=int, help="number of pipeline stages (overrides pipeline.stages)")
    p.add_argument("--replicas", type=int, help="data-parallel replicas per stage (overrides pipeline.replicas)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--sequential", action="store_true",
                   help="run the stages one after another in this process (debugging, equivalence checks)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-bp", help="train the backprop (DDP under torchrun) baseline of a config's architecture")
    _add_model_args(p)
    p.set_defaults(func=cmd_train_bp)

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoint dir")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--readout", default="all", choices=[*get_args(Readout), "all"])
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("info", help="split sizes, per-class counts and where the data was found")
    p.add_argument("name")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)

    ckpt = sub.add_parser("ckpt", help="checkpoints").add_subparsers(dest="ckpt_command", required=True)
    p = ckpt.add_parser("diff", help="per block: max abs difference, and whether bitwise identical")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ckpt_diff)

    labels = sub.add_parser("labels", help="label encodings").add_subparsers(dest="labels_command", required=True)
    p = labels.add_parser("show", help="render all label variants of one image to a PNG")
    p.add_argument("--encoding", default="fourier", choices=["onehot", "fourier"])
    p.add_argument("--label-set", type=int, default=1)
    p.add_argument("--k", type=float, default=0.35)
    p.add_argument("--k-reading", default="share", choices=get_args(KReading),
                   help="K as the label's share of the image's intensity, or as a blend weight")
    p.add_argument("--dataset", default="fashion_mnist_small")
    p.add_argument("--data-dir")
    p.add_argument("--index", type=int, default=0, help="test image index")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_labels_show)


def _add_experiment_commands(sub) -> None:
    analysis = "ffpipe.lab.analysis.commands"
    p = sub.add_parser("sweep", help="train a grid of configs × seeds, resumably, then report")
    p.add_argument("--config", help="base YAML config (default: configs/default.yaml if present)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept config key and its values, YAML, e.g. model.width=16,32 (repeatable)")
    p.add_argument("--seeds", default="1", help="number of seeds (5 → 0..4) or a list (1,3,7); default 1")
    p.add_argument("--stages", type=int, help="train every run as a pipeline of this many stages")
    p.add_argument("--parallel", type=int, default=1, metavar="J", help="runs at once, as subprocesses")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run (repeatable)")
    p.add_argument("--out", required=True, help="sweep directory; one run directory per grid point × seed")
    p.set_defaults(func=_lab(analysis, "cmd_sweep"))

    p = sub.add_parser("report", help="summary tables and plots of a sweep or a benchmark, or a run's final metrics")
    p.add_argument("path", help="a sweep directory, a benchmark results directory or a single run directory")
    p.add_argument("--json", action="store_true", help="for a single run: print its final metrics as JSON")
    p.set_defaults(func=_lab(analysis, "cmd_report"))

    analyze = sub.add_parser("analyze", help="look inside trained runs").add_subparsers(
        dest="analyze_command", required=True)
    p = analyze.add_parser("dynamics", help="per-layer accuracy over training, delays, correlations (seed 003)")
    p.add_argument("path", help="a sweep directory (or one run directory)")
    p.add_argument("--target", type=float, default=0.7, help="layer accuracy whose first epoch is the delay")
    p.add_argument("--metric", choices=["auto", "threshold", "pair"], default="auto",
                   help="layer accuracy: seed 003's threshold accuracy, or acc_pair (auto: threshold if logged)")
    p.add_argument("--out", help="output directory (default: PATH/dynamics)")
    p.set_defaults(func=_lab(analysis, "cmd_dynamics"))

    p = analyze.add_parser("cam", help="class activation maps of a conv run (seed 000 §3.3)")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoint dir")
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--n", type=int, default=8, help="number of images (the first n of the split)")
    p.add_argument("--layers", help="block indices, e.g. 2,3 (default: every block with a head slice)")
    p.add_argument("--label", default="predicted", choices=["predicted", "true"], help="class the maps are for")
    p.add_argument("--out", help="PNG path (default: RUN/analysis/cam_SPLIT.png)")
    p.add_argument("--data-dir")
    p.set_defaults(func=_lab(analysis, "cmd_cam"))

    p = analyze.add_parser("tsne", help="t-SNE of each block's positive-stream activity (seed 004 Figs. 4-5)")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoint dir")
    p.add_argument("--split", default="val", choices=SPLITS)
    p.add_argument("--layers", default="all", help="'all', or block indices and/or 'input', e.g. input,0,2")
    p.add_argument("--n", type=int, default=2000, help="number of images (a seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of t-SNE")
    p.add_argument("--stream", default="positive", choices=["positive", "neutral"],
                   help="positive: image + true label (seed 004); neutral: the neutral-label overlay")
    p.add_argument("--out", help="PNG path (default: RUN/analysis/tsne_SPLIT.png); scores go to the .json beside")
    p.add_argument("--data-dir")
    p.set_defaults(func=_lab(analysis, "cmd_tsne"))


def _add_bench_commands(sub) -> None:
    benches = sub.add_parser("bench", help="benchmarks and the pipeline simulator").add_subparsers(
        dest="bench_command", required=True)
    p = benches.add_parser("throughput", help="FF pipeline vs DDP-BP throughput, memory and time to accuracy",
                           description="Runs real FF (sequential, pipelined) and BP (1 process, DDP) trainings "
                                       "side by side and writes results.json, results.md and PNG plots.")
    p.add_argument("--quick", action="store_true",
                   help="tiny models, 1 repetition, N-stage pipelines only, no time to accuracy: a smoke test")
    p.add_argument("--workers", default="2", help="comma-separated worker counts N >= 2 (default 2)")
    p.add_argument("--repeats", type=int, help="repetitions per configuration (default 3; quick 1)")
    p.add_argument("--models", default="mlp,cnn,deepcnn",
                   help="comma-separated model names; the deep group-goodness nets: tinycnn,cnn14,resnet17")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure time to accuracy (default: on in full mode; --quick --tta: a tiny smoke)")
    p.add_argument("--out", help="results dir (default benchmarks/results/throughput, quick: throughput_quick)")
    p.set_defaults(func=_lab("ffpipe.lab.bench.commands", "cmd_throughput"))

    p = benches.add_parser("scaling", help="measure throughput vs stages and check the simulator against it")
    p.add_argument("--quick", action="store_true",
                   help="tiny models (width 64), batch 200, 3000 images: a smoke run, < 2 min")
    p.add_argument("--repeats", type=int, default=1, help="repetitions per point (median, min-max); default 1")
    p.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on N of the 6000 images (data.train_subset) to shorten every epoch")
    p.add_argument("--out", default="benchmarks/results/scaling", help="results directory")
    p.set_defaults(func=_lab("ffpipe.lab.bench.scaling", "cmd_scaling"))

    p = benches.add_parser("simulate", help="predict FF-pipeline vs DDP-BP throughput from measured block times",
                           description="Every number printed is a PREDICTION of ffpipe.lab.sim's cost model; "
                                       "only the per-block times it reads are measurements.")
    p.add_argument("--times", required=True, metavar="FILE",
                   help="times file (.json, format in ffpipe/lab/sim/times.py), a run's metrics.jsonl, or a run dir")
    p.add_argument("--devices", type=_int_list, default=[2, 4, 8, 16], help="device counts (default 2,4,8,16)")
    p.add_argument("--link", default="nvlink", help="a link preset of ffpipe.lab.sim.links (default nvlink)")
    p.add_argument("--nominal", action="store_true", help="use the link's nominal line rate, not its effective one")
    p.add_argument("--queue-depth", type=int, default=2, help="wire depth between stages (pipeline.queue_depth)")
    p.add_argument("--efficiency", type=float, default=1.0,
                   help="share of linear speedup a device keeps when the batch is split (FF replicas and DDP)")
    p.add_argument("--overlap", type=float, default=0.0, help="share of DDP's all-reduce hidden behind backward")
    p.add_argument("--bp-step-s", type=float, help="measured 1-device BP step at the global batch (seconds)")
    p.add_argument("--check-link", default="cpu-loopback",
                   help="link to re-simulate the measured run's own layout on, to compare with what it achieved")
    p.add_argument("--steps", type=int, default=400, help="simulated steps per layout (half are warm-up)")
    p.add_argument("--json", action="store_true", help="print the full prediction as JSON")
    p.set_defaults(func=_lab("ffpipe.lab.sim.commands", "cmd_simulate"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    try:
        return args.func(args)
    except FFPipeError as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ffpipe: interrupted; the last complete checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
