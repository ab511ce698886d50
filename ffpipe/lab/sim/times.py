"""Measured per-block times: the simulator's input, from a times file or from a run's metrics.jsonl.

Times file (JSON), one object; times are seconds per training step at `batch` samples per step:

    {"batch": 100,                          required: samples per step the times were measured at
     "blocks": [                            required, one entry per block, in order
        {"forward_s": 0.004, "update_s": 0.005,     or "compute_s": 0.009 (split by forward_fraction)
         "units": 2000,                             or "out_bytes": 2401040 (the message after this block)
         "params": 1570000},                        or "grad_bytes": 6280000 (float32 gradients)
        ...],
     "streams": 3,                          rows per sample in a message: 3 (pos, neg, neutral) or 1 (group_ce)
     "forward_fraction": 0.5,               share of compute_s that is forward (default: see FORWARD_FRACTION)
     "partition": [1, 3],                   blocks per stage of the measured run (counts, or lists of indices)
     "replicas": 1,                         replicas of that run; its global batch is batch x replicas
     "bp_step_s": 0.006,                    a measured 1-device backprop step at the global batch (DDP)
     "bp_grad_bytes": 6300000,              that model's gradient bytes (default: the sum of grad_bytes)
     "head_error_bytes": 5024,              the joint head's error message (omit for head.mode: local)
     "measured_samples_per_s": 4100.0,      what the measured run achieved, to check the simulator against
     "note": "free text"}

A run directory (or its metrics.jsonl) gives the same from its last epoch record: per block compute_s / steps,
with bytes and parameters from the run's config.yaml (`ffpipe.nn.block_specs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim.pipeline import StageSpec

HEADER_BYTES = 1088  # ffpipe.pipeline.wire.HEADER_BYTES: 136 int64 (tests/test_sim.py checks they agree)
FORWARD_FRACTION = 0.5
"""Forward share of a block's step when only the sum is known (metrics.jsonl times forward + update together).
From `ffpipe.ff.partition`'s cost model: the forward runs 3F over the stacked streams and the weight gradient 3F."""

_KEYS = {"batch", "blocks", "streams", "forward_fraction", "partition", "replicas", "bp_step_s", "bp_grad_bytes",
         "head_error_bytes", "measured_samples_per_s", "note", "format"}
_BLOCK_KEYS = {"forward_s", "update_s", "compute_s", "units", "out_bytes", "params", "grad_bytes", "index"}


def activation_bytes(units: int, batch: int, streams: int = 3) -> int:
    """One packet on the wire: float32 activations (streams x batch x units), int64 labels and the header (which
    carries the packet's metadata as tags). The running logits/scores (batch x classes, once heads are passed)
    are left out: they are small."""
    return 4 * streams * batch * units + 8 * batch + HEADER_BYTES


@dataclass(frozen=True)
class BlockTime:
    forward_s: float
    update_s: float
    out_bytes: float
    grad_bytes: float


@dataclass(frozen=True)
class MeasuredTimes:
    batch: int  # samples per step of one replica of the measured run
    blocks: tuple[BlockTime, ...]
    source: str
    partition: tuple[int, ...] | None = None
    replicas: int = 1
    bp_step_s: float | None = None
    bp_grad_bytes: float | None = None
    head_error_bytes: float | None = None
    measured_samples_per_s: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def global_batch(self) -> int:
        return self.batch * self.replicas

    def stage_specs(self, counts: list[int] | tuple[int, ...], replicas: int = 1,
                    efficiency: float = 1.0) -> tuple[list[StageSpec], int, float | None]:
        """(stages, per-replica batch, head error bytes) for `counts` blocks per stage and `replicas` replicas
        sharing the global batch. Our scaling model: a block's time is linear in its batch, divided by
        `efficiency` when its batch is smaller than measured; message payloads are linear in the batch."""
        if sum(counts) != len(self.blocks) or min(counts) < 1:
            raise FFPipeError(f"partition {list(counts)} must give every stage >= 1 block, {len(self.blocks)} in all")
        if replicas < 1 or self.global_batch % replicas:
            raise FFPipeError(f"a global batch of {self.global_batch} does not split into {replicas} replicas")
        batch = self.global_batch // replicas
        scale = batch / self.batch
        slow = scale / efficiency if scale < 1 else scale
        stages, first = [], 0
        for count in counts:
            run = self.blocks[first:first + count]
            out = run[-1].out_bytes
            stages.append(StageSpec(sum(b.forward_s for b in run) * slow, sum(b.update_s for b in run) * slow,
                                    HEADER_BYTES + (out - HEADER_BYTES) * scale if out else 0.0,
                                    tuple(b.grad_bytes for b in run), tuple(range(first, first + count))))
            first += count
        error = self.head_error_bytes
        return stages, batch, None if error is None else HEADER_BYTES + (error - HEADER_BYTES) * scale


def _number(value, what: str, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= least:
        raise FFPipeError(f"{what} must be a number >= {least:g}, got {value!r}")
    return float(value)


def _counts(partition, n: int) -> tuple[int, ...]:
    """Block counts from counts ([1, 3]) or from contiguous index lists ([[0], [1, 2, 3]])."""
    if isinstance(partition, list) and partition and all(isinstance(p, list) for p in partition):
        if [i for p in partition for i in p] != list(range(n)):
            raise FFPipeError(f"partition {partition} must list blocks 0..{n - 1} in order, each once")
        return tuple(len(p) for p in partition)
    if (not isinstance(partition, list) or not partition or any(not isinstance(c, int) or c < 1 for c in partition)
            or sum(partition) != n):
        raise FFPipeError(f"partition {partition!r} must be block counts >= 1 summing to {n} (or index lists)")
    return tuple(partition)


def _block(entry, i: int, batch: int, streams: int, forward_fraction: float) -> BlockTime:
    if not isinstance(entry, dict) or set(entry) - _BLOCK_KEYS:
        raise FFPipeError(f"block {i} must be an object with keys among {sorted(_BLOCK_KEYS)}, got {entry!r}")
    if "forward_s" in entry and "update_s" in entry:
        forward, update = _number(entry["forward_s"], f"block {i} forward_s"), _number(entry["update_s"],
                                                                                       f"block {i} update_s")
    elif "compute_s" in entry:
        total = _number(entry["compute_s"], f"block {i} compute_s")
        forward, update = total * forward_fraction, total * (1 - forward_fraction)
    else:
        raise FFPipeError(f"block {i} needs forward_s and update_s, or compute_s")
    if "out_bytes" in entry:
        out = _number(entry["out_bytes"], f"block {i} out_bytes")
    else:
        out = activation_bytes(int(_number(entry.get("units", 0), f"block {i} units")), batch, streams)
    if "grad_bytes" in entry:
        grad = _number(entry["grad_bytes"], f"block {i} grad_bytes")
    else:
        grad = 4 * _number(entry.get("params", 0), f"block {i} params")
    return BlockTime(forward, update, out, grad)


def times_from_dict(data, source: str = "<dict>") -> MeasuredTimes:
    """Validate a times-file object (format in the module docstring); every problem is one FFPipeError."""
    if not isinstance(data, dict):
        raise FFPipeError(f"{source}: a times file holds one JSON object")
    unknown = set(data) - _KEYS
    if unknown:
        raise FFPipeError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if "batch" not in data or not isinstance(data.get("blocks"), list) or not data["blocks"]:
        raise FFPipeError(f"{source}: needs 'batch' and a non-empty 'blocks' list")
    batch = int(_number(data["batch"], "batch", 1))
    streams = int(_number(data.get("streams", 3), "streams", 1))
    fraction = _number(data.get("forward_fraction", FORWARD_FRACTION), "forward_fraction")
    if fraction > 1:
        raise FFPipeError(f"forward_fraction must be in [0, 1], got {fraction}")
    blocks = tuple(_block(e, i, batch, streams, fraction) for i, e in enumerate(data["blocks"]))
    optional = {key: _number(data[key], key) for key in ("bp_step_s", "bp_grad_bytes", "head_error_bytes",
                                                        "measured_samples_per_s") if key in data}
    return MeasuredTimes(batch, blocks, source,
                         _counts(data["partition"], len(blocks)) if "partition" in data else None,
                         int(_number(data.get("replicas", 1), "replicas", 1)), **optional)


def _last_epoch(path: Path, epoch: int | None = None) -> tuple[dict, int]:
    """The last epoch record of a metrics.jsonl (or the record of `epoch`) and its number of training steps."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as exc:
            raise FFPipeError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if isinstance(record, dict) and "epoch" in record and record.get("blocks"):
            records.append(record)
    if epoch is not None:
        records = [r for r in records if r["epoch"] <= epoch]
        if not records or records[-1]["epoch"] != epoch:
            raise FFPipeError(f"{path} has no epoch-{epoch} record with per-block times")
    if not records:
        raise FFPipeError(f"{path} has no epoch record with per-block times")
    last = records[-1]
    # steps of the last epoch: the step counter's increase; without an earlier record, every epoch up to this
    # one was complete, so the counter divides evenly
    steps = last["step"] - records[-2]["step"] if len(records) > 1 else last["step"] // max(last["epoch"], 1)
    if steps < 1:
        raise FFPipeError(f"{path}: cannot tell how many steps the last epoch ran")
    return last, steps


def times_from_run(path: Path, epoch: int | None = None) -> MeasuredTimes:
    """Per-block times of a run's last epoch (or of `epoch`), with message and gradient sizes from its
    config.yaml."""
    from ffpipe.config import load_config
    from ffpipe.data.catalog import get_spec
    from ffpipe.data.loading import shape_for_config
    from ffpipe.ff.blocks import block_specs
    from ffpipe.ff.partition import block_params

    metrics = path / "metrics.jsonl" if path.is_dir() else path
    config = metrics.parent / "config.yaml"
    if not metrics.is_file() or not config.is_file():
        raise FFPipeError(f"{path}: a run needs metrics.jsonl and config.yaml side by side")
    record, steps = _last_epoch(metrics, epoch)
    cfg = load_config(config)
    data = get_spec(cfg.data.name)
    specs = block_specs(cfg.model, shape_for_config(cfg.data))
    if any(not isinstance(b, dict) or not {"index", "compute_s"} <= set(b) for b in record["blocks"]):
        raise FFPipeError(f"{metrics}: every block of the last epoch record needs 'index' and 'compute_s'")
    rows = sorted(record["blocks"], key=lambda b: b["index"])
    if [b["index"] for b in rows] != list(range(len(specs))):
        raise FFPipeError(f"{metrics}: the last epoch has times for blocks {[b['index'] for b in rows]}, but the "
                          f"config builds {len(specs)} blocks")
    stages = record.get("stages")  # only pipelined runs have them; a sequential run is one replica
    replicas = cfg.pipeline.replicas if stages else 1
    batch = cfg.data.batch_size // replicas
    streams = 1 if cfg.loss.family == "group_ce" else 3
    blocks = tuple(BlockTime(r["compute_s"] / steps * FORWARD_FRACTION, r["compute_s"] / steps * (1 - FORWARD_FRACTION),
                             activation_bytes(s.units, batch, streams), 4 * block_params(s))
                   for r, s in zip(rows, specs))
    notes = [f"epoch {record['epoch']}, {steps} steps; forward/update split {FORWARD_FRACTION:g} (not measured)"]
    if replicas > 1:
        notes.append(f"the run had {replicas} replicas: its block times include its own gradient all-reduce")
    return MeasuredTimes(batch, blocks, str(metrics),
                         tuple(len(s["blocks"]) for s in stages) if stages else (len(blocks),), replicas,
                         head_error_bytes=HEADER_BYTES + 4 * batch * data.num_classes if cfg.head.mode == "joint"
                         else None,
                         measured_samples_per_s=record.get("samples_per_s"), notes=tuple(notes))


def load_times(path: str | Path) -> MeasuredTimes:
    """A times file (.json), a run's metrics.jsonl, or a run directory."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".jsonl":
        return times_from_run(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FFPipeError(f"times file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FFPipeError(f"cannot read times file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FFPipeError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return times_from_dict(data, str(path))
