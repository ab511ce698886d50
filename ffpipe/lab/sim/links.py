"""Links between devices: what one message and one ring all-reduce cost, and named presets with sources.

A message over a link costs `latency + bytes / bandwidth` (the usual alpha-beta model), and a link carries
one message at a time: ffpipe's receiver pump is a single thread that receives a message's header, then its
payload, and only then posts the next receive (`ffpipe.pipeline.wire`), so per-message costs do not overlap.

Each preset carries two bandwidths. *Nominal* is the line rate per direction from the vendor's or standard's
specification; *effective* is what a collective library was publicly measured to reach on that hardware,
and it is the default, because it is what a training step sees. Latencies are effective only: NCCL's own
cost model (NVIDIA/nccl `src/graph/tuning.cc`, `hwLat`, Ring / Simple protocol, the protocol of large
messages) gives 3.4 us per hop on NVLink, 5.7 us on PCIe and 9.6 us over the network; the wire itself is
sub-microsecond (e.g. < 400 ns port to port on an NDR switch), the software stack dominates.
GB below is 10^9 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ffpipe.errors import FFPipeError


@dataclass(frozen=True)
class Link:
    """A point-to-point link as the simulator sees it: bytes per second and seconds per message."""

    name: str
    bandwidth_Bps: float
    latency_s: float

    def __post_init__(self):
        if not self.bandwidth_Bps > 0 or self.latency_s < 0 or math.isnan(self.latency_s):
            raise FFPipeError(f"link {self.name!r} needs a positive bandwidth and a latency >= 0, got "
                              f"{self.bandwidth_Bps} B/s and {self.latency_s} s")

    def transfer_s(self, nbytes: float) -> float:
        """Seconds one message of `nbytes` occupies the link: latency + bytes / bandwidth."""
        return self.latency_s + nbytes / self.bandwidth_Bps

    def to_dict(self) -> dict:
        return {"name": self.name, "bandwidth_GBps": self.bandwidth_Bps / 1e9, "latency_us": self.latency_s * 1e6}


@dataclass(frozen=True)
class LinkPreset:
    name: str
    nominal_Bps: float
    effective_Bps: float
    latency_s: float
    source: str

    def link(self, nominal: bool = False) -> Link:
        kind = "nominal" if nominal else "effective"
        return Link(f"{self.name} ({kind})", self.nominal_Bps if nominal else self.effective_Bps, self.latency_s)


PRESETS: dict[str, LinkPreset] = {p.name: p for p in (
    LinkPreset("pcie4", 31.5e9, 25e9, 5.7e-6,
               "nominal: PCIe 4.0 x16, 16 GT/s x 16 lanes x 128b/130b / 8 = 31.5 GB/s per direction (PCI-SIG "
               "Base Spec 4.0). effective: 25 GB/s, the measured peak of an A100 on a Gen4 x16 slot quoted by "
               "the BaM authors (github.com/ZaidQureshi/bam issue #54). latency: NCCL hwLat PCI Ring/Simple."),
    LinkPreset("nvlink-a100", 300e9, 200e9, 3.4e-6,
               "nominal: A100, 12 third-generation NVLinks, 600 GB/s total = 300 GB/s per direction (NVIDIA "
               "NVLink page). effective: nccl-tests all_reduce bus bandwidth on 8x A100 SXM, ~200 GB/s "
               "(NVIDIA/nccl-tests #149) and 208 GB/s (#178); NCCL's model caps A100 at 235 GB/s "
               "(tuning.cc). latency: NCCL hwLat NVLink Ring/Simple."),
    LinkPreset("nvlink-h100", 450e9, 370e9, 3.4e-6,
               "nominal: H100, 18 fourth-generation NVLinks, 900 GB/s total = 450 GB/s per direction (NVIDIA "
               "H100 specification). effective: 370 GB/s, 'line rate 450 GB/s, with the protocol overhead "
               "(~20%) NCCL can get an effective NVLink bandwidth of 370GB/s' (NCCL maintainer, "
               "NVIDIA/nccl-tests #212). latency: NCCL hwLat NVLink Ring/Simple."),
    LinkPreset("ib-hdr", 25e9, 24e9, 9.6e-6,
               "nominal: InfiniBand HDR, 200 Gb/s per port = 25 GB/s. effective: 24 GB/s per port, from an "
               "inter-node nccl-tests all_reduce peak of 96 GB/s bus bandwidth over 4 HDR NICs per node "
               "(NVIDIA/nccl-tests #119). latency: NCCL hwLat NET Ring/Simple."),
    LinkPreset("ib-ndr", 50e9, 48e9, 9.6e-6,
               "nominal: InfiniBand NDR, 400 Gb/s per port = 50 GB/s (NVIDIA ConnectX-7 user manual). "
               "effective: 48 GB/s is OUR ASSUMPTION (HDR's measured 96% of line rate), not a measurement. "
               "latency: NCCL hwLat NET Ring/Simple."),
    LinkPreset("cpu-loopback", 1.08e9, 1.08e9, 345e-6,
               "MEASURED on this 2-core machine: `python benchmarks/wire.py --no-pipeline --repeats 3` "
               "(benchmarks/results/wire/, summary `wire_link`), ffpipe.pipeline.wire Sender/Receiver over "
               "loopback gloo, one-way ping-pong time per message: the median over <= 64 KiB as the latency, the "
               "median of bytes / (time - latency) over >= 4 MiB as the bandwidth. No line rate (nominal = "
               "effective). The fixed cost is Python's thread hand-offs (raw gloo: about 150 us)."),
    LinkPreset("cpu-allreduce", 1.08e9, 1.08e9, 312e-6,
               "MEASURED with the wire above (summary `allreduce_link`): gloo's all_reduce of one float32 tensor "
               "over the 2 processes, fitted as ring_allreduce_s with N = 2 (2 latencies + bytes / bandwidth): "
               "what replicas pay to average gradients."),
    LinkPreset("ideal", math.inf, math.inf, 0.0,
               "free communication: the compute-only limit of a schedule."),
)}
ALIASES = {"nvlink": "nvlink-h100", "pcie": "pcie4", "ib": "ib-hdr", "infiniband": "ib-hdr"}


def link_preset(name: str, nominal: bool = False) -> Link:
    """The named preset's link (effective bandwidth unless `nominal`); one FFPipeError for an unknown name."""
    preset = PRESETS.get(ALIASES.get(name, name))
    if preset is None:
        names = ", ".join([*PRESETS, *ALIASES])
        raise FFPipeError(f"unknown link {name!r}; choose one of: {names}")
    return preset.link(nominal)


def ring_allreduce_s(nbytes: float, devices: int, link: Link) -> float:
    """Seconds of a ring all-reduce of `nbytes` over `devices`: 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency.

    The ring runs a reduce-scatter and an all-gather, N-1 steps each, every step moving bytes/N per device
    (Patarasuk & Yuan 2009); nccl-tests' "bus bandwidth" is defined with the same 2(N-1)/N factor
    (nccl-tests doc/PERFORMANCE.md), so a measured busbw plugs in directly as the bandwidth. N = 1: zero.
    """
    if devices < 1:
        raise FFPipeError(f"an all-reduce needs at least 1 device, got {devices}")
    if devices == 1:
        return 0.0
    return 2 * (devices - 1) / devices * nbytes / link.bandwidth_Bps + 2 * (devices - 1) * link.latency_s
