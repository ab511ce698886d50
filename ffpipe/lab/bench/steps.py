"""One training step, timed alone: the FF-sequential step against its BP twin's, on the same batches.

The throughput benchmark reads whole epochs of real runs; this times the steps themselves, for the question
"what does an FF step cost against a BP step" (`benchmarks/step_ratio.py`, `benchmarks/gpu_check.py`).
Both methods train on the same batches, drawn before the clock starts (FF: its packets; BP: the batches its
own runs draw, `epoch_batches`), so data loading is outside the clock; the device is synchronized before and
after the timed steps.

    python -m ffpipe.lab.bench.steps ff|bp CONFIG.yaml WARMUP STEPS [PROFILE.txt]   # prints one JSON object
runs one measurement in a fresh process (what `step_ratio` does, so that FF and BP never share an allocator
or caches); with PROFILE.txt the timed steps run a second time under the torch profiler, whose operator
table (self CPU time) is written there: where the time goes, kernel by kernel.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ffpipe.baselines.ddp import BPRunner
from ffpipe.baselines.model import train_step
from ffpipe.config import Config, load_config
from ffpipe.data import epoch_batches
from ffpipe.device import choose_device
from ffpipe.pipeline.nccl_order import synchronize_device
from ffpipe.pipeline.topology import Topology
from ffpipe.run.sequential import SequentialRunner


def _timed(run, packets: list, warmup: int, device: torch.device, batch: int, profile: str | None = None) -> dict:
    """Run `warmup` packets, then time the rest; samples/s, ms per step and the peak device memory. With
    `profile`, the timed packets run once more under the torch profiler, its table written there."""
    run(packets[:warmup])
    synchronize_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run(packets[warmup:])
    synchronize_device(device)
    seconds, steps = time.perf_counter() - t0, len(packets) - warmup
    if profile:
        with torch.profiler.profile() as prof:
            run(packets[warmup:])
        Path(profile).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                                           max_name_column_width=48) + "\n")
    return {"samples_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def ff_step(cfg: Config, warmup: int, steps: int, profile: str | None = None) -> dict:
    """Every stage of the sequential trainer, one after the other (`SequentialRunner.train_step`)."""
    runner = SequentialRunner(cfg)
    runner.start(Path("."), resume=False)  # nothing is read or written there without resume
    runner.set_epoch(1)
    source = runner.batches(1, 0)
    packets = [next(source) for _ in range(warmup + steps)]

    def run(batch: list) -> None:
        for packet in batch:
            runner.train_step(packet.step, packet)

    return _timed(run, packets, warmup, runner.model.device, cfg.data.batch_size, profile)


def bp_step(cfg: Config, warmup: int, steps: int, profile: str | None = None) -> dict:
    """The BP twin as `ffpipe train-bp` builds it (`BPRunner`, one process), on the batches its runs draw."""
    runner = BPRunner(cfg, Topology(1, 1, device=choose_device(cfg.train.device)[0]))
    batches = epoch_batches(runner.dataset.train, cfg.data.batch_size, seed=cfg.train.seed, epoch=1,
                            device=runner.device, augment=cfg.data.augment)
    drawn = [(step, *next(batches)) for step in range(1, warmup + steps + 1)]

    def run(batch: list) -> None:
        for step, x, y in batch:
            runner.model.set_step(step)
            train_step(runner.forward, runner.optimizer, x, y, runner.autocast)

    return _timed(run, drawn, warmup, runner.device, cfg.data.batch_size, profile)


def main(argv: list[str]) -> int:
    method, path, warmup, steps, *profile = argv
    torch.set_num_threads(1)
    measure = {"ff": ff_step, "bp": bp_step}[method]
    print(json.dumps(measure(load_config(path), int(warmup), int(steps), *profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
