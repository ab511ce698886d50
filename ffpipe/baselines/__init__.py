"""Baselines to compare FF pipelines against: data-parallel backprop (DDP) on the FF config's architecture.

`train_bp(cfg)` trains in this process; `torchrun --nproc-per-node N launch/train_bp.py --config CFG` trains
with N data-parallel processes; `bp_step_seconds(cfg)` times one training step for throughput tables.
"""

from ffpipe.baselines.model import BPNet, build_bp_model, gradient_bytes
from ffpipe.baselines.timing import bp_step_seconds
from ffpipe.baselines.trainer import load_bp_checkpoint, train_bp, train_bp_distributed
from ffpipe.baselines.world import World

__all__ = [
    "BPNet", "World", "bp_step_seconds", "build_bp_model", "gradient_bytes", "load_bp_checkpoint",
    "train_bp", "train_bp_distributed",
]
