"""Starting a pipelined run: one process per stage, under torchrun or started for you through it.

- Under `torchrun --nproc-per-node P launch/train.py --stages P` (or `-m ffpipe.cli train`), each process
  joins the process group (gloo on CPU, NCCL when every local rank has its own GPU) and runs its stage.
- `ffpipe train --stages P` outside torchrun starts those P processes itself through
  `torch.distributed.run` in standalone mode (rendezvous on 127.0.0.1), so there is no hand-rolled process
  group; the parent turns a failure into one line naming the failed stage.
- A worker that fails publishes "stage k: error" through the control plane; the others stop at their next
  wait instead of hanging, and every process exits non-zero.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ffpipe.checkpoint import latest_checkpoint, load_checkpoint
from ffpipe.config import Config, dump_config
from ffpipe.data import load_for_config
from ffpipe.errors import FFPipeError
from ffpipe.network import fingerprint, measure_block_seconds, specs_for, stage_bounds
from ffpipe.optim import lr_at
from ffpipe.packet import negative_streams
from ffpipe.partition import partition_table
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.coordinator import Coordinator, LiveTable
from ffpipe.pipeline.wire import PeerError, Receiver, Sender, configure_process
from ffpipe.pipeline.worker import Links, StageWorker
from ffpipe.source import PacketSource
from ffpipe.stage import Stage

ERROR_FILE = "error.txt"


def in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _device_and_backend(cfg: Config) -> tuple[torch.device, str]:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    want = cfg.train.device
    if want in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    if want == "cuda":
        raise FFPipeError(f"train.device cuda needs {local_world} GPUs on this node, found "
                          f"{torch.cuda.device_count()}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return torch.device("cpu"), "gloo"


def _run_dir(cfg: Config, out: str | None) -> Path:
    if out:
        return Path(out)
    name = cfg.run.name or f"pipeline-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    return Path(cfg.run.out_dir) / name


def _links(cfg: Config, index: int, replica: int, heads: list[bool], device, control: Control) -> Links:
    """Replica r of stage s is rank r·P + s and talks only to replica r of stages s ± 1."""
    common = {"depth": cfg.pipeline.queue_depth, "device": device, "abort_check": control.error}
    joint = cfg.head.mode == "joint"
    stages = cfg.pipeline.stages
    last, base = stages - 1, replica * stages
    return Links(
        prev=Receiver(base + index - 1, **common) if index > 0 else None,
        next=Sender(base + index + 1, **common) if index < last else None,
        errors_in=Receiver(base + last, **common) if joint and index < last and heads[index] else None,
        errors_out={k: Sender(base + k, **common) for k in range(last) if heads[k]}
        if joint and index == last else {},
    )


def _grad_sync(group, replicas: int):
    """Average gradients over a stage's replicas before stepping: one all-reduce per optimizer step, on the
    stage's own process group (the DDP convention), never touching another stage."""

    def sync(grads: list[torch.Tensor]) -> None:
        if grads:
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=group)
            flat /= replicas
            for grad, value in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(value)

    return sync


def _fault_check(index: int):
    """FFPIPE_FAULT=STAGE:STEP crashes that stage at that step, once (first attempt only): for restart tests."""
    spec = os.environ.get("FFPIPE_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    stage, step = (int(v) for v in spec.split(":"))
    return step if stage == index else None


def run_worker(cfg: Config, out: str | None, resume: bool) -> int:
    """The body of one stage process under torchrun."""
    device, backend = _device_and_backend(cfg)
    configure_process()
    dist.init_process_group(backend, timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    stages, replicas = cfg.pipeline.stages, cfg.pipeline.replicas
    if stages * replicas != world:
        raise FFPipeError(f"{world} processes for {stages} stages × {replicas} replicas: start stages × replicas")
    index, replica = rank % stages, rank // stages
    groups = [dist.new_group([r * stages + s for r in range(replicas)]) for s in range(stages)] if replicas > 1 else []
    control = Control(dist.distributed_c10d._get_default_store(), index)
    quiet = os.environ.get("FFPIPE_LAUNCHER") == "1"
    run_dir = _run_dir(cfg, out)
    try:
        resume = resume or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        worker, coordinator, start = _build(cfg, index, replica, run_dir, resume, control, device)
        if replicas > 1:
            worker.stage.grad_sync = _grad_sync(groups[index], replicas)
        if rank == 0:
            with LiveTable(control, stages, cfg.train.progress, coordinator.view.console):
                worker.drive(start, _last_step(cfg, worker.source), coordinator)
            test = coordinator.summary["test"]
            shown = {k: round(v, 4) for k, v in test.items() if isinstance(v, float)}
            print(f"run: {run_dir}  steps: {coordinator.summary['step']}  test accuracy: {shown}")
        elif index == 0:
            worker.drive(start, _last_step(cfg, worker.source), None)
        else:
            worker.follow()
        worker.links.close()
        # Every channel has ended; the replica groups' last all-reduce may still be finishing on a peer, so
        # all ranks meet once before any of them tears the process group down (see baselines.world).
        dist.barrier()
        return 0
    except BaseException as exc:
        caused_elsewhere = isinstance(exc, PeerError) and control.error()
        line = str(exc) if isinstance(exc, FFPipeError) else f"{type(exc).__name__}: {exc}"
        if not caused_elsewhere:
            control.raise_error(f"stage {rank}: {line}")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / ERROR_FILE).write_text(f"stage {rank}: {line}\n")
            if not quiet:
                print(f"ffpipe: error: stage {rank}: {line}", file=sys.stderr)
        # Exit at once: the wire's threads may still be blocked in gloo waits on dead peers, and tearing the
        # process group down under them ends in std::terminate (SIGABRT) instead of a clean exit code.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if isinstance(exc, FFPipeError) else 1)
    finally:
        dist.destroy_process_group()


def _last_step(cfg: Config, source: PacketSource) -> int:
    total = cfg.train.epochs * source.steps_per_epoch
    return min(total, cfg.train.max_steps or total)


def _build(cfg: Config, index: int, replica: int, run_dir: Path, resume: bool, control: Control, device):
    dataset = load_for_config(cfg.data)
    specs = specs_for(cfg, dataset.image_shape)
    seconds = None
    if cfg.pipeline.partition == "measured":  # rank 0 measures; every stage must use the same partition
        if index == 0 and replica == 0:
            control.put("partition/seconds", measure_block_seconds(cfg, dataset, specs, device))
        seconds = control.get("partition/seconds")
    bounds = stage_bounds(cfg, specs, seconds)
    stage = Stage(cfg, specs, *bounds[index], dataset.num_classes, device)
    heads = [bool(Stage.head_indices(cfg, first, last, len(specs))) for first, last in bounds]
    fp = fingerprint(cfg, dataset.image_shape, dataset.num_classes)
    start = 0
    previous = latest_checkpoint(run_dir) if resume else None
    if previous is not None:
        meta, blocks = load_checkpoint(previous, fp)
        stage.load_state_dict(blocks)
        start = meta["step"]
    source = PacketSource(cfg, dataset, device) if index == 0 else None
    links = _links(cfg, index, replica, heads, device, control)
    worker = StageWorker(cfg, stage, index, replica, control, links, source, run_dir, dataset.class_names)
    worker.fault_step = _fault_check(index)
    coordinator = None
    if index == 0 and replica == 0:
        print(partition_table(specs, bounds, negative_streams(cfg), seconds), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        o = cfg.optim
        coordinator = Coordinator(cfg, run_dir, control, cfg.pipeline.stages, fp, len(specs),
                                  lambda e: lr_at(o.schedule, o.lr, e, cfg.train.epochs, milestones=o.milestones,
                                                  gamma=o.gamma))
    return worker, coordinator, start


def spawn(argv: list[str], cfg: Config, out: str) -> int:
    """Start stages × replicas local processes through torchrun (standalone) running `ffpipe train`."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    Path(out).mkdir(parents=True, exist_ok=True)
    error_file = Path(out) / ERROR_FILE
    error_file.unlink(missing_ok=True)
    os.environ["FFPIPE_LAUNCHER"] = "1"
    procs = cfg.pipeline.stages * cfg.pipeline.replicas
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    args = parse_args(["--standalone", f"--nproc-per-node={procs}", "--module", "ffpipe.cli",
                       "train", *argv, "--out", out])
    try:
        run(args)
    except ChildFailedError as exc:
        first = error_file.read_text().strip() if error_file.is_file() else ""
        if not first:
            failures = ", ".join(f"stage {r} exit code {f.exitcode}" for r, f in sorted(exc.failures.items()))
            first = f"a stage process died ({failures})"
        raise FFPipeError(first) from None
    except SignalException as exc:
        raise KeyboardInterrupt(str(exc)) from None
    return 0


def with_shape(cfg: Config, stages: int, replicas: int) -> Config:
    return dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, stages=stages, replicas=replicas))
