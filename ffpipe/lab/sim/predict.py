"""Predictions for N devices from measured per-block times: FF pipeline layouts against DDP backprop.

Everything here is a PREDICTION of the `ffpipe.lab.sim` cost model, labelled so in every output dict; only the
per-block times (and `bp_step_s` where given) are measurements. For N devices the FF side tries every layout
of P stages x R replicas with P * R <= N (P <= blocks, R dividing the global batch, as ffpipe requires),
splits the blocks by measured time with `ffpipe.ff.partition`'s exact min-max split, simulates it and keeps the
fastest. The DDP side is `ffpipe.lab.sim.ddp` at the same global batch, so both sides train on the same samples
per step. Speedups are over each method's own 1-device step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

from ffpipe.errors import FFPipeError
from ffpipe.ff.partition import min_max_split
from ffpipe.lab.sim.ddp import simulate_ddp
from ffpipe.lab.sim.links import Link
from ffpipe.lab.sim.pipeline import SimResult, simulate_pipeline
from ffpipe.lab.sim.times import MeasuredTimes

LABEL = "PREDICTION of the ffpipe.lab.sim cost model from measured per-block times; not a measurement"
BP_PER_FF = 0.5
"""Backprop step / FF step of the same blocks and batch, used only when no BP step was measured: BP costs F
(forward) + 2F (input and weight gradients) per sample, FF 3F + 3F (3 streams; `ffpipe.ff.partition`)."""

ANCHORS = {
    "source": "/work/shared/papers/anchors_numbers_and_mechanisms.md (DeeperForward Table 5, CIFAR-10 s/epoch, "
              "speedup over 1 GPU, [paper-fig]; PFF Table 1, MNIST, 4 nodes over sequential)",
    "deeperforward_pipeline_speedup": {"2": 1.75, "4": 2.48},
    "deeperforward_bp_ddp_speedup": {"2": 1.59, "4": 2.61},
    "pff_all_layers_speedup": {"4": 3.75},
}


def json_safe(value):
    """`value` with every non-finite float (a free link's bandwidth, an unbounded rate) as None, for strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def balanced_counts(times: MeasuredTimes, stages: int) -> list[int]:
    """Blocks per stage minimizing the slowest stage's measured step time (the same DP `ffpipe.ff.partition` runs
    for `pipeline.partition: measured`)."""
    if not 1 <= stages <= len(times.blocks):
        raise FFPipeError(f"cannot split {len(times.blocks)} blocks into {stages} stages")
    return min_max_split([b.forward_s + b.update_s for b in times.blocks], stages)


def _summary(result: SimResult) -> dict:
    return {"samples_per_s": result.throughput, "step_s": result.step_s, "bound_samples_per_s":
            result.bound_samples_per_s, "fraction": result.fraction, "limit": result.limit,
            "per_stage": [asdict(s) for s in result.stages]}


def simulate_layout(times: MeasuredTimes, counts: list[int], replicas: int, link: Link, *, queue_depth: int = 2,
                    efficiency: float = 1.0, steps: int = 400, allreduce_link: Link | None = None) -> dict:
    """One FF layout (blocks per stage, replicas) of the measured network at its global batch; the replicas
    all-reduce over `allreduce_link` (default: `link`)."""
    stages, batch, error_bytes = times.stage_specs(counts, replicas, efficiency)
    result = simulate_pipeline(stages, batch, link=link, queue_depth=queue_depth, replicas=replicas,
                               head_error_bytes=error_bytes, steps=steps, allreduce_link=allreduce_link)
    return {"stages": len(counts), "replicas": replicas, "partition": list(counts), **_summary(result)}


def ff_layouts(times: MeasuredTimes, devices: int, link: Link, **kwargs) -> list[dict]:
    """For each stage count P, the most replicas R with P x R <= `devices` that ffpipe can run (R divides the
    global batch), fastest first; a layout may leave devices unused ("devices_used")."""
    layouts = []
    for p in range(1, min(devices, len(times.blocks)) + 1):
        r = max(r for r in range(1, devices // p + 1) if times.global_batch % r == 0)
        layouts.append({"devices_used": p * r, **simulate_layout(times, balanced_counts(times, p), r, link, **kwargs)})
    return sorted(layouts, key=lambda row: (-row["samples_per_s"], row["devices_used"]))


def predict(times: MeasuredTimes, devices: list[int] | tuple[int, ...] = (2, 4, 8, 16), link: Link | None = None, *,
            queue_depth: int = 2, efficiency: float = 1.0, overlap: float = 0.0, bp_step_s: float | None = None,
            check_link: Link | None = None, steps: int = 400) -> dict:
    """FF pipeline vs DDP-BP on each device count; `check_link` also re-simulates the measured run's own layout."""
    from ffpipe.lab.sim.links import link_preset

    link = link or link_preset("nvlink")
    if not 0 < efficiency <= 1 or not 0 <= overlap <= 1:
        raise FFPipeError(f"efficiency must be in (0, 1] and overlap in [0, 1]; got {efficiency}, {overlap}")
    kwargs = {"queue_depth": queue_depth, "efficiency": efficiency, "steps": steps}
    ff1 = simulate_layout(times, [len(times.blocks)], 1, link, **kwargs)
    notes = list(times.notes)
    bp_source = "measured"
    if bp_step_s is None:
        bp_step_s = times.bp_step_s
    if bp_step_s is None:
        bp_step_s = BP_PER_FF * times.global_batch / ff1["samples_per_s"]
        bp_source = f"ESTIMATED as {BP_PER_FF:g} x the 1-device FF step (FLOP ratio), not measured"
    grad_bytes = times.bp_grad_bytes if times.bp_grad_bytes is not None else sum(b.grad_bytes for b in times.blocks)
    if not grad_bytes:
        notes.append("gradient bytes unknown (no params/grad_bytes): DDP left out")
    rows = []
    for n in devices:
        best, *others = ff_layouts(times, n, link, **kwargs)
        best.update(speedup=best["samples_per_s"] / ff1["samples_per_s"])
        best.update(efficiency=best["speedup"] / n)
        row = {"devices": n, "ff": best, "ff_other_layouts": others, "ddp": None, "ff_over_ddp": None}
        if grad_bytes:
            ddp = simulate_ddp(bp_step_s, times.global_batch, grad_bytes, n, link, efficiency=efficiency,
                               overlap=overlap).to_dict()
            row.update(ddp=ddp, ff_over_ddp=best["samples_per_s"] / ddp["throughput"])
        rows.append(row)
    out = {"prediction": True, "label": LABEL, "source": times.source, "notes": notes, "link": link.to_dict(),
           "queue_depth": queue_depth, "efficiency": efficiency, "overlap": overlap,
           "global_batch": times.global_batch, "ff_1_device": ff1,
           "bp_1_device": {"step_s": bp_step_s, "samples_per_s": times.global_batch / bp_step_s, "step_source":
                           bp_source, "grad_bytes": grad_bytes},
           "rows": rows, "anchors": ANCHORS, "check": None}
    if check_link is not None and times.partition is not None:
        # a replicated run's block times already hold its all-reduce: do not add it twice
        own = times if times.replicas == 1 else replace(
            times, blocks=tuple(replace(b, grad_bytes=0.0) for b in times.blocks))
        again = simulate_layout(own, list(times.partition), times.replicas, check_link, **kwargs)
        measured = times.measured_samples_per_s
        out["check"] = {"link": check_link.to_dict(), "layout": again, "measured_samples_per_s": measured,
                        "simulated_over_measured": again["samples_per_s"] / measured if measured else None}
    return json_safe(out)
