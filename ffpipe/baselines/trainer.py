"""The BP baseline's training loop: data-parallel backprop (DDP) on an FF config's architecture.

Everything but the learning rule is the FF trainer's: the data (`epoch_batches` with the same seeded epoch
order, `data.batch_size` as the global batch of one optimizer step), the `optim` section (one optimizer for
the whole model, the per-epoch `lr_at` schedule), the run dir (config.yaml, metrics.jsonl, confusion
matrix, atomic checkpoints) and the terminal view. So an FF run and a BP run of one config differ only in
how the weights learn.

Data parallelism: rank r of N takes the contiguous rows r·B/N .. (r+1)·B/N − 1 of every global batch and
`DistributedDataParallel` averages the gradients, so N ranks take the very steps one process takes at batch
B, up to the order of float summation. Exception: BatchNorm. On GPUs it becomes `SyncBatchNorm` (statistics
over the global batch, as in one process); on the CPU, where torch has no SyncBatchNorm, each rank
normalizes with its own shard's statistics, the usual DDP behaviour.

Each epoch record holds "epoch", "step", "lr", "train_s", "wall_s", "samples_per_s", "train_loss",
"train_acc", "world_size", "peak_memory_bytes" and "train_memory_bytes" (max over ranks; see
`ffpipe.metrics.MemoryMeter`: on the CPU the training figure leaves out what a process held before its first
step, the torch runtime, the data and the model), "allreduce_bytes_per_step" (see
`World.allreduce_bytes_per_step`) and, on evaluation epochs, "val": {"bp": accuracy, "n": N,
"infer_ms_per_image": {"bp": ms}}; the last record is {"kind": "test", "test": {...}}. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ffpipe.baselines.model import build_bp_model, gradient_bytes, train_step
from ffpipe.baselines.world import World, join_world, leave_world, single_world
from ffpipe.checkpoint import atomic_torch_save, checkpoint_dir
from ffpipe.config import Config, dump_config, to_dict
from ffpipe.data import Dataset, Split, epoch_batches, load_for_config, num_batches
from ffpipe.errors import FFPipeError
from ffpipe.metrics import MemoryMeter, MetricsLog, TrainView
from ffpipe.optim import lr_at, make_optimizer, set_lr
from ffpipe.plots import save_confusion
from ffpipe.trainer import run_dir_for

CHECKPOINT_FILE = "bp.pt"
READOUT = "bp"


def autocast_for(cfg: Config, device: torch.device):
    """A context factory: bf16 autocast when `train.precision` is bf16 (as the FF stages do), else nothing."""
    if cfg.train.precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_bp(cfg: Config, out: str | None = None) -> dict:
    """Train the BP baseline of `cfg` in this process (world size 1, no DDP); returns the summary."""
    return run(cfg, out, single_world(cfg))


def train_bp_distributed(cfg: Config, out: str | None = None) -> dict:
    """The body of one torchrun process: join the process group, train with DDP, leave."""
    world = join_world(cfg)
    try:
        return run(cfg, out, world)
    finally:
        leave_world(world)


def _wrap(model: nn.Module, world: World) -> nn.Module:
    if not world.distributed:
        return model
    if world.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)


def evaluate(model: nn.Module, split: Split, cfg: Config, world: World, num_classes: int) -> tuple[dict, torch.Tensor]:
    """Accuracy of the classifier on `split`; rank r evaluates batches r, r + N, ... and the ranks sum
    their confusion matrices (rows = true class), so the result covers the whole split exactly once."""
    autocast = autocast_for(cfg, world.device)
    cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=world.device)
    model.eval()
    t0, seen = time.perf_counter(), 0
    with torch.no_grad():
        batches = epoch_batches(split, cfg.data.eval_batch_size, seed=0, epoch=0, shuffle=False,
                                drop_last=False, device=world.device)
        for b, (x, y) in enumerate(batches):
            if b % world.size != world.rank:
                continue
            with autocast():
                pred = model(x).argmax(dim=1)
            cm += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
            seen += len(y)
    model.train()
    ms = 1000.0 * (time.perf_counter() - t0) / seen if seen else 0.0
    cm = world.all_reduce(cm).view(num_classes, num_classes).cpu()
    n = int(cm.sum())
    return {READOUT: float(cm.trace()) / n if n else 0.0, "infer_ms_per_image": {READOUT: ms}, "n": n}, cm


def save_checkpoint(run_dir: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, step: int) -> Path:
    """`RUN/checkpoints/epoch-000N/bp.pt`: model and optimizer state, one atomic file; keeps the newest
    `run.keep_checkpoints` of them."""
    path = checkpoint_dir(run_dir, epoch) / CHECKPOINT_FILE
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                       "step": step, "config": to_dict(cfg)}, path)
    saved = sorted(p.parent for p in (run_dir / "checkpoints").glob(f"epoch-*/{CHECKPOINT_FILE}"))
    for old in saved[:-cfg.run.keep_checkpoints]:
        shutil.rmtree(old)
    return path


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


class _Epoch:
    """One epoch's running sums on this rank, read with one all-reduce at its end."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, device=device)  # loss × samples, correct
        self.local = 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums += torch.stack([loss * n, correct.float()])
        self.local += n


def run(cfg: Config, out: str | None, world: World) -> dict:
    """Train `cfg`'s BP twin on this rank of `world`; every rank returns the same summary."""
    dataset: Dataset = load_for_config(cfg.data)
    batch = cfg.data.batch_size
    spe = num_batches(len(dataset.train), batch, drop_last=True)
    if spe == 0:
        raise FFPipeError(f"data.batch_size {batch} is larger than the {len(dataset.train)} training images")
    rows = world.shard(batch)
    model = build_bp_model(cfg, dataset.image_shape, dataset.num_classes).to(world.device)
    wrapped = _wrap(model, world)
    forward = torch.compile(wrapped) if cfg.train.compile else wrapped
    o = cfg.optim
    optimizer = make_optimizer(model.parameters(), o.name, o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    autocast = autocast_for(cfg, world.device)
    comm = world.allreduce_bytes_per_step(gradient_bytes(model))
    run_dir, log = None, None
    if world.leader:
        run_dir = run_dir_for(cfg, out)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir / "metrics.jsonl")
    epochs = cfg.train.epochs
    last_step = min(epochs * spe, cfg.train.max_steps or epochs * spe)
    step, val = 0, None
    view = TrainView(last_step, epochs, enabled=cfg.train.progress) if world.leader else None
    memory = MemoryMeter(world.device)  # after data load and model build, before the first step
    with view or contextlib.nullcontext():
        while step < last_step:
            epoch = step // spe + 1
            lr = lr_at(o.schedule, o.lr, epoch, epochs, milestones=o.milestones, gamma=o.gamma)
            set_lr(optimizer, lr)
            meter = _Epoch(world.device)
            for x, y in epoch_batches(dataset.train, batch, seed=cfg.train.seed, epoch=epoch, device=world.device):
                loss, correct = train_step(forward, optimizer, x[rows], y[rows], autocast)
                meter.add(loss, correct, len(y[rows]))
                step += 1
                if view is not None and (step % 10 == 0 or step == last_step):
                    elapsed = time.perf_counter() - meter.t0
                    view.update(step, epoch, float(loss), float(meter.sums[1]) / meter.local,
                                meter.local * world.size / elapsed)
                if step == last_step:
                    break
            record = _epoch_record(meter, world, epoch, step, lr, comm, memory)
            if epoch % cfg.train.eval_every == 0 or step == last_step:
                val, _ = evaluate(model, dataset.val, cfg, world, dataset.num_classes)
                record["val"] = val
            record["wall_s"] = time.perf_counter() - meter.t0
            if world.leader:
                log.write(record)
                view.epoch_summary(record)
                save_checkpoint(run_dir, cfg, model, optimizer, epoch, step)
    test, cm = evaluate(model, dataset.test, cfg, world, dataset.num_classes)
    if world.leader:
        log.write({"kind": "test", "step": step, "test": test})
        save_confusion(cm, dataset.class_names, run_dir / "confusion.json", run_dir / "confusion.png")
    return {"run_dir": str(run_dir) if run_dir else None, "step": step, "val": val, "test": test,
            "primary": READOUT, "world_size": world.size}


def _epoch_record(meter: _Epoch, world: World, epoch: int, step: int, lr: float, comm: int,
                  memory: MemoryMeter) -> dict:
    train_s = time.perf_counter() - meter.t0
    sums = world.all_reduce(meter.sums.detach().clone())
    seen = meter.local * world.size
    loss = float(sums[0]) / seen
    if not math.isfinite(loss):
        raise FFPipeError(f"the BP loss became {loss} in epoch {epoch} (step {step}); lower optim.lr")
    return {"epoch": epoch, "step": step, "lr": lr, "train_s": train_s,
            "samples_per_s": seen / train_s if train_s > 0 else 0.0, "train_loss": loss,
            "train_acc": float(sums[1]) / seen, "world_size": world.size, **world.max_over_ranks(memory.read()),
            "allreduce_bytes_per_step": comm}
