"""The BP baseline's runner: data-parallel backprop (DDP) on an FF config's architecture, in THE epoch loop.

Everything but the learning rule is the FF runs': the loop (`ffpipe.run.loop`: run dir, epochs, eval cadence,
records, checkpoints), the data (`epoch_batches` with the same seeded epoch order, `data.batch_size` as the
global batch of one optimizer step), the `optim` section (one optimizer for the whole model, the per-epoch
`lr_at` schedule) and the terminal view. So an FF run and a BP run of one config differ only in how the
weights learn.

Data parallelism: rank r of N is replica r of a one-stage pipeline (`ffpipe.pipeline.topology`); it takes the
contiguous rows r·B/N .. (r+1)·B/N − 1 of every global batch and `DistributedDataParallel` averages the
gradients, so N ranks take the very steps one process takes at batch B, up to the order of float summation.
With `train.micro_batches` each rank accumulates its shard's gradients over that many micro-batches and
all-reduces once (`train_step`): less activation memory per rank, the same step up to summation order.
Exception: BatchNorm. On GPUs it becomes `SyncBatchNorm` (statistics over the global batch, as in one
process); on the CPU, where torch has no SyncBatchNorm, each rank normalizes with its own shard's statistics,
the usual DDP behaviour.

Its records add to the common fields "train_loss", "train_acc", "world_size", "micro_batches" and
"allreduce_bytes_per_step" (each rank sends 2(N − 1)/N × the gradient bytes per step in a ring all-reduce,
the bandwidth-optimal volume that NCCL's and gloo's rings move); memory (peak RSS, training RSS and the peak of
live tensor bytes of a sampled step: `ffpipe.run.measure.MemoryMeter`) is the maximum over ranks, and the
validation readout is "bp". Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ffpipe.baselines.model import build_bp_model, gradient_bytes, micro_batch_rows, train_step
from ffpipe.config import Config, to_dict
from ffpipe.data import Split, epoch_batches, load_for_config, num_batches
from ffpipe.device import choose_device
from ffpipe.errors import FFPipeError
from ffpipe.ff.optim import make_optimizer, schedule_of, set_lr
from ffpipe.ff.stage import NonFiniteLoss
from ffpipe.pipeline import topology as topology_mod
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.topology import Topology
from ffpipe.run import loop
from ffpipe.run.checkpoint import atomic_torch_save, checkpoint_dir
from ffpipe.run.loop import EpochTally, Step
from ffpipe.run.measure import MemoryMeter
from ffpipe.run.plots import save_confusion

CHECKPOINT_FILE = "bp.pt"
READOUT = "bp"


def autocast_for(cfg: Config, device: torch.device):
    """A context factory: bf16 autocast when `train.precision` is bf16 (as the FF stages do), else nothing."""
    if cfg.train.precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _all_reduce(tensor: torch.Tensor, device: torch.device, op=dist.ReduceOp.SUM) -> torch.Tensor:
    tensor = tensor.to(device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def allreduce_bytes_per_step(grad_bytes: int, world: int) -> int:
    """Bytes each rank sends per step to average `grad_bytes` of gradients with a ring all-reduce (a
    reduce-scatter then an all-gather, N − 1 chunks of 1/N each): 0 for one process, the gradient size for
    two, approaching twice it for many (Patarasuk & Yuan 2009)."""
    return round(grad_bytes * 2 * (world - 1) / world)


class BPRunner:
    progress_bar = True

    def __init__(self, cfg: Config, topology: Topology):
        self.cfg, self.topology, self.cpu0 = cfg, topology, time.process_time()  # `cpu_s` counts from here
        self.leader, self.world = topology.leader, topology.world
        self.device = topology.device
        self.dataset = load_for_config(cfg.data)
        self.steps_per_epoch = num_batches(len(self.dataset.train), cfg.data.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise FFPipeError(f"data.batch_size {cfg.data.batch_size} is larger than the "
                              f"{len(self.dataset.train)} training images")
        self.rows = topology.shard(cfg.data.batch_size)
        self.micro_batches = cfg.train.micro_batches
        micro_batch_rows(self.rows.stop - self.rows.start, self.micro_batches)  # refuse a non-divisor now
        self.model = build_bp_model(cfg, self.dataset.image_shape, self.dataset.num_classes).to(self.device)
        wrapped = self.model
        if dist.is_initialized():
            if self.device.type == "cuda":
                wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
            wrapped = DistributedDataParallel(wrapped, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self.forward = torch.compile(wrapped) if cfg.train.compile else wrapped
        self.no_sync = wrapped.no_sync if isinstance(wrapped, DistributedDataParallel) else contextlib.nullcontext
        o = cfg.optim
        self.optimizer = make_optimizer(self.model.parameters(), o.name, o.lr, momentum=o.momentum,
                                        weight_decay=o.weight_decay)
        self.autocast = autocast_for(cfg, self.device)
        self.comm = allreduce_bytes_per_step(gradient_bytes(self.model), topology.world)
        self._cm: torch.Tensor | None = None

    def live(self, console) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def start(self, run_dir: Path, resume: bool) -> int:
        if resume:
            raise FFPipeError("the BP baseline does not resume; start a new run")
        # after data load and model build, before the first step
        self.memory = MemoryMeter(self.device, self.cfg.train.tensor_memory)
        return 0

    def set_epoch(self, epoch: int) -> float:
        lr = schedule_of(self.cfg.optim)(self.cfg.optim.lr, epoch, self.cfg.train.epochs)
        set_lr(self.optimizer, lr)
        self.memory.new_epoch()
        return lr

    def batches(self, epoch: int, offset: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return epoch_batches(self.dataset.train, self.cfg.data.batch_size, seed=self.cfg.train.seed, epoch=epoch,
                             device=self.device, start_batch=offset, augment=self.cfg.data.augment)

    def train_step(self, step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        """This rank's shard of the global batch; DDP averages the gradients over the ranks."""
        x, y = batch[0][self.rows], batch[1][self.rows]
        self.model.set_step(step)
        with self.memory.step(self.model, self.optimizer, x, y):  # the epoch's first step is its sample
            loss, correct = train_step(self.forward, self.optimizer, x, y, self.autocast, self.micro_batches,
                                       self.no_sync)
        return Step(loss, correct, len(y))

    def end_epoch(self, epoch: int, step: int, evaluate_now: bool, tally: EpochTally) -> tuple[dict, dict | None]:
        sums = _all_reduce(torch.stack([torch.as_tensor(tally.loss_sum, dtype=torch.float32, device=self.device),
                                        torch.as_tensor(tally.correct, dtype=torch.float32, device=self.device)]),
                           self.device)
        seen = tally.seen * self.topology.world
        loss = float(sums[0]) / seen
        if not torch.isfinite(torch.tensor(loss)):
            raise NonFiniteLoss(f"the BP loss became {loss} in epoch {epoch} (step {step}); lower optim.lr")
        memory = self.memory.read()
        peak = _all_reduce(torch.tensor([-1 if v is None else v for v in memory.values()], dtype=torch.int64),
                           self.device, dist.ReduceOp.MAX)  # -1: not measured (`train.tensor_memory` off)
        train_s = tally.train_s
        fields = {"train_s": train_s, "samples_per_s": seen / train_s if train_s > 0 else 0.0,
                  **dict(zip(memory, (int(v) if v >= 0 else None for v in peak.tolist()))), "train_loss": loss,
                  "train_acc": float(sums[1]) / seen, "world_size": self.topology.world,
                  "allreduce_bytes_per_step": self.comm, "micro_batches": self.micro_batches}
        val = self.evaluate(self.dataset.val)[0] if evaluate_now else None
        cpu = _all_reduce(torch.tensor([time.process_time() - self.cpu0], dtype=torch.float64), self.device)
        return {**fields, "cpu_s": float(cpu[0])}, val

    def evaluate(self, split: Split) -> tuple[dict, torch.Tensor]:
        """Accuracy of the classifier on `split`; rank r evaluates batches r, r + N, ... and the ranks sum
        their confusion matrices (rows = true class), so the result covers the whole split exactly once."""
        classes, world = self.dataset.num_classes, self.topology.world
        cm = torch.zeros(classes * classes, dtype=torch.int64, device=self.device)
        self.model.eval()
        t0, seen = time.perf_counter(), 0
        with torch.no_grad():
            batches = epoch_batches(split, self.cfg.data.eval_batch_size, seed=0, epoch=0, shuffle=False,
                                    drop_last=False, device=self.device)
            for b, (x, y) in enumerate(batches):
                if b % world != self.topology.rank:
                    continue
                with self.autocast():
                    pred = self.model(x).argmax(dim=1)
                cm += torch.bincount(y * classes + pred, minlength=classes * classes)
                seen += len(y)
        self.model.train()
        ms = 1000.0 * (time.perf_counter() - t0) / seen if seen else 0.0
        cm = _all_reduce(cm, self.device).view(classes, classes).cpu()
        n = int(cm.sum())
        return {READOUT: float(cm.trace()) / n if n else 0.0, "infer_ms_per_image": {READOUT: ms}, "n": n}, cm

    def checkpoint(self, run_dir: Path, epoch: int, step: int) -> None:
        """`RUN/checkpoints/epoch-000N/bp.pt`: model and optimizer state, one atomic file; keeps the newest
        `run.keep_checkpoints` of them."""
        if not self.leader:
            return
        path = checkpoint_dir(run_dir, epoch) / CHECKPOINT_FILE
        atomic_torch_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "epoch": epoch, "step": step, "config": to_dict(self.cfg)}, path)
        saved = sorted(p.parent for p in (run_dir / "checkpoints").glob(f"epoch-*/{CHECKPOINT_FILE}"))
        for old in saved[:-self.cfg.run.keep_checkpoints]:
            shutil.rmtree(old)

    def test(self, step: int) -> dict:
        result, self._cm = self.evaluate(self.dataset.test)
        return result

    def finish(self, run_dir: Path) -> None:
        save_confusion(self._cm, self.dataset.class_names, run_dir / "confusion.json", run_dir / "confusion.png")


def load_bp_checkpoint(path: str | Path) -> dict:
    """A BP checkpoint from its file, its epoch dir or its run dir (the newest), read with weights_only."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"checkpoints/epoch-*/{CHECKPOINT_FILE}")) or sorted(path.glob(CHECKPOINT_FILE))
        if not found:
            raise FFPipeError(f"no BP checkpoint ({CHECKPOINT_FILE}) under {path}")
        path = found[-1]
    if not path.is_file():
        raise FFPipeError(f"BP checkpoint {path} does not exist")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt or unsafe files raise many types; all mean "cannot use it"
        raise FFPipeError(f"cannot load BP checkpoint {path} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= state.keys():
        raise FFPipeError(f"{path} is not an ffpipe BP checkpoint")
    return state


def train_bp(cfg: Config, out: str | None = None) -> dict:
    """Train the BP baseline of `cfg` in this process (no DDP); returns the summary."""
    topology = Topology(1, 1, 0, choose_device(cfg.train.device)[0])
    return {**loop.train(BPRunner(cfg, topology), loop.run_dir_for(cfg, out)), "world_size": 1}


def train_bp_distributed(cfg: Config, out: str | None = None) -> dict:
    """The body of one torchrun process: join the job as one replica, train with DDP, leave."""
    world = int(os.environ["WORLD_SIZE"])
    topology = topology_mod.join(cfg.train.device, 1, world, timeout_s=300)
    control = Control(dist.distributed_c10d._get_default_store(), 0)
    run_dir = Path(control.agree("bp_run_dir", lambda: str(loop.run_dir_for(cfg, out)), topology.leader))
    try:
        summary = loop.train(BPRunner(cfg, topology), run_dir)
    finally:
        topology_mod.leave(topology.device)
    return {**summary, "run_dir": summary["run_dir"] if topology.leader else None, "world_size": world}
