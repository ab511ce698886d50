"""`ffpipe bench simulate`: predicted FF-pipeline and DDP-BP throughput on 2..16 devices from measured times."""

from __future__ import annotations

import argparse
import json

from ffpipe.errors import FFPipeError
from ffpipe.lab.sim.links import link_preset
from ffpipe.lab.sim.predict import predict
from ffpipe.lab.sim.times import load_times


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
