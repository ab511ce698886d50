"""`ffpipe bench simulate`: predicted FF-pipeline and DDP-BP throughput on 2..16 devices from measured times."""

from __future__ import annotations

import argparse
import json

from ffpipe.errors import FFPipeError
from ffpipe.sim.links import ALIASES, PRESETS, link_preset
from ffpipe.sim.predict import predict
from ffpipe.sim.times import load_times


def _devices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated device counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"device counts must be >= 1, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `simulate` (for `ffpipe bench`); its func takes `args` and returns an exit code."""
    links = ", ".join([*PRESETS, *ALIASES])
    p = subparsers.add_parser("simulate", help="predict FF-pipeline vs DDP-BP throughput from measured block times",
                              description="Every number printed is a PREDICTION of ffpipe.sim's cost model; only "
                                          "the per-block times it reads are measurements.")
    p.add_argument("--times", required=True, metavar="FILE",
                   help="times file (.json, format in ffpipe/sim/times.py), a run's metrics.jsonl, or a run dir")
    p.add_argument("--devices", type=_devices, default=[2, 4, 8, 16], help="device counts (default 2,4,8,16)")
    p.add_argument("--link", default="nvlink", help=f"link preset: {links} (default nvlink = nvlink-h100)")
    p.add_argument("--nominal", action="store_true", help="use the link's nominal line rate, not its effective one")
    p.add_argument("--queue-depth", type=int, default=2, help="wire depth between stages (pipeline.queue_depth)")
    p.add_argument("--efficiency", type=float, default=1.0,
                   help="share of linear speedup a device keeps when the batch is split (FF replicas and DDP)")
    p.add_argument("--overlap", type=float, default=0.0, help="share of DDP's all-reduce hidden behind backward")
    p.add_argument("--bp-step-s", type=float, help="measured 1-device BP step at the global batch (seconds)")
    p.add_argument("--check-link", default="cpu-loopback",
                   help="link to re-simulate the measured run's own layout on, to compare with what it achieved")
    p.add_argument("--steps", type=int, default=400, help="simulated steps per layout (half are warm-up)")
    p.add_argument("--json", action="store_true", help="print the full prediction as JSON")
    p.set_defaults(func=cmd_simulate)
    return p


def cmd_simulate(args: argparse.Namespace) -> int:
    link = link_preset(args.link, args.nominal)
    check = link_preset(args.check_link) if args.check_link else None
    if args.bp_step_s is not None and not args.bp_step_s > 0:
        raise FFPipeError(f"--bp-step-s must be positive, got {args.bp_step_s}")
    result = predict(load_times(args.times), args.devices, link, queue_depth=args.queue_depth,
                     efficiency=args.efficiency, overlap=args.overlap, bp_step_s=args.bp_step_s, check_link=check,
                     steps=args.steps)
    print(json.dumps(result, indent=1, allow_nan=False) if args.json else render(result))
    return 0


def render(result: dict) -> str:
    """The prediction as a short text report; every line that is a model output says so."""
    link, bp, ff1 = result["link"], result["bp_1_device"], result["ff_1_device"]
    lines = [f"{result['label']}.",
             f"times: {result['source']}  global batch {result['global_batch']}",
             f"link: {link['name']}, {link['bandwidth_GBps']:g} GB/s, {link['latency_us']:g} us;  queue depth "
             f"{result['queue_depth']}, efficiency {result['efficiency']:g}, DDP overlap {result['overlap']:g}",
             *[f"note: {n}" for n in result["notes"]],
             f"1 device: FF {ff1['samples_per_s']:,.0f} samples/s;  BP {bp['samples_per_s']:,.0f} samples/s "
             f"(BP step {bp['step_source']})",
             "",
             f"{'devices':>7}  {'FF layout':>10}  {'FF samples/s':>12}  {'speedup':>7}  {'limit':<22}  "
             f"{'DDP samples/s':>13}  {'speedup':>7}  {'FF/DDP':>6}"]
    for row in result["rows"]:
        ff, ddp = row["ff"], row["ddp"]
        layout = f"{ff['stages']}x{ff['replicas']}"
        tail = (f"{ddp['throughput']:>13,.0f}  {ddp['speedup']:>6.2f}x  {row['ff_over_ddp']:>5.2f}x" if ddp
                else f"{'-':>13}  {'-':>7}  {'-':>6}")
        lines.append(f"{row['devices']:>7}  {layout:>10}  {ff['samples_per_s']:>12,.0f}  {ff['speedup']:>6.2f}x  "
                     f"{ff['limit']:<22}  {tail}")
    lines.append("(FF layout = stages x replicas; speedups over each method's own 1-device step)")
    anchors = result["anchors"]
    lines.append("anchors (measured by the papers): DeeperForward pipeline "
                 + ", ".join(f"{v}x@{k}" for k, v in anchors["deeperforward_pipeline_speedup"].items())
                 + "; its BP-DDP " + ", ".join(f"{v}x@{k}" for k, v in anchors["deeperforward_bp_ddp_speedup"].items())
                 + "; PFF " + ", ".join(f"{v}x@{k}" for k, v in anchors["pff_all_layers_speedup"].items()))
    check = result["check"]
    if check:
        lay, measured = check["layout"], check["measured_samples_per_s"]
        seen = f", the run measured {measured:,.0f} ({check['simulated_over_measured']:.2f}x)" if measured else ""
        lines.append(f"check: the measured layout {lay['partition']} x {lay['replicas']} replicas on "
                     f"{check['link']['name']} simulates to {lay['samples_per_s']:,.0f} samples/s{seen}")
    return "\n".join(lines)
