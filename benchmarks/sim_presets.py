"""The simulator's CPU link presets against the old ones, on a committed throughput run's own profiles.

Each pipelined row of `benchmarks/results/throughput/results.json` is predicted again from its model's
committed FF-sequential profile, once with the current `cpu-loopback` / `cpu-allreduce` presets (fitted by
`benchmarks/wire.py`) and once with the constant they replaced (4.5 ms + bytes / 1.9 GB/s for both), so the
effect of the presets is read apart from any new measurement.

    python benchmarks/sim_presets.py [RESULTS_JSON]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ffpipe.lab.sim.links as links
from ffpipe.lab.sim.times import times_from_dict
from ffpipe.lab.sim.validate import predict_measured, relative_error

RESULTS = Path(__file__).resolve().parent / "results" / "throughput" / "results.json"
OLD = {name: links.LinkPreset(name, 1.9e9, 1.9e9, 4.5e-3, "the constant before the wire fit")
       for name in ("cpu-loopback", "cpu-allreduce")}


def errors(result: dict) -> list[tuple[str, float, float, float]]:
    """(row, measured samples/s, predicted, relative error) of every pipelined row, with the presets in force."""
    rows = []
    for r in result["rows"]:
        if r.get("method") != "ff_pipeline":
            continue
        times = times_from_dict(result["profiles"][r["model"]]["times"], r["model"])
        predicted = predict_measured(times, r["partition"], r["replicas"], cores=2)["samples_per_s"]
        rows.append((f"{r['model']} {r['partition']} x{r['replicas']}", r["samples_per_s"], predicted,
                     relative_error(predicted, r["samples_per_s"])))
    return rows


def main(argv: list[str]) -> int:
    result = json.loads(Path(argv[0] if argv else RESULTS).read_text())
    current = errors(result)
    links.PRESETS.update(OLD)
    old = errors(result)
    print("| row | measured | current presets | error | old presets | error |\n|---|---|---|---|---|---|")
    for (row, measured, pred, err), (_, _, old_pred, old_err) in zip(current, old):
        print(f"| {row} | {measured:.0f} | {pred:.0f} | {err:.3f} | {old_pred:.0f} | {old_err:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
