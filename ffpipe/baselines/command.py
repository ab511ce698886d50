"""`ffpipe train-bp` and `launch/train_bp.py`: the BP baseline from the command line.

One process, or, under `torchrun --nproc-per-node N launch/train_bp.py --config CFG ...`, one rank of the
DDP job. The flags are `ffpipe train`'s that concern one model (registered in `ffpipe/cli.py`).
"""

from __future__ import annotations

import argparse


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
