"""Baselines to compare FF pipelines against: data-parallel backprop (DDP) on the FF config's architecture.

`train_bp(cfg)` trains in this process; `torchrun --nproc-per-node N launch/train_bp.py --config CFG` trains
with N data-parallel processes. Both run THE epoch loop (`ffpipe.run.loop`) with `BPRunner`.
"""

from ffpipe.baselines.ddp import BPRunner, allreduce_bytes_per_step, load_bp_checkpoint, train_bp, train_bp_distributed
from ffpipe.baselines.model import BPNet, build_bp_model, gradient_bytes

__all__ = [
    "BPNet", "BPRunner", "allreduce_bytes_per_step", "build_bp_model", "gradient_bytes", "load_bp_checkpoint",
    "train_bp", "train_bp_distributed",
]
