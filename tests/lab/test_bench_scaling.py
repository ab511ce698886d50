"""The scaling benchmark: its plan, summary and report on synthetic results, and one real quick run.

The quick run starts 8 real training runs (4 of them torchrun worlds of 2 or 4 processes), about 1.5 minutes
on a busy 2-core machine; everything else here is pure and takes milliseconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmark_run import run_quick_benchmark

from ffpipe.cli import main
from ffpipe.config import load_config
from ffpipe.lab.bench import scaling
from ffpipe.lab.bench import scaling_report as report


def test_full_plan_runs_each_model_once_at_every_stage_count_that_fits():
    models = {m["key"]: m["stages"] for m in scaling.models(scaling.FULL)}
    assert models["mlp-4x2000"] == [1, 2, 4] and models["mlp-16x500"] == [1, 2, 4, 8]
    assert models["cnn-2x16"] == [1, 2] and models["cnn-8x16"] == [1, 2, 4]
    assert models["mlp-1x784"] == [1] and models["mlp-8x784"] == [1, 8]  # weak series: baseline + depth = stages
    assert sum(len(s) for s in models.values()) == 37
    assert scaling.extrapolated_models(scaling.FULL, scaling.models(scaling.FULL)) == {
        "mlp-16x500", "mlp-16x2000", "cnn-8x16"}


def test_quick_plan_shares_models_between_the_sweep_and_the_weak_series():
    models = {m["key"]: m["stages"] for m in scaling.models(scaling.QUICK)}
    assert models == {"mlp-2x64": [1, 2], "mlp-4x64": [1, 2, 4], "mlp-1x64": [1], "cnn-2x4": [1, 2]}


@pytest.mark.parametrize("key", ["mlp-16x2000", "cnn-8x16"])
def test_config_text_is_a_valid_config_with_the_benchmark_settings(tmp_path, key):
    model = next(m for m in scaling.models(scaling.FULL) if m["key"] == key)
    path = tmp_path / "c.yaml"
    path.write_text(scaling.config_text(model, scaling.FULL, 2000))
    cfg = load_config(str(path), [])
    assert (cfg.model.depth, cfg.model.width, cfg.data.batch_size, cfg.data.train_subset) == (
        model["depth"], model["width"], 100, 2000)
    assert cfg.head.mode == "local" and cfg.head.readouts == ["linear"] and cfg.pipeline.partition == "cost"
    assert cfg.train.progress is False and cfg.train.eval_every >= 1000
    assert cfg.model.type == ("linear" if key.startswith("mlp") else "conv")


def _rep(rate: float, stages: int) -> dict:
    rep = {"samples_per_s": rate, "steps": 60, "run_s": 1.0}
    if stages > 1:
        rep.update(partition=[1] * stages, bottleneck={"bound_samples_per_s": 2 * rate, "fraction": 0.5,
                                                       "slowest_stage": 0},
                   stages=[{"blocks": [k], "compute_s_per_step": 0.01, "idle_pct": 10.0 * k,
                            "send_blocked_pct": 0.0} for k in range(stages)])
    return rep


def _point(key: str, stages: int, rate: float, base: float, error: float | None, cores: int = 2) -> dict:
    family, shape = key.split("-")
    depth, width = map(int, shape.split("x"))
    model = {"key": key, "family": family, "depth": depth, "width": width, "title": key}
    row = scaling.point_row(model, stages, [_rep(rate, stages)], base, cores, 6000)
    if error is not None:
        row.update(prediction={"samples_per_s": rate * (1 + error), "limit": "stage 0 compute"},
                   relative_error=error)
    return row


def test_point_row_labels_oversubscription_and_takes_the_median_repetition():
    model = {"key": "mlp-8x500", "family": "mlp", "depth": 8, "width": 500, "title": "MLP 8x500"}
    reps = [_rep(300.0, 4), _rep(100.0, 4), _rep(200.0, 4)]
    reps[2]["stages"][0]["idle_pct"] = 77.0
    row = scaling.point_row(model, 4, reps, 100.0, 2, 6000)
    assert row["oversubscribed"] and row["processes"] == 4
    assert (row["samples_per_s"], row["min_samples_per_s"], row["max_samples_per_s"]) == (200.0, 100.0, 300.0)
    assert row["speedup_vs_1_stage"] == 2.0 and row["utilisation"] == 0.5 and row["epoch_s"] == 30.0
    assert row["idle_pct"][0] == 77.0  # the idle % of the median repetition, not of the first
    assert not scaling.point_row(model, 2, reps, 100.0, 2, 6000)["oversubscribed"]


def test_summary_separates_oversubscribed_points_and_skips_unpredicted_ones():
    points = [_point("mlp-4x64", 1, 100.0, 100.0, None), _point("mlp-4x64", 2, 150.0, 100.0, 0.05),
              _point("mlp-4x64", 4, 120.0, 100.0, 0.30), _point("cnn-4x16", 2, 50.0, 40.0, 0.15)]
    s = scaling.summary(points, 2)
    assert set(scaling.SUMMARY_FIELDS) <= s.keys()
    assert s["sim_points"] == 3 and s["sim_max_rel_error"] == 0.30 and s["sim_median_rel_error"] == 0.15
    assert s["sim_points_not_oversubscribed"] == 2 and s["sim_max_rel_error_not_oversubscribed"] == 0.15
    assert s["sim_median_rel_error_not_oversubscribed"] == pytest.approx(0.10)
    assert s["sim_within_goal"] == 1 and s["sim_within_goal_not_oversubscribed"] == 1
    assert s["speedup_at_cores"] == {"mlp-4x64": 1.5, "cnn-4x16": 1.25} and s["oversubscribed_points"] == 1


def _synthetic() -> dict:
    points = [_point("mlp-1x64", 1, 1000.0, 1000.0, None)]
    for depth, rates in ((2, (600.0, 800.0)), (4, (300.0, 500.0, 600.0))):
        points += [_point(f"mlp-{depth}x64", s, r, rates[0], None if s == 1 else 0.05 * s)
                   for s, r in zip((1, 2, 4), rates)]
    points += [_point("cnn-2x4", 1, 50.0, 50.0, None), _point("cnn-2x4", 2, 90.0, 50.0, 0.02)]
    return {"benchmark": "scaling", "quick": True, "command": "python benchmarks/scaling.py --quick",
            "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "device": "cpu", "threads_per_process": 1},
            "plan": scaling.QUICK, "batch": 200, "train_subset": 3000, "steps_per_epoch": 15, "steps": 31,
            "timed_epoch": 2, "repeats": 1, "partition": "flops", "wall_s": 60.0,
            "load_average": {"start": [0.5, 0.4, 0.3], "end": [1.5, 1.0, 0.5]},
            "summary": scaling.summary(points, 2), "points": points, "extrapolation": []}


def test_strong_and_weak_series_split_the_points():
    result = _synthetic()
    strong = report.strong_series(result)
    assert list(strong) == ["mlp-2x64", "mlp-4x64", "cnn-2x4"]  # mlp-1x64 has one stage count: not a series
    assert [p["stages"] for p in strong["mlp-4x64"]] == [1, 2, 4]
    weak = report.weak_series(result)
    assert [(w["depth"], w["stages"]) for w in weak] == [(1, 1), (2, 2), (4, 4)]
    assert [w["sample_blocks_per_s"] for w in weak] == [1000.0, 1600.0, 2400.0]
    assert [w["weak_efficiency"] for w in weak] == [1.0, 0.8, 0.6]
    assert [p["model"] for p in report.sweep_points(result, "mlp")] == ["mlp-2x64"] * 2 + ["mlp-4x64"] * 3


def test_every_table_row_of_an_oversubscribed_point_says_so():
    result = _synthetic()
    text = report.markdown(result)
    over = [p for p in result["points"] if p["oversubscribed"]]
    assert [p["stages"] for p in over] == [4]
    assert report.processes_cell(over[0], 2) == "4 **oversubscribed** (> 2 cores)"
    assert report.processes_cell(result["points"][2], 2) == "2"
    rows = [ln for ln in text.splitlines() if ln.startswith("| mlp-4x64 | 4 |") or ln.startswith("| 4 |")]
    assert len(rows) == 3 and all("**oversubscribed**" in ln for ln in rows)  # sweep, weak and validation tables
    assert sum("**oversubscribed**" in ln for ln in text.splitlines() if ln.startswith("|")) == 3
    assert "PREDICTION, not measured" in text and "not GPU speeds" in text


def test_bad_arguments_are_one_usage_error(capsys):
    for argv, message in ((["--repeats", "0"], "--repeats must be at least 1"),
                          (["--quick", "--train-subset", "100"], "--train-subset must be in [400, 6000]")):
        assert main(["bench", "scaling", *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("scaling")
    return run_quick_benchmark("scaling.py", out, timeout=400), out


def test_quick_results_have_every_point_prediction_and_summary_field(quick):
    result, _ = quick
    assert result["benchmark"] == "scaling" and result["quick"] is True
    assert {"cpu", "cores", "torch", "device"} <= result["machine"].keys()
    cores = result["machine"]["cores"]
    seen = {(p["model"], p["stages"]) for p in result["points"]}
    assert seen == {(m["key"], s) for m in scaling.models(scaling.QUICK) for s in m["stages"]}
    for p in result["points"]:
        assert p["oversubscribed"] == (p["processes"] > cores) and p["processes"] == p["stages"]
        assert p["utilisation"] == pytest.approx(p["speedup_vs_1_stage"] / p["stages"])
        assert p["repetitions"][0]["steps"] == result["steps_per_epoch"] == 15
        if p["stages"] == 1:
            assert p["prediction"] is None and p["speedup_vs_1_stage"] == 1.0
        else:
            pred = p["prediction"]
            assert pred["prediction"] is True and pred["samples_per_s"] > 0 and sum(p["partition"]) == p["depth"]
            assert p["relative_error"] == pytest.approx(abs(pred["samples_per_s"] / p["samples_per_s"] - 1))
            assert len(p["idle_pct"]) == p["stages"] and 0 < p["bottleneck"]["bound_samples_per_s"]
    summary = result["summary"]
    assert set(scaling.SUMMARY_FIELDS) <= summary.keys() and summary["sim_points"] == 4
    for key in ("sim_max_rel_error", "sim_median_rel_error", "sim_max_rel_error_not_oversubscribed",
                "sim_median_rel_error_not_oversubscribed"):
        assert math.isfinite(summary[key]) and summary[key] >= 0
    assert summary["oversubscribed_points"] == sum(p["stages"] > cores for p in result["points"])
    assert [e["model"] for e in result["extrapolation"]] == ["mlp-4x64", "cnn-2x4"]
    for extra in result["extrapolation"]:
        assert extra["prediction"] is True and [r["devices"] for r in extra["links"][0]["rows"]] == [4, 8, 16]


def test_quick_report_regenerates_byte_identical_from_json(quick):
    result, out = quick
    original = (out / "results.md").read_bytes()
    for name in ("results.md", *report.PLOTS):
        assert (out / name).stat().st_size > 0
        (out / name).unlink()
    text = report.render(json.loads((out / "results.json").read_text()), out)
    assert (out / "results.md").read_bytes() == original == text.encode()
    assert all((out / name).stat().st_size > 0 for name in report.PLOTS)
    assert "**oversubscribed**" in text and "## Simulator validation" in text
