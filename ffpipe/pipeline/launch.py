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
from pathlib import Path

import torch.distributed as dist

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.ff.packet import WIRE_DTYPES
from ffpipe.ff.partition import partition_table
from ffpipe.pipeline import topology as topology_mod
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.head_channel import HeadChannel
from ffpipe.pipeline.nccl_order import emulating_nccl
from ffpipe.pipeline.schedule import PipelineRunner, follow, start_stage
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import PeerError, Receiver, Sender, configure_process
from ffpipe.pipeline.worker import Links, StageWorker
from ffpipe.run import loop
from ffpipe.run.console import final_line
from ffpipe.run.loop import run_dir_for
from ffpipe.run.model import Model

ERROR_FILE = "error.txt"


def in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def run_worker(cfg: Config, out: str | None, resume: bool) -> int:
    """The body of one stage process under torchrun."""
    topology = topology_mod.join(cfg.train.device, cfg.pipeline.stages, cfg.pipeline.replicas)
    configure_process()
    group = topology_mod.replica_group(topology)  # collective: every rank creates every replica group
    backward = topology_mod.backward_group(topology, cfg.head.mode == "joint")  # collective too
    control = Control(dist.distributed_c10d._get_default_store(), topology.stage)
    quiet = os.environ.get("FFPIPE_LAUNCHER") == "1"
    # every rank must use one run dir; the leader names it (a name from the clock could differ per rank)
    run_dir = Path(control.agree("run_dir", lambda: str(run_dir_for(cfg, out)), topology.leader))
    try:
        resume = resume or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        worker = _build(cfg, topology, control, run_dir, topology_mod.averager(group, topology.replicas), backward)
        if topology.drives:
            summary = loop.train(PipelineRunner(worker, topology, control), run_dir, resume)
            if topology.leader:
                print(final_line(run_dir, summary["step"], summary["test"]))
        else:
            start_stage(worker, run_dir, resume)
            follow(worker)
        worker.links.close()
        topology_mod.leave(topology.device)
        return 0
    except BaseException as exc:
        caused_elsewhere = isinstance(exc, PeerError) and control.error()
        line = str(exc) if isinstance(exc, FFPipeError) else f"{type(exc).__name__}: {exc}"
        if not caused_elsewhere:
            control.raise_error(f"stage {topology.rank}: {line}")
            publish_error(run_dir / ERROR_FILE, f"stage {topology.rank}: {line}")
            if not quiet:
                print(f"ffpipe: error: stage {topology.rank}: {line}", file=sys.stderr)
        # A failed run exits at once: the wire's threads may still be blocked in gloo waits on dead peers, and
        # tearing the process group down under them ends in std::terminate (SIGABRT). A completed run never
        # gets here: its channels all ended (Links.close) and its ranks met before the group went.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if isinstance(exc, FFPipeError) else 1)


def publish_error(path: Path, line: str) -> None:
    """Write the run's one error line; the first stage to fail wins and later writers change nothing.

    Several surviving stages may fail at once (each sees its dead peer). The line is written whole to a private
    file and hard-linked into place: `link` is atomic and fails if the name exists, so the file is only ever one
    writer's complete line, never two writers' bytes interleaved."""
    path.parent.mkdir(parents=True, exist_ok=True)
    own = path.with_name(f"{path.name}.{os.getpid()}")
    own.write_bytes(f"{line}\n".encode("utf-8", errors="replace"))
    try:
        os.link(own, path)
    except FileExistsError:
        pass
    finally:
        own.unlink(missing_ok=True)


def read_error(path: Path) -> str:
    """The published error line, or "" if none; undecodable bytes become U+FFFD rather than a traceback."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text.strip().splitlines()[0] if text.strip() else ""


def _build(cfg: Config, topology: Topology, control: Control, run_dir: Path, average_grads,
           backward_group) -> StageWorker:
    measured = cfg.pipeline.partition == "measured"  # rank 0 measures; every stage must use its partition
    model = Model.build(cfg, topology.device) if topology.leader else None
    seconds = control.agree("partition/seconds", lambda: model.seconds, topology.leader) if measured else None
    if model is None:
        model = Model.build(cfg, topology.device, seconds)
    owns_head = model.owns_head()
    wire = {"depth": cfg.pipeline.queue_depth, "device": topology.device, "abort_check": control.error,
            "timeout_s": cfg.pipeline.timeout_s}
    links = Links(prev=Receiver(topology.previous, **wire) if topology.previous is not None else None,
                  next=Sender(topology.next, **wire) if topology.next is not None else None,
                  head=HeadChannel(cfg, topology, owns_head, **wire, group=backward_group))
    if topology.leader:
        net = model.network
        element_bytes = WIRE_DTYPES[cfg.pipeline.wire_dtype].itemsize
        print(partition_table(net.specs, model.bounds, net.negatives, model.seconds, net.shortcuts, element_bytes),
              flush=True)
        if emulating_nccl():
            print("NCCL pair emulation on (FFPIPE_EMULATE_NCCL=1): one in-order queue per rank pair and process "
                  "group", flush=True)
    return StageWorker(cfg, model, topology, control, links, run_dir, average_grads)


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
        first = read_error(error_file)
        if not first:
            failures = ", ".join(f"stage {r} exit code {f.exitcode}" for r, f in sorted(exc.failures.items()))
            first = f"a stage process died ({failures})"
        raise FFPipeError(first) from None
    except SignalException as exc:
        raise KeyboardInterrupt(str(exc)) from None
    return 0


def with_shape(cfg: Config, stages: int, replicas: int) -> Config:
    return dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, stages=stages, replicas=replicas))
