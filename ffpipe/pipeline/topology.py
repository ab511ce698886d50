"""Who is who in a job: rank → stage, replica and neighbours, the process groups, the device and the backend.

Every piece of rank arithmetic of ffpipe lives here (the idea of torchtitan's `ParallelDims` and picotron's
process-group manager). A job runs P pipeline stages × R data-parallel replicas of the whole pipeline:

    rank = replica · P + stage

Replica r of stage s receives from replica r of stage s − 1 and sends to replica r of stage s + 1; the R
replicas of a stage average their gradients on the stage's own process group. Stage 0 of replica 0 drives the
run (rank 0, the leader: it writes the records); the last stage of each replica sends the joint head's errors
to that replica's earlier stages (`head_channel`). The BP baseline is the special case P = 1, R = world size.

Device and backend: `ffpipe.device.choose_device`, which the sequential trainer asks as a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ffpipe.device import choose_device
from ffpipe.errors import FFPipeError
from ffpipe.pipeline.nccl_order import synchronize_device


@dataclass(frozen=True)
class Topology:
    stages: int
    replicas: int
    rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "gloo"

    @property
    def world(self) -> int:
        return self.stages * self.replicas

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    @property
    def leader(self) -> bool:
        """Rank 0: stage 0 of replica 0, which writes the run's records and manifests."""
        return self.rank == 0

    @property
    def drives(self) -> bool:
        """Stage 0 of every replica reads the data and runs the epoch loop; the other stages follow it."""
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def rank_of(self, stage: int, replica: int | None = None) -> int:
        return (self.replica if replica is None else replica) * self.stages + stage

    @property
    def previous(self) -> int | None:
        """The rank this stage receives activations from (None for stage 0)."""
        return self.rank_of(self.stage - 1) if self.stage > 0 else None

    @property
    def next(self) -> int | None:
        """The rank this stage sends its outputs to (None for the last stage)."""
        return self.rank_of(self.stage + 1) if not self.last else None

    def replica_ranks(self, stage: int) -> list[int]:
        """The ranks that hold `stage`: they average their gradients together."""
        return [self.rank_of(stage, r) for r in range(self.replicas)]

    def shard(self, batch_size: int) -> slice:
        """This replica's contiguous rows of a global batch: replica r of R takes rows r·B/R .. (r+1)·B/R − 1."""
        if batch_size % self.replicas:
            raise FFPipeError(f"data.batch_size {batch_size} does not split into {self.replicas} equal shards "
                              "(one per data-parallel replica); pick a multiple of the replica count")
        m = batch_size // self.replicas
        return slice(self.replica * m, (self.replica + 1) * m)


def join(want: str, stages: int, replicas: int, timeout_s: float = 120.0) -> Topology:
    """Join the torchrun job of stages × replicas processes; every rank builds every replica group (a
    collective call), and keeps its own stage's."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device, backend = choose_device(want, local_rank, local_world)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    world = dist.get_world_size()
    if stages * replicas != world:
        raise FFPipeError(f"{world} processes for {stages} stages × {replicas} replicas: start stages × replicas")
    return Topology(stages, replicas, dist.get_rank(), device, backend)


def replica_group(topology: Topology):
    """The process group of this rank's stage replicas (None when there is one replica). Every rank must call
    this, in the same order: group creation is collective."""
    if topology.replicas == 1:
        return None
    groups = [dist.new_group(topology.replica_ranks(s)) for s in range(topology.stages)]
    return groups[topology.stage]


def backward_group(topology: Topology, needed: bool):
    """A process group over every rank for the channels that run against the activations (the joint head's
    errors, `head_channel`), or None when there are none. NCCL runs all ops of a rank pair in one group on one
    in-order stream, in both directions: on the activations' group, the head-error receive a stage posts at
    start-up would sit ahead of its step-1 activation send, which that error needs first — a deadlock at step 1.
    Its own group is its own communicator, hence its own stream. Collective: every rank calls this."""
    if not needed or topology.stages == 1:
        return None
    return dist.new_group(list(range(topology.world)))


def averager(group, replicas: int):
    """Average gradients over a stage's replicas: one all-reduce of all of a step's gradients, flattened, on
    the stage's own group (the DDP convention), never touching another stage. None for one replica."""
    if group is None:
        return None

    def average(grads: list[torch.Tensor]) -> None:
        if grads:
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=group)
            flat /= replicas
            for grad, value in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(value)

    return average


def leave(device: torch.device) -> None:
    """The orderly end of a job: every rank meets once, after its channels have ended, so no rank tears the
    process group down while a peer's last collective is still in flight (that aborted torchrun workers with
    SIGABRT), then the group goes. First the device is synchronized as a whole, as NCCL sees it
    (`nccl_order.synchronize_device`): a send or receive still posted here would hang it, also under the CPU's
    NCCL emulation, where the tests run pipelines."""
    synchronize_device(device)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
