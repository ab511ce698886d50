"""`RUN/metrics.jsonl`: the one schema of a run's records, its writer and its reader.

One JSON object per line, appended and fsynced as soon as an epoch ends, so a crash loses at most the epoch
in flight and the file is readable while the run goes on (`tail -f`, `jq`). Every trainer writes it: the
sequential FF runner, the pipelined one (rank 0, from every stage's report) and the BP baseline; `ffpipe
report` and the lab tools read it. Records of schema 1 (before the field existed) read as schema 1.

    {"schema": 2, "kind": "epoch", "epoch": 3, "step": 1500, "lr": 0.001, "train_s": 10.1, "wall_s": 12.3,
     "samples_per_s": 4950.0, "peak_memory_bytes": ..., "train_memory_bytes": ..., "peak_tensor_bytes": ...,
     "cpu_s": 61.2,
     "blocks": [{"index": 0, "loss": 0.61, "g_pos": 1.2, "g_neg": 0.8, "acc_pair": 0.81,
                 "compute_s": 3.2, "samples_per_s": 15000.0}, ...],               (FF runs)
     "head_train_acc": 0.9,                                                        (FF runs with a head)
     "stages": [...], "bottleneck": {"bound_samples_per_s", "fraction", "slowest_stage"},   (pipelines)
     "train_loss": ..., "train_acc": ..., "world_size": ..., "micro_batches": ...,
     "allreduce_bytes_per_step": ...,                                                 (BP runs)
     "val": {"linear": 0.85, "goodness": 0.83, "goodness_blocks": [...], "goodness_ranges": [[...]],
             "exit": [0.7, 0.85], "infer_ms_per_image": {...}, "n": 1000}}    (epochs with evaluation)
    {"schema": 2, "kind": "test", "step": 1500, "test": {... as val, plus "<score>_selected" and
     "<score>_selected_range" for the block range validation chose}}
    {"schema": 2, "kind": "error", "epoch": 3, "step": 1412, "error": "non-finite loss in block 2 ..."}

Per block the statistics are the loss family's (`ffpipe.ff.objectives`): `g_pos`/`g_neg` the mean goodness of
positive/negative samples, `acc_pos`/`acc_neg` the fraction on the right side of the threshold (threshold
families only), `acc_pair` the fraction of (image, negative) pairs whose positive goodness is higher;
group_ce blocks report `g_true`, `g_other` and their class accuracy `acc`. `compute_s` is the block's share
of the stage's compute time over the epoch.

`cpu_s` is what a run has cost so far, for accuracy-per-CPU-second comparisons: the CPU seconds (user + system,
every thread) of the training processes since each built its trainer (imports not counted), at the end of the
epoch's evaluation, summed over
the stages (a pipeline; with replicas, replica 0's stages times the replica count) or the ranks (DDP). A
resumed run counts from its restart. Absent from records written before it existed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ffpipe.errors import FFPipeError

SCHEMA = 2
KINDS = ("epoch", "test", "error")
NOT_ACCURACIES = ("n", "infer_ms_per_image")
"""Keys of a `val`/`test` object that are not readout accuracies (sample count, per-readout timing)."""
EPOCH_FIELDS = ("epoch", "step", "lr", "train_s", "wall_s", "samples_per_s", "peak_memory_bytes",
                "train_memory_bytes", "peak_tensor_bytes", "cpu_s")
"""What every epoch record holds, whoever trained (`peak_tensor_bytes` and `cpu_s` are absent from records
written before they existed; `ffpipe.run.measure.MemoryMeter` says what each memory field counts)."""


def epoch_record(**fields: Any) -> dict:
    """An epoch record: the common `EPOCH_FIELDS`, in that order, then the trainer's own fields."""
    missing = [k for k in EPOCH_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"an epoch record needs {missing}")
    head = {"schema": SCHEMA, "kind": "epoch", **{k: fields.pop(k) for k in EPOCH_FIELDS}}
    return {**head, **fields}


def test_record(step: int, test: dict) -> dict:
    return {"schema": SCHEMA, "kind": "test", "step": step, "test": test}


def error_record(epoch: int, step: int, error: str) -> dict:
    return {"schema": SCHEMA, "kind": "error", "epoch": epoch, "step": step, "error": error}


@dataclass
class BlockMeter:
    """One epoch's per-block sums of a stage's `BlockStep`s, read with one host sync at the epoch's end."""

    stat_names: tuple[str, ...]
    stats: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)
    steps: int = 0
    samples: int = 0

    def add(self, blocks, samples: int) -> None:
        """`blocks`: the `BlockStep`s of one step (`ffpipe.ff.stage`)."""
        stats = torch.stack([b.stats for b in blocks]).float()
        self.stats = stats if self.stats is None else self.stats + stats
        self.indices = [b.index for b in blocks]
        self.steps += 1
        self.samples += samples

    def rows(self, seconds: Mapping[Hashable, float]) -> list[dict]:
        """The record's `blocks`: per block the epoch's mean statistics, compute time (`seconds`: the epoch's
        `DeviceTimer` totals, keyed by block index) and samples/s."""
        if not self.steps:
            return []
        means = (self.stats / self.steps).tolist()
        rows = []
        for index, values in zip(self.indices, means):
            secs = seconds.get(index, 0.0)
            rows.append({"index": index, **dict(zip(self.stat_names, values)), "compute_s": secs,
                         "samples_per_s": self.samples / secs if secs > 0 else 0.0})
        return rows


class MetricsLog:
    """Append-only JSONL log; each `write` is flushed and fsynced before it returns.

    A run that crashed mid-write may have left a torn last line. Opening the log cuts that fragment off, so a
    resumed run appends clean lines instead of gluing its first record onto half of an old one.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a run, in the order written, with re-run epochs collapsed.

    A run resumed from the checkpoint of epoch k trains epochs k+1.. again and logs them again; the later
    record of an epoch (same `kind` and `epoch`) replaces the earlier one, from the abandoned attempt. A
    record of a newer schema than this code knows is refused with one line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FFPipeError(f"cannot read metrics {path}: {e.strerror or e}") from None
    latest: dict[tuple[str, Any], tuple[int, dict]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FFPipeError(f"{path}:{n}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict):
            raise FFPipeError(f"{path}:{n}: a record must be a JSON object")
        if record.get("schema", 1) > SCHEMA:
            raise FFPipeError(f"{path}:{n}: record schema {record['schema']} is newer than this ffpipe reads "
                              f"({SCHEMA}); update ffpipe")
        latest[(record.get("kind", "epoch"), record.get("epoch"))] = (n, record)
    return [record for _, record in sorted(latest.values(), key=lambda nr: nr[0])]
