"""The `ffpipe` command: thin subcommands over the library, and one-line errors for anything the user can fix."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ffpipe.analysis.cli import add_parser as add_analysis
from ffpipe.bench.command import add_parser as add_throughput
from ffpipe.bench.scaling import add_parser as add_scaling
from ffpipe.errors import FFPipeError
from ffpipe.sim import add_parser as add_simulate

DEFAULT_CONFIG = "configs/default.yaml"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags of every training command: config, overrides, data, steps, device, output."""
    p.add_argument("--config", help=f"YAML experiment config (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--data-dir", help="where the dataset lives (overrides data.dir)")
    p.add_argument("--max-steps", type=int, help="stop after N training steps")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="overrides train.device")
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
    test = summary["test"]
    shown = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
    print(f"run: {summary['run_dir']}  steps: {summary['step']}  test accuracy: {shown}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffpipe", description="Forward-Forward training, layer-parallel.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--readout", default="all", choices=["linear", "goodness", "group", "all"])
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

    add_analysis(sub)

    bench = sub.add_parser("bench", help="benchmarks and the pipeline simulator")
    benches = bench.add_subparsers(dest="bench_command", required=True)
    add_scaling(benches)
    add_throughput(benches)
    add_simulate(benches)

    labels = sub.add_parser("labels", help="label encodings").add_subparsers(dest="labels_command", required=True)
    p = labels.add_parser("show", help="render all label variants of one image to a PNG")
    p.add_argument("--encoding", default="fourier", choices=["onehot", "fourier"])
    p.add_argument("--label-set", type=int, default=1)
    p.add_argument("--k", type=float, default=0.35)
    p.add_argument("--k-reading", default="share", choices=["share", "blend"],
                   help="K as the label's share of the image's intensity, or as a blend weight")
    p.add_argument("--dataset", default="fashion_mnist_small")
    p.add_argument("--data-dir")
    p.add_argument("--index", type=int, default=0, help="test image index")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_labels_show)
    return parser


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
