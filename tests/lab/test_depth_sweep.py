"""`benchmarks/depth_sweep.py --quick`: real 2-stage FF pipelines and 2-worker DDP-BP runs of the smallest net,
plain and residual, and a results table whose every figure comes from them."""

from benchmark_run import run_quick_benchmark


def test_depth_sweep_times_both_methods_per_net(tmp_path):
    result = run_quick_benchmark("depth_sweep.py", tmp_path, 300, "--depths", "4")
    rows = result["rows"]
    assert [(r["depth"], r["kind"]) for r in rows] == [(4, "plain"), (4, "residual")]
    for r in rows:
        assert r["ff_samples_per_s"] > 0 and r["ddp_samples_per_s"] > 0
        assert r["ff_over_ddp"] == r["ff_samples_per_s"] / r["ddp_samples_per_s"]  # one repetition
        assert r["ff_tensor_mib"] > 0 and r["ddp_tensor_mib"] > 0 and sum(r["partition"]) == 4
    assert "| 4 | residual |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "depth_sweep.png").stat().st_size > 0
