"""A cost model of data-parallel backprop (DDP-BP) on N devices: the baseline an FF pipeline must beat.

The global batch B is split over N devices (strong scaling, as ffpipe's replicas split B), so a step costs

    compute(N)   = bp_step_s / (N * efficiency)      (N > 1; compute(1) = bp_step_s, the measured step)
    allreduce(N) = 2(N-1)/N * grad_bytes / bandwidth + 2(N-1) * latency   (ring, `ffpipe.lab.sim.links`)
    step(N)      = compute(N) + allreduce(N) - hidden,   hidden = min(overlap * allreduce(N), backward_s)

`efficiency` (our parameter, default 1 = linear) is how much of the linear speedup a device keeps at B/N
samples: GPUs at small per-device batches run below peak, so measured DDP speedups sit below the model at
efficiency 1. `overlap` is the fraction of the all-reduce that PyTorch DDP's gradient buckets hide behind
the backward pass (0 = none, the conservative default), bounded by the backward time itself, taken as 2/3 of
the step: the usual 1 : 2 forward : backward FLOP ratio of backprop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim.links import Link, ring_allreduce_s

BACKWARD_FRACTION = 2 / 3


@dataclass
class DDPResult:
    devices: int
    step_s: float
    compute_s: float
    allreduce_s: float
    exposed_allreduce_s: float
    throughput: float  # samples/s
    speedup: float  # over the measured 1-device step
    efficiency: float  # speedup / devices

    def to_dict(self) -> dict:
        return asdict(self)


def simulate_ddp(bp_step_s: float, batch: int, grad_bytes: float, devices: int, link: Link, *,
                 efficiency: float = 1.0, overlap: float = 0.0) -> DDPResult:
    """DDP-BP on `devices` devices, from the measured 1-device step `bp_step_s` at global batch `batch`."""
    if not bp_step_s > 0 or batch < 1 or grad_bytes < 0 or devices < 1:
        raise FFPipeError(f"DDP needs a positive step time, batch >= 1, gradient bytes >= 0 and devices >= 1; got "
                          f"{bp_step_s} s, batch {batch}, {grad_bytes} bytes, {devices} devices")
    if not 0 < efficiency <= 1 or not 0 <= overlap <= 1:
        raise FFPipeError(f"DDP efficiency must be in (0, 1] and overlap in [0, 1]; got {efficiency}, {overlap}")
    compute = bp_step_s if devices == 1 else bp_step_s / (devices * efficiency)
    allreduce = ring_allreduce_s(grad_bytes, devices, link)
    exposed = allreduce - min(overlap * allreduce, BACKWARD_FRACTION * compute)
    step = compute + exposed
    speedup = bp_step_s / step
    return DDPResult(devices, step, compute, allreduce, exposed, batch / step, speedup, speedup / devices)
