"""Predict a run measured on this machine from a *separate* 1-process profile of the same model.

This is the simulator's honest check: the per-block times come from a sequential (1-stage) run, not from
the pipelined run being predicted, so the prediction covers the partition, the queues, the wire and the
replicas' batch split. Two things of this machine are modelled on top of `simulate_pipeline` (our choices):
- the loopback wire and the replicas' gloo all-reduce: the `cpu-loopback` and `cpu-allreduce` link presets
  (`ffpipe.lab.sim.links`), both fitted by `benchmarks/wire.py` on this machine;
- shared cores: when a run has more processes than the machine has cores, they time-share the cores, so it
  cannot beat `cores` x the 1-process rate (a work-conserving processor-sharing cap; `limit` says "cores").
Every number returned is a PREDICTION; `measured` comparisons are made by the caller.
"""

from __future__ import annotations

import math

from ffpipe.lab.sim.links import Link, link_preset
from ffpipe.lab.sim.predict import simulate_layout
from ffpipe.lab.sim.times import MeasuredTimes


def one_process_rate(profile: MeasuredTimes) -> float:
    """Samples/s of the profile itself: its global batch over the sum of its per-block step times."""
    step = sum(b.forward_s + b.update_s for b in profile.blocks)
    return profile.global_batch / step if step > 0 else math.inf


def predict_measured(profile: MeasuredTimes, counts: list[int], replicas: int = 1, *, cores: int,
                     link: Link | None = None, queue_depth: int = 2) -> dict:
    """Predicted samples/s of `counts` blocks per stage x `replicas` on a machine with `cores` cores; the
    replicas all-reduce over `link` when one is given, else over this machine's `cpu-allreduce`."""
    allreduce_link = link or link_preset("cpu-allreduce")
    link = link or link_preset("cpu-loopback")
    row = simulate_layout(profile, list(counts), replicas, link, queue_depth=queue_depth,
                          allreduce_link=allreduce_link)
    processes = len(counts) * replicas
    cap = cores * one_process_rate(profile) if processes > cores else math.inf
    capped = cap < row["samples_per_s"]
    return {"prediction": True, "samples_per_s": min(row["samples_per_s"], cap),
            "pipeline_samples_per_s": row["samples_per_s"], "cores_cap_samples_per_s": None if cap == math.inf
            else cap, "limit": "cores" if capped else row["limit"], "bound_samples_per_s": row["bound_samples_per_s"],
            "idle_pct": [s["idle_pct"] for s in row["per_stage"]], "processes": processes, "cores": cores,
            "link": link.name, "partition": list(counts), "replicas": replicas}


def relative_error(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured."""
    return abs(predicted - measured) / measured
