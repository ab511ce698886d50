"""`benchmarks/gpu_check.py`, the script for the first GPU, runs its checks on the CPU (`--device cpu --quick`):
the FF and BP steps of both deep nets, two identical runs giving identical weights, and a 2-stage pipeline of
the residual net giving the sequential trainer's weights bit for bit."""

from benchmark_run import run_quick_benchmark


def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    result = run_quick_benchmark("gpu_check.py", tmp_path, 180, "--device", "cpu")
    assert (tmp_path / "results.md").read_text().startswith("# GPU-path check (cpu, quick)")
    assert set(result["step"]) == {"cnn14", "resnet17"}
    assert all(row[m]["samples_per_s"] > 0 for row in result["step"].values() for m in ("ff", "bp"))
    assert result["determinism"]["identical"] and result["determinism"]["tensors"] > 0
    (pipe,) = result["pipeline"]
    assert pipe["exit"] == 0 and pipe["identical_to_sequential"] and 0 < pipe["fraction_of_bound"]
    assert result["machine"]["commit"] and result["device"] == "cpu"
