"""Which device and backend a process trains on: asked by every runner, so it sits below them all.

NCCL when every local rank has its own GPU and the config allows CUDA; with `train.device: cuda` and fewer
GPUs than local ranks, the ranks share the GPUs over gloo; else gloo on the CPU, where the cores are split
evenly between the local processes so N ranks do not oversubscribe the machine N-fold. The sequential trainer
and the BP baseline ask the same question as a world of one, without importing the pipeline.
"""

from __future__ import annotations

import os

import torch

from ffpipe.errors import FFPipeError


def choose_device(want: str, local_rank: int = 0, local_world: int = 1) -> tuple[torch.device, str]:
    """(device, backend) for local process `local_rank` of `local_world` on this node; `want` is
    `train.device` (cpu, cuda or auto). Sets the CUDA device, or the CPU thread count when several processes
    share the cores."""
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want in ("cuda", "auto") and have >= local_world:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    if want == "cuda" and have:
        # Fewer GPUs than processes: they share them, over gloo, which moves the activations through host
        # memory (the wire stages them). This runs a P-stage pipeline on one GPU (benchmarks/gpu_check.py):
        # the stage code, the events and the schedule on CUDA; it is not the fast path.
        torch.cuda.set_device(local_rank % have)
        return torch.device("cuda", local_rank % have), "gloo"
    if want == "cuda":
        raise FFPipeError("train.device cuda needs a GPU on this node, found none")
    if local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return torch.device("cpu"), "gloo"
