"""The wire-dtype benchmark times both wire dtypes on a real 2-stage pipeline, the wire benchmark fits the
simulator's CPU links from its own measurements, and the accuracy-per-CPU-second table is exactly what its script
generates from the committed metrics.jsonl files."""

import subprocess
import sys

from benchmark_run import ROOT, run_quick_benchmark


def test_wire_dtype_pairs_float32_and_bfloat16_runs(tmp_path):
    result = run_quick_benchmark("wire_dtype.py", tmp_path, 300, "--models", "cnn14")
    (row,) = result["rows"]
    assert set(row["samples_per_s"]) == {"float32", "bfloat16"} and min(row["samples_per_s"].values()) > 0
    kib = row["kib_sent_per_step"]
    assert 0.45 < kib["bfloat16"] / kib["float32"] < 0.55  # x and shortcuts at half the bytes; labels stay
    assert row["bf16_over_f32"] == row["samples_per_s"]["bfloat16"] / row["samples_per_s"]["float32"]


def test_wire_benchmark_fits_the_links_it_measured(tmp_path):
    result = run_quick_benchmark("wire.py", tmp_path, 300, "--no-pipeline")
    table, summary = result["table"], result["summary"]
    assert [r["bytes"] for r in table] == sorted(r["bytes"] for r in table) and len(table) >= 4
    for key, fit in (("ours_latency_s", summary["wire_link"]), ("allreduce_s", summary["allreduce_link"])):
        hops = 2 if key == "allreduce_s" else 1
        assert fit["latency_s"] > 0 and fit["bandwidth_Bps"] > 0
        small = [r[key] for r in table if r["bytes"] <= 64 * 1024]
        assert min(small) <= hops * fit["latency_s"] <= max(small)  # the fixed cost is what small messages took
        biggest = table[-1]  # and the fit reproduces the largest message's time to within a factor of two
        predicted = hops * fit["latency_s"] + biggest["bytes"] / fit["bandwidth_Bps"]
        assert 0.5 < predicted / biggest[key] < 2


def test_accuracy_table_is_generated_from_the_committed_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_cpu.py"), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    committed = ROOT / "benchmarks" / "results" / "accuracy" / "README.md"
    assert (tmp_path / "README.md").read_text() == committed.read_text()
