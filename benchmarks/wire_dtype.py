"""What `pipeline.wire_dtype: bfloat16` does to a 2-stage pipeline: samples/s and bytes on the wire per step,
against float32, on the deep nets whose packets are largest.

Each repetition runs a net's pipeline with float32 and then with bfloat16 (`ffpipe.lab.bench.throughput.run_once`:
a real `ffpipe train --stages 2`, 1 torch thread per process, epoch 2 timed, the throughput benchmark's deep-net
size), so a drifting machine moves both halves of a pair alike; the ratio is taken per repetition. Accuracy is
a separate question (a rounded wire changes the weights): see `benchmarks/results/accuracy/wire_dtype/`.

    python benchmarks/wire_dtype.py [--models cnn14,resnet17] [--repeats 3] [--out benchmarks/results/wire_dtype]
    python benchmarks/wire_dtype.py --quick --out /tmp/wd      # small nets, 1 repetition
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ffpipe.lab.bench import runner
from ffpipe.lab.bench.models import FULL, QUICK, TIMED_TRAIN, config_text, timed_steps
from ffpipe.lab.bench.throughput import grad_bytes, run_once

DTYPES = ("float32", "bfloat16")


def measure(model: str, size, repeats: int, work: Path) -> dict:
    reps = {d: [] for d in DTYPES}
    steps = timed_steps(size)
    for dtype in DTYPES:
        wire = f"pipeline: {{wire_dtype: {dtype}}}\n"
        (work / f"{model}-{dtype}.yaml").write_text(config_text(model, size, TIMED_TRAIN + wire))
    grads = grad_bytes(work / f"{model}-float32.yaml")
    for k in range(repeats):
        for dtype in DTYPES:
            cfg = work / f"{model}-{dtype}.yaml"
            rep, out = run_once("ff_pipeline", cfg, 2, 1, 2, steps, work, grads, size.batch)
            shutil.rmtree(out)
            reps[dtype].append(rep)
            print(f"{model} {dtype} rep {k + 1}/{repeats}: {rep['samples_per_s']:,.0f} samples/s", flush=True)
    ratios = [b["samples_per_s"] / f["samples_per_s"] for f, b in zip(reps["float32"], reps["bfloat16"])]
    med = {d: statistics.median(r["samples_per_s"] for r in reps[d]) for d in DTYPES}
    kib = {d: statistics.median(r["comm_bytes_per_step"] for r in reps[d]) / 1024 for d in DTYPES}
    return {"model": model, "samples_per_s": med, "kib_sent_per_step": kib,
            "bf16_over_f32": statistics.median(ratios), "bf16_over_f32_per_rep": ratios, "repetitions": reps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn14,resnet17")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(runner.ROOT / "benchmarks" / "results" / "wire_dtype"))
    args = parser.parse_args(argv)
    sizes, repeats = (QUICK, 1) if args.quick else (FULL, args.repeats)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, sizes[m], repeats, Path(tmp)) for m in args.models.split(",")]
    command = "python benchmarks/wire_dtype.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "wire_dtype", "machine": runner.machine(), "wall_s": time.perf_counter() - t0,
              "settings": {"command": command.strip(), "repeats": repeats}, "rows": rows}
    m = result["machine"]
    lines = ["# bfloat16 on the wire: 2-stage FF pipeline, float32 vs bfloat16 packets\n",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, commit {m['commit']}, 1 torch thread per process; "
             f"`{result['settings']['command']}`, {result['wall_s'] / 60:.1f} min, {repeats} repetition(s), "
             "pairs run float32 then bfloat16.\n",
             "| net | float32 samples/s | bfloat16 samples/s | bf16 / f32 (per rep) | KiB sent per step, f32 / bf16 |",
             "|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{x:.2f}" for x in r["bf16_over_f32_per_rep"])
        rate = r["samples_per_s"]
        lines.append(f"| {r['model']} | {rate['float32']:,.0f} | {rate['bfloat16']:,.0f} | "
                     f"**{r['bf16_over_f32']:.2f}** ({per}) | {r['kib_sent_per_step']['float32']:,.0f} / "
                     f"{r['kib_sent_per_step']['bfloat16']:,.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
