"""The wire's cost per message: our Sender/Receiver against raw gloo send/recv and a memcpy, side by side.

    python benchmarks/wire.py [--quick] [--repeats 3] [--no-pipeline] [--out DIR]

Part 1, the wire (2 real processes, gloo over loopback, one torch thread each). For every payload size from
1 KiB to 64 MiB (float32 tensors), in one run:
- one-way latency: a ping-pong of one message each way, half the round trip, median over iterations;
- one-way throughput: a stream of messages one way, closed by a small acknowledgement, in bytes/s;
each for (a) our `Sender`/`Receiver` (`ffpipe.pipeline.wire`, on its own process group, as a stage uses it)
and (b) raw blocking `dist.send`/`dist.recv` of the same tensor; plus (c) a `copy_` of the same size in one
process, the floor that any transport pays once, and (d) a gloo `all_reduce` of the same tensor over both
processes, what replicas pay each step to average gradients. Our wire's latency and the all-reduce are fitted
as latency + bytes / bandwidth: the simulator's CPU link presets. The per-message overhead is ours minus raw
(µs); the ratio is ours / raw.

Part 2, the whole pipeline: the 4×100 and 4×500 MLPs at batch 100 and 500, sequential and on 2 stages
(`ffpipe train`, real processes), with the bottleneck bound and the fraction of it achieved.

Results: DIR/results.json (every repetition, the machine and a `summary` with `small_message_overhead_us`
and `large_message_bandwidth_ratio`), DIR/results.md and DIR/wire.png. Default DIR:
benchmarks/results/wire/ (benchmarks/results/wire_quick/ with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ffpipe.lab.bench import runner
from ffpipe.pipeline.wire import Kind, Receiver, Sender, configure_process
from ffpipe.run.plots import save_png, subplots

KIB = 1024
SIZES = [KIB * 2 ** i for i in range(0, 17, 2)]  # 1 KiB, 4 KiB, ..., 64 MiB
SMALL, LARGE = 64 * KIB, 4 * KIB * KIB


def iterations(size: int, quick: bool) -> int:
    """Enough messages for a stable median: many small ones, at least 8 large ones (≈256 MiB moved)."""
    n = max(8, min(400, (256 * KIB * KIB) // size))
    return max(4, n // 8) if quick else n


# -- part 1: two processes ------------------------------------------------------------------------------------
def _pingpong_raw(t: torch.Tensor, rank: int, n: int) -> list[float]:
    peer, times = 1 - rank, []
    for _ in range(n):
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(t, peer)
            dist.recv(t, peer)
        else:
            dist.recv(t, peer)
            dist.send(t, peer)
        times.append((time.perf_counter() - t0) / 2)
    return times


def _stream_raw(t: torch.Tensor, ack: torch.Tensor, rank: int, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        dist.send(t, 1) if rank == 0 else dist.recv(t, 0)
    dist.recv(ack, 1) if rank == 0 else dist.send(ack, 0)
    return time.perf_counter() - t0


def _pingpong_wire(t: torch.Tensor, rank: int, n: int, out: Sender, inp: Receiver) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        if rank == 0:
            out.send(Kind.TRAIN, i, 0, [t], copy=False)  # handed over, as a stage hands its packet over
            inp.recv()
        else:
            msg = inp.recv()
            out.send(Kind.TRAIN, i, 0, msg.tensors)  # received buffers are reused: forwarding copies them
        times.append((time.perf_counter() - t0) / 2)
    return times


def _stream_wire(t: torch.Tensor, rank: int, n: int, out: Sender, inp: Receiver) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        out.send(Kind.TRAIN, i, 0, [t], copy=False) if rank == 0 else inp.recv()
    if rank == 0:
        inp.recv()  # the acknowledgement: the last message has arrived
    else:
        out.send(Kind.EPOCH_END, n, 0)
    return time.perf_counter() - t0


def _allreduce(t: torch.Tensor, n: int) -> list[float]:
    """Seconds per gloo all-reduce of `t` over both processes: what replicas pay to average gradients."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - t0)
    return times


def _worker(rank: int, port: int, sizes: list[int], repeats: int, quick: bool, path: str) -> None:
    torch.set_num_threads(1)
    configure_process()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    wire_group = dist.new_group([0, 1])  # our channels match their own messages, apart from the raw ones
    out = Sender(1 - rank, group=wire_group, timeout_s=300)
    inp = Receiver(1 - rank, group=wire_group, timeout_s=300)
    ack = torch.zeros(1)
    rows = []
    for size in sizes:
        t = torch.ones(size // 4)
        n = iterations(size, quick)
        for rep in range(repeats):
            row = {"bytes": size, "repeat": rep, "messages": n}
            dist.barrier()
            row["raw_latency_s"] = statistics.median(_pingpong_raw(t, rank, n))
            dist.barrier()
            row["raw_bytes_per_s"] = n * size / _stream_raw(t, ack, rank, n)
            dist.barrier()
            row["ours_latency_s"] = statistics.median(_pingpong_wire(t, rank, n, out, inp))
            dist.barrier()
            row["ours_bytes_per_s"] = n * size / _stream_wire(t, rank, n, out, inp)
            dist.barrier()
            row["allreduce_s"] = statistics.median(_allreduce(t, n))
            if rank == 0:
                dst = torch.empty_like(t)
                copies = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    dst.copy_(t)
                    copies.append(time.perf_counter() - t0)
                row["memcpy_s"] = statistics.median(copies)
                row["memcpy_bytes_per_s"] = size / row["memcpy_s"]
                rows.append(row)
                print(f"{size / KIB:>8.0f} KiB  raw {row['raw_latency_s'] * 1e6:9.1f} µs  ours "
                      f"{row['ours_latency_s'] * 1e6:9.1f} µs  stream ours/raw "
                      f"{row['ours_bytes_per_s'] / row['raw_bytes_per_s']:.2f}", flush=True)
    out.send(Kind.STOP, 0, 0)
    msg = inp.recv()
    assert msg.kind == Kind.STOP
    out.close()
    inp.close()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        Path(path).write_text(json.dumps(rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_wire(sizes: list[int], repeats: int, quick: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        mp.spawn(_worker, args=(free_port(), sizes, repeats, quick, path), nprocs=2, join=True)
        return json.loads(Path(path).read_text())


def per_size(rows: list[dict]) -> list[dict]:
    """Medians over repetitions, per payload size, with the derived overhead and ratios."""
    table = []
    for size in sorted({r["bytes"] for r in rows}):
        reps = [r for r in rows if r["bytes"] == size]
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k.endswith(("_s", "_per_s"))}
        med["bytes"] = size
        med["overhead_us"] = (med["ours_latency_s"] - med["raw_latency_s"]) * 1e6
        med["latency_ratio"] = med["ours_latency_s"] / med["raw_latency_s"]
        med["bandwidth_ratio"] = med["ours_bytes_per_s"] / med["raw_bytes_per_s"]
        table.append(med)
    return table


# -- part 2: whole pipelines ------------------------------------------------------------------------------------
MLP = """\
data: {{batch_size: {batch}, labels: {{encoding: onehot}}}}
model: {{type: linear, depth: 4, width: {width}}}
head: {{mode: local, exclude_first: true, readouts: [linear]}}
train: {{epochs: 100, eval_every: 1000, progress: false}}
"""


def measure_pipelines(repeats: int, quick: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in (100, 500):
            for batch in (100, 500):
                cfg = Path(tmp) / f"mlp{width}-{batch}.yaml"
                cfg.write_text(MLP.format(width=width, batch=batch))
                steps = 2 * (6000 // batch)  # two epochs of the embedded slice; the second is timed
                for rep in range(1 if quick else repeats):
                    row = {"width": width, "batch": batch, "repeat": rep}
                    for stages in (1, 2):
                        out = Path(tempfile.mkdtemp(dir=tmp))
                        record = runner.timed_run(runner.ff_command(cfg, stages, 1, steps, out), out)["record"]
                        row[f"samples_per_s_{stages}"] = record["samples_per_s"]
                        if stages == 2:
                            row["bound_samples_per_s"] = record["bottleneck"]["bound_samples_per_s"]
                            row["bound_fraction"] = record["bottleneck"]["fraction"]
                            row["compute_ms_per_step"] = [1e3 * s["compute_s_per_step"] for s in record["stages"]]
                    rows.append(row)
                    print(f"MLP 4x{width} batch {batch}: sequential {row['samples_per_s_1']:,.0f}/s, 2 stages "
                          f"{row['samples_per_s_2']:,.0f}/s = {row['bound_fraction']:.2f} of its bound", flush=True)
    return rows


# -- report -------------------------------------------------------------------------------------------------
def fit_link(table: list[dict], key: str, hops: int = 1) -> dict:
    """`latency + bytes / bandwidth` fitted to the per-size medians of `key` (seconds): the fixed cost from the
    small sizes (the median over <= 64 KiB, split over `hops` latencies: a 2-process ring all-reduce pays 2),
    the bandwidth from the large ones (the median of bytes / (time - fixed) over >= 4 MiB). The simulator's CPU
    link presets (`ffpipe.lab.sim.links`) carry these numbers."""
    fixed = statistics.median(r[key] for r in table if r["bytes"] <= SMALL)
    rate = statistics.median(r["bytes"] / max(r[key] - fixed, 1e-9) for r in table if r["bytes"] >= LARGE)
    return {"latency_s": fixed / hops, "bandwidth_Bps": rate}


def summary_of(table: list[dict], pipelines: list[dict]) -> dict:
    small = [r["overhead_us"] for r in table if r["bytes"] <= SMALL]
    large = [r["bandwidth_ratio"] for r in table if r["bytes"] >= LARGE]
    out = {"wire_link": fit_link(table, "ours_latency_s"), "allreduce_link": fit_link(table, "allreduce_s", hops=2),
           "small_message_overhead_us": statistics.median(small) if small else None,
           "small_message_overhead_us_worst": max(small) if small else None,
           "large_message_bandwidth_ratio": statistics.median(large) if large else None,
           "large_message_bandwidth_ratio_worst": min(large) if large else None}
    if pipelines:
        out["pipeline_min_bound_fraction"] = min(
            statistics.median(r["bound_fraction"] for r in pipelines if (r["width"], r["batch"]) == key)
            for key in {(r["width"], r["batch"]) for r in pipelines})
    return out


def markdown(result: dict, command: str) -> str:
    s, m = result["summary"], result["machine"]
    small_met = "met" if s["small_message_overhead_us"] <= 100 else "not met"
    large_met = "met" if s["large_message_bandwidth_ratio"] >= 0.8 else "not met"
    lines = ["# The wire's cost per message\n",
             f"`{command}` on {m['cpu']}, {m['cores']} cores, torch {m['torch']}, one thread per process, gloo "
             "over loopback, 2 processes. Medians over repetitions.\n",
             f"- Small messages (≤ 64 KiB): median overhead of our wire over raw gloo "
             f"**{s['small_message_overhead_us']:.0f} µs** per message "
             f"(worst {s['small_message_overhead_us_worst']:.0f} µs); goal ≤ 100 µs: **{small_met}**.",
             f"- Large messages (≥ 4 MiB): ours moves **{s['large_message_bandwidth_ratio']:.2f}×** raw gloo's "
             f"bytes/s (worst {s['large_message_bandwidth_ratio_worst']:.2f}×); goal ≥ 0.8×: **{large_met}**.\n",
             f"- Fitted as latency + bytes / bandwidth (the simulator's CPU links): our wire {_link(s['wire_link'])}; "
             f"a gloo all-reduce over the 2 processes {_link(s['allreduce_link'])} per ring hop (2 hops).\n",
             "| payload | raw latency | ours latency | overhead | memcpy | raw stream | ours stream | ours/raw "
             "| all-reduce |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["table"]:
        lines.append(f"| {_size(r['bytes'])} | {r['raw_latency_s'] * 1e6:.1f} µs | "
                     f"{r['ours_latency_s'] * 1e6:.1f} µs | {r['overhead_us']:+.1f} µs | "
                     f"{r['memcpy_s'] * 1e6:.1f} µs | "
                     f"{r['raw_bytes_per_s'] / 2**20:,.0f} MiB/s | {r['ours_bytes_per_s'] / 2**20:,.0f} MiB/s | "
                     f"{r['bandwidth_ratio']:.2f} | {r['allreduce_s'] * 1e3:.2f} ms |")
    if result["pipelines"]:
        lines += ["\n## Whole pipelines (2 stages vs sequential, embedded Fashion-MNIST slice, epoch 2)\n",
                  "| model | batch | compute per step, stage 0 / 1 | sequential | 2 stages | bound | of bound |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["pipelines"]:
            ms = " / ".join(f"{v:.2f} ms" for v in r["compute_ms_per_step"])
            lines.append(f"| MLP 4×{r['width']} | {r['batch']} | {ms} | {r['samples_per_s_1']:,.0f}/s | "
                         f"{r['samples_per_s_2']:,.0f}/s | {r['bound_samples_per_s']:,.0f}/s | "
                         f"{r['bound_fraction']:.2f} |")
    lines.append("\n![latency and bandwidth](wire.png)")
    return "\n".join(lines) + "\n"


def _link(fit: dict) -> str:
    return f"{fit['latency_s'] * 1e6:.0f} µs + bytes / {fit['bandwidth_Bps'] / 1e9:.2f} GB/s"


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // KIB} KiB"


def plot(table: list[dict], path: Path) -> None:
    fig, (ax1, ax2) = subplots(1, 2, figsize=(11, 4))
    x = [r["bytes"] for r in table]
    for key, label in (("raw", "raw gloo"), ("ours", "ffpipe wire")):
        ax1.plot(x, [r[f"{key}_latency_s"] * 1e6 for r in table], marker="o", label=label)
        ax2.plot(x, [r[f"{key}_bytes_per_s"] / 2**20 for r in table], marker="o", label=label)
    ax1.plot(x, [r["memcpy_s"] * 1e6 for r in table], marker=".", ls="--", label="memcpy")
    ax2.plot(x, [r["memcpy_bytes_per_s"] / 2**20 for r in table], marker=".", ls="--", label="memcpy")
    ax1.set(xscale="log", yscale="log", xlabel="payload (bytes)", ylabel="one-way latency (µs)", title="latency")
    ax2.set(xscale="log", yscale="log", xlabel="payload (bytes)", ylabel="MiB/s", title="one-way stream")
    ax1.legend()
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and sizes, one repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pipeline", action="store_true", help="skip part 2 (the whole-pipeline runs)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    out = Path(args.out or runner.ROOT / "benchmarks" / "results" / ("wire_quick" if args.quick else "wire"))
    repeats = 1 if args.quick else args.repeats
    sizes = SIZES[::2] if args.quick else SIZES
    rows = measure_wire(sizes, repeats, args.quick)
    pipelines = [] if args.no_pipeline else measure_pipelines(repeats, args.quick)
    table = per_size(rows)
    result = {"summary": summary_of(table, pipelines), "machine": runner.machine(), "table": table,
              "repetitions": rows, "pipelines": pipelines}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    command = "python benchmarks/wire.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "results.md").write_text(markdown(result, command.strip()))
    plot(table, out / "wire.png")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
