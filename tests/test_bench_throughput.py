"""benchmarks/throughput.py: the quick mode runs every configuration for real and writes a complete report.

The quick run starts five real training runs (two of them torchrun worlds of 2 processes), so this file takes
about 1.5 minutes on a busy 2-core machine; the pure helpers are checked without starting any run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configurations_cover_every_shape_that_fits_the_depth():
    bench = _module()
    assert bench.configurations("mlp", 2) == [("ff_pipeline", 2, 1, 2), ("ff_pipeline", 1, 2, 2),
                                              ("ff_sequential", 1, 1, 1), ("ddp_bp", 1, 1, 2), ("bp", 1, 1, 1)]
    four = bench.configurations("cnn", 4)  # 3 blocks: no 4-stage pipeline
    assert [(s, r) for m, s, r, _ in four if m == "ff_pipeline"] == [(2, 2), (1, 4)]


def test_bad_model_is_one_usage_error():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--models", "resnet"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "bad --models ['resnet']" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("throughput")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out


def test_quick_summary_has_every_field(quick):
    result, _ = quick
    bench = _module()
    summary = result["summary"]
    assert set(bench.SUMMARY_FIELDS) <= summary.keys()
    for key in ("ff_speedup_2w", "bottleneck_fraction_2w", "ff_over_ddp_throughput_2w"):
        assert summary[key] > 0 and math.isfinite(summary[key])
    assert 0 < summary["bottleneck_fraction_2w"] <= 1.5
    assert summary["memory_ratio_ff_over_ddp"] is None  # the quick mode runs the MLP only
    assert 0 <= summary["sim_max_rel_error"] < 10 and "measured stage times" in summary["sim_max_rel_error_note"]
    assert {"cpu", "cores", "torch", "device"} <= result["machine"].keys()


def test_quick_rows_have_every_field_and_consistent_ratios(quick):
    result, out = quick
    bench = _module()
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["ff_pipeline", "ff_pipeline", "ff_sequential", "ddp_bp", "bp"]
    ddp = rows[3]["samples_per_s"]
    for r in rows:
        assert set(bench.ROW_FIELDS) <= r.keys(), set(bench.ROW_FIELDS) - r.keys()
        assert len(r["repetitions"]) == result["repeats"] == 1
        assert r["min_samples_per_s"] <= r["samples_per_s"] <= r["max_samples_per_s"]
        assert r["epoch_s"] == pytest.approx(6000 / r["samples_per_s"])
        assert r["utilisation"] == pytest.approx(r["speedup_vs_1_worker"] / r["workers"])
        assert r["peak_memory_bytes_per_worker"] > 10 * 2**20  # a torch process is never this small
        assert r["oversubscribed"] == (r["processes"] > result["machine"]["cores"])
        if r["method"] != "bp":
            assert r["ff_over_ddp_throughput"] == pytest.approx(r["samples_per_s"] / ddp)
    pipe, replicas, seq, ddp_row, bp = rows
    assert seq["speedup_vs_1_worker"] == bp["speedup_vs_1_worker"] == 1.0
    assert pipe["comm_bytes_per_step_per_worker"] > 0 and replicas["comm_bytes_per_step_per_worker"] > 0
    assert seq["comm_bytes_per_step_per_worker"] == bp["comm_bytes_per_step_per_worker"] == 0
    assert ddp_row["comm_bytes_per_step_per_worker"] > 0
    assert pipe["bottleneck_fraction"] is not None and bp["bottleneck_fraction"] is None
    assert all(rep["sim_samples_per_s"] > 0 for rep in pipe["repetitions"] + replicas["repetitions"])
    for name in ("results.md", "speedup.png", "ff_over_bp.png", "memory.png"):
        assert (out / name).stat().st_size > 0
    assert "ff_pipeline 2 stage(s) x 1 replica(s)" in (out / "results.md").read_text()
