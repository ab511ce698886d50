"""The wire-dtype benchmark times both wire dtypes on a real 2-stage pipeline, and the accuracy-per-CPU-second
table is exactly what its script generates from the committed metrics.jsonl files."""

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


def test_accuracy_table_is_generated_from_the_committed_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy_vs_cpu.py"), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    committed = ROOT / "benchmarks" / "results" / "accuracy" / "README.md"
    assert (tmp_path / "README.md").read_text() == committed.read_text()
