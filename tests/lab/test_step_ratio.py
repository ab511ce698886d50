"""`benchmarks/step_ratio.py` times FF and BP steps in fresh processes, in turn, and reports the paired ratio."""

from benchmark_run import run_quick_benchmark


def test_step_ratio_pairs_fresh_processes(tmp_path):
    result = run_quick_benchmark("step_ratio.py", tmp_path, 180, "--models", "tinycnn")
    (row,) = result["nets"]
    assert row["net"] == "tinycnn" and len(row["ff_step_ms"]) == len(row["bp_step_ms"]) == row["pairs"] == 2
    assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"] and row["ratio_median"] > 0
    assert "| tinycnn |" in (tmp_path / "results.md").read_text()
