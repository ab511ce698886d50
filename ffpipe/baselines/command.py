"""`ffpipe train-bp` and `launch/train_bp.py`: the BP baseline from the command line.

`add_parser` registers the `train-bp` subcommand on the `ffpipe` CLI (one process). For data parallelism,
start the script under torchrun: `torchrun --nproc-per-node N launch/train_bp.py --config CFG ...`; every
process then joins the DDP job. Both take the flags of `ffpipe train` that concern one model: --config,
--set, --out, --max-steps, --data-dir, --device.
"""

from __future__ import annotations

import argparse
import sys

from ffpipe.errors import FFPipeError


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML experiment config (default: configs/default.yaml if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", help="run directory (default: run.out_dir/run.name)")
    p.add_argument("--max-steps", type=int, help="stop after N training steps")
    p.add_argument("--data-dir", help="where the dataset lives (overrides data.dir)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="overrides train.device")
    p.set_defaults(func=cmd_train_bp)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `train-bp` on the `ffpipe` CLI's subparsers; its func takes `args` and returns an exit code."""
    p = subparsers.add_parser("train-bp", help="train the backprop (DDP) baseline of a config's architecture")
    _add_flags(p)
    return p


def cmd_train_bp(args: argparse.Namespace) -> int:
    """One process, or one rank of a torchrun job; only rank 0 prints."""
    from ffpipe.baselines.trainer import train_bp, train_bp_distributed
    from ffpipe.cli import load_cli_config
    from ffpipe.pipeline.launch import in_torchrun

    cfg = load_cli_config(args)
    summary = train_bp_distributed(cfg, args.out) if in_torchrun() else train_bp(cfg, args.out)
    if summary["run_dir"] is not None:
        test = summary["test"]
        print(f"run: {summary['run_dir']}  steps: {summary['step']}  processes: {summary['world_size']}  "
              f"test accuracy: bp {test['bp']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`launch/train_bp.py`: the `train-bp` flags without a subcommand; errors are one line, exit code 2."""
    parser = argparse.ArgumentParser(prog="train_bp.py", description="Backprop (DDP) baseline of an FF config.")
    _add_flags(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except FFPipeError as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ffpipe: interrupted; the last complete checkpoint is intact", file=sys.stderr)
        return 130
