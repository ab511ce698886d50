"""The throughput benchmark: its quick mode runs every model for real and writes a complete, regenerable report.

The quick run starts 12 real training runs (three models x FF sequential, FF 2-stage pipeline, BP, DDP-BP;
half of them torchrun worlds of 2 processes), so this file takes about 2 minutes on a busy 2-core machine.
Everything else here is pure: the summary and goal logic, the oversubscription labels and the report run on
synthetic results without starting a process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_run import run_quick_benchmark

from ffpipe.cli import main
from ffpipe.errors import FFPipeError
from ffpipe.lab.bench import throughput as bench
from ffpipe.lab.bench.commands import bench_report
from ffpipe.lab.bench.throughput_report import PLOTS, markdown, row_label
from ffpipe.lab.bench.throughput_tta import curve, reached, tta_summary
from ffpipe.lab.sim import times_from_dict
from ffpipe.lab.sim.times import times_from_run
from ffpipe.run.measure import MemoryMeter

MiB = 2**20


# -- pure: configurations, rows, summary, goals ----------------------------------------------------------------
def test_configurations_cover_every_shape_that_fits_the_depth():
    assert bench.configurations("mlp", [2]) == [("ff_sequential", 1, 1, 1), ("ff_pipeline", 2, 1, 2),
                                                ("ff_pipeline", 1, 2, 2), ("bp", 1, 1, 1), ("ddp_bp", 1, 1, 2)]
    four = bench.configurations("cnn", [4])  # 3 blocks: no 4-stage pipeline
    assert [(s, r) for m, s, r, _ in four if m == "ff_pipeline"] == [(2, 2), (1, 4)]
    both = bench.configurations("deepcnn", [2, 4], every_shape=False)
    assert [c for c in both if c[0] in ("ff_sequential", "bp")] == [("ff_sequential", 1, 1, 1), ("bp", 1, 1, 1)]
    assert [(s, r, n) for m, s, r, n in both if m == "ff_pipeline"] == [(2, 1, 2), (4, 1, 4)]


def _rep(rate: float, train: int, peak: int, piped: bool) -> dict:
    rep = {"samples_per_s": rate, "train_memory_bytes": train, "peak_memory_bytes": peak,
           "comm_bytes_per_step": 4096 if piped else 0, "bottleneck_fraction": 0.96 if piped else None}
    if piped:
        rep.update({"idle_pct": [1.0, 30.0], "partition": [2, 2], "stage_train_memory_bytes": [train, train // 2]})
    return rep


def _rows(cores: int = 2, workers: tuple[int, ...] = (2,), models=("mlp", "deepcnn")) -> list[dict]:
    """Rows as measure_model builds them: FF 2 stages at 1.9x the sequential rate, DDP at 1.5x BP."""
    rows = []
    for model in models:
        base = {"mlp": 1000.0}.get(model, 100.0)
        specs = [("ff_sequential", 1, 1, 1, base), ("bp", 1, 1, 1, 2 * base)]
        specs += [spec for n in workers for spec in (("ff_pipeline", n, 1, n, 1.9 * base * n / 2),
                                                     ("ddp_bp", 1, 1, n, 3 * base * n / 2))]
        for method, stages, replicas, n, rate in specs:
            piped = method == "ff_pipeline"
            train = {"ff_pipeline": 50, "ddp_bp": 100}.get(method, 80) * MiB
            reps = [_rep(rate * f, train, train + 300 * MiB, piped) for f in (0.9, 1.0, 1.1)]
            rows.append(bench.make_row(model, model.upper(), method, stages, replicas, n, reps, cores))
    bench.relate(rows)
    for r in rows:
        if r["method"] == "ff_pipeline":
            r.update({"sim_predicted_samples_per_s": r["samples_per_s"] * 1.08, "sim_rel_error": 0.08,
                      "sim_limit": "stage 0 compute"})
    return rows


def test_rows_take_medians_and_relate_to_one_worker():
    rows = _rows()
    pipe = bench.find_row(rows, "mlp", "ff_pipeline", 2, stages=2)
    assert pipe["samples_per_s"] == pytest.approx(1900) and pipe["min_samples_per_s"] == pytest.approx(1710)
    assert pipe["speedup_vs_1_worker"] == pytest.approx(1.9) and pipe["utilisation"] == pytest.approx(0.95)
    assert pipe["ff_over_bp_throughput"] == pytest.approx(1900 / 3000)
    assert pipe["epoch_s"] == pytest.approx(6000 / 1900) and pipe["idle_pct"] == [1.0, 30.0]
    seq = bench.find_row(rows, "mlp", "ff_sequential", 1)
    assert seq["ff_over_bp_throughput"] == pytest.approx(0.5) and seq["bottleneck_fraction"] is None
    assert bench.find_row(rows, "mlp", "bp", 1)["ff_over_bp_throughput"] is None


def test_summary_fields_and_goals():
    s = bench.summary(_rows(models=("mlp", "deepcnn", "cnn14", "resnet17")))
    assert set(bench.SUMMARY_FIELDS) <= s.keys()
    assert s["ff_speedup_2w"] == pytest.approx(1.9) and s["bottleneck_fraction_2w"] == pytest.approx(0.96)
    assert s["ff_over_ddp_throughput_2w"] == pytest.approx(1900 / 3000)
    assert s["memory_ratio_ff_over_ddp"] == pytest.approx(0.5)  # training memory: 50 / 100 MiB
    assert s["memory_ratio_ff_over_ddp_rss"] == pytest.approx(350 / 400)
    assert s["sim_max_rel_error"] == pytest.approx(0.08)
    met = {k: g["met"] for k, g in s["goals"].items()}
    assert met == {"ff_speedup_2w": True, "bottleneck_fraction_2w": True, "ff_over_ddp_throughput_2w": False,
                   "memory_ratio_ff_over_ddp": True, "sim_max_rel_error": True,
                   "deep_ff_over_ddp_throughput_2w": False, "cnn14_ff_over_ddp_throughput_2w": False,
                   "deep_memory_ratio_ff_over_ddp": True, "deep_speedup_2w": True, "deep_bottleneck_fraction_2w": True,
                   "tta_ff_over_ddp": None,  # no time-to-accuracy run given
                   "cnn14_ff_step_over_bp_step": False, "deep_ff_step_over_bp_step": False}  # BP at 2x FF's rate
    assert s["deep_ff_over_ddp_throughput_2w"] == pytest.approx(190 / 300)
    assert s["deep_ff_step_over_bp_step"] == pytest.approx(2.0)  # FF-sequential 100/s, BP 200/s
    assert s["goals_met"] == 7


def test_summary_is_null_where_a_figure_was_not_measured():
    s = bench.summary(_rows(models=("mlp",), workers=(4,), cores=4))  # no deep CNN, no 2-worker rows at all
    assert [k for k in bench.SUMMARY_FIELDS if s[k] is not None] == ["sim_max_rel_error"]
    assert [k for k, g in s["goals"].items() if g["met"] is not None] == ["sim_max_rel_error"]
    assert s["goals_met"] == 1


def test_oversubscribed_rows_are_marked_in_every_table():
    rows = _rows(cores=2, workers=(2, 4))
    over = [r for r in rows if r["oversubscribed"]]
    assert {(r["method"], r["workers"]) for r in over} == {("ff_pipeline", 4), ("ddp_bp", 4)}
    assert "oversubscribed: 4 processes on 2 cores" in row_label(over[0], 2)
    assert "oversubscribed" not in row_label(rows[0], 2)
    text = markdown(_result(rows))
    for r in over:  # throughput and memory tables, plus simulator and idle tables for the pipeline
        lines = [ln for ln in text.splitlines() if f"| {r['label']}" in ln]
        assert len(lines) == (8 if r["method"] == "ff_pipeline" else 4)
        assert all("oversubscribed" in ln for ln in lines)


# -- pure: time to accuracy --------------------------------------------------------------------------------------
def test_time_to_accuracy_reports_first_epoch_and_not_reached(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "step": 60 * e, "train_s": 2.0, "val": {"linear": v}} for e, v in ((1, 0.6), (2, 0.76),
                                                                                                (3, 0.74))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "test"}\n')
    points = curve(run, "linear")
    assert [p["cum_train_s"] for p in points] == [2.0, 4.0, 6.0]
    assert reached(points, 0.75) == {"target": 0.75, "reached": True, "epoch": 2, "train_s": 4.0}
    assert reached(points, 0.8) == {"target": 0.8, "reached": False, "epoch": None, "train_s": None}
    bp_curve = [{"epoch": 1, "val": 0.77, "train_s": 3.0, "cum_train_s": 3.0}]
    methods = {"ff_pipeline": {"reached": [reached(points, 0.75)], "curve": points},
               "ddp_bp": {"reached": [{"target": 0.75, "reached": True, "epoch": 1, "train_s": 1.0}],
                          "curve": bp_curve}}
    summary = tta_summary(methods, 0.75)
    assert summary["ff_over_ddp_time"] == pytest.approx(4.0) and summary["same_train_s"] == 3.0
    assert summary["ff_pipeline_val_at_same_train_s"] == 0.6 and summary["ddp_bp_val_at_same_train_s"] == 0.77
    methods["ff_pipeline"]["reached"] = [reached(points, 0.8) | {"target": 0.75}]
    assert tta_summary(methods, 0.75)["ff_over_ddp_time"] is None


def test_keep_profile_is_what_the_simulator_reads_of_the_timed_epoch(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {type: linear, depth: 2, width: 8}\n")
    blocks = [{"index": i, "compute_s": 0.5 * (i + 1)} for i in range(2)]
    lines = [{"epoch": 1, "step": 10, "blocks": blocks}, {"epoch": 2, "step": 20, "blocks": blocks},
             {"epoch": 3, "step": 21, "blocks": [{"index": i, "compute_s": 9.0} for i in range(2)]},
             {"kind": "test"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    kept = bench.keep_profile(run, tmp_path / "profile")
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.jsonl"]
    times = times_from_run(kept, epoch=bench.TIMED_EPOCH)  # epoch 2's 10 steps, not epoch 3's single step
    assert [b.forward_s + b.update_s for b in times.blocks] == pytest.approx([0.05, 0.1])


# -- memory ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS high-water mark needs Linux /proc")
def test_memory_meter_counts_what_training_adds_not_the_runtime():
    meter = MemoryMeter(torch.device("cpu"))
    block = torch.ones(64 * MiB // 4)  # 64 MiB, every page touched
    got = meter.read()
    del block
    assert 60 * MiB <= got["train_memory_bytes"] < got["peak_memory_bytes"]
    assert got["peak_memory_bytes"] - got["train_memory_bytes"] > 100 * MiB  # the torch runtime, left out


# -- errors --------------------------------------------------------------------------------------------------------
BAD = [(["--models", "resnet"], "bad --models ['resnet']"), (["--workers", "1"], "--workers must be >= 2"),
       (["--workers", "two"], "comma-separated integers"), (["--repeats", "0"], "--repeats must be >= 1"),
       (["--quick", "--workers", "3"], "does not split into [3] workers"),
       (["--quick", "--tta", "--models", "cnn", "--workers", "8"], "time to accuracy")]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_arguments_are_one_error_line(argv, message, capsys):
    assert main(["bench", "throughput", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffpipe: error: ") and message in err and "Traceback" not in err


def test_the_cli_parses_bench_commands_without_importing_torch_or_the_lab():
    code = ("import sys; from ffpipe.cli import build_parser; "
            "a = build_parser().parse_args(['bench', 'throughput', '--quick', '--workers', '2,4', '--no-tta']); "
            "assert a.quick and a.workers == '2,4' and a.tta is False; "
            "print('torch' in sys.modules, any(m.startswith('ffpipe.lab') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"


def test_bench_report_only_claims_benchmark_dirs(tmp_path):
    assert bench_report(tmp_path) is False  # no results.json: a sweep dir, say
    (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
    assert bench_report(tmp_path) is False
    (tmp_path / "results.json").write_text(json.dumps({"benchmark": "latency"}))
    with pytest.raises(FFPipeError, match="unknown benchmark 'latency'"):
        bench_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(FFPipeError, match="cannot read"):
        bench_report(tmp_path)


def _result(rows: list[dict]) -> dict:
    """A complete result around `rows`, as run_benchmark writes it (no time to accuracy)."""
    return {"benchmark": "throughput", "quick": True, "wall_s": 60.0, "rows": rows, "tta": None,
            "machine": {"cpu": "test cpu", "cores": 2, "torch": "2", "device": "cpu"},
            "settings": {"workers": sorted({r["workers"] for r in rows if r["workers"] > 1}), "repeats": 3,
                         "timed_epoch": 2, "epoch_images": 6000, "threads_per_process": 1,
                         "models": {m: {"title": m, "width": 8, "batch": 100, "train_subset": None}
                                    for m in dict.fromkeys(r["model"] for r in rows)}},
            "summary": bench.summary(rows), "profiles": {}, "anchors": {"pff_all_layers_speedup": {"4": 3.75}}}


# -- the real quick run ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("throughput")
    return run_quick_benchmark("throughput.py", out, timeout=600), out


NOT_IN_QUICK = {"deep_ff_over_ddp_throughput_2w", "cnn14_ff_over_ddp_throughput_2w", "deep_memory_ratio_ff_over_ddp",
                "deep_speedup_2w", "deep_bottleneck_fraction_2w", "tta_ff_over_ddp", "cnn14_ff_step_over_bp_step",
                "deep_ff_step_over_bp_step"}


def test_quick_summary_has_every_field_as_a_number(quick):
    result, _ = quick
    assert result["benchmark"] == "throughput" and result["quick"] is True
    assert {"cpu", "cores", "torch", "device"} <= result["machine"].keys()
    summary = result["summary"]
    for key in NOT_IN_QUICK:  # their models (tinycnn, cnn14, resnet17) and the TTA run are not in --quick
        assert summary[key] is None and summary["goals"][key]["met"] is None, key
    for key in set(bench.SUMMARY_FIELDS) - NOT_IN_QUICK:
        assert isinstance(summary[key], float) and math.isfinite(summary[key]) and summary[key] >= 0, key
        assert key in ("memory_ratio_ff_over_ddp_rss",) or summary["goals"][key]["met"] in (True, False)
    assert 0 < summary["bottleneck_fraction_2w"] <= 1.5
    assert "median samples/s" in summary["sim_basis"]


def test_quick_rows_have_every_field_and_consistent_ratios(quick):
    result, _ = quick
    rows, cores = result["rows"], result["machine"]["cores"]
    assert [(r["model"], r["method"]) for r in rows] == [
        (m, k) for m in ("mlp", "cnn", "deepcnn") for k in ("ff_sequential", "ff_pipeline", "bp", "ddp_bp")]
    for r in rows:
        assert set(bench.ROW_FIELDS) <= r.keys(), set(bench.ROW_FIELDS) - r.keys()
        assert len(r["repetitions"]) == result["settings"]["repeats"] == 1
        assert r["min_samples_per_s"] <= r["samples_per_s"] <= r["max_samples_per_s"]
        assert r["epoch_s"] == pytest.approx(6000 / r["samples_per_s"])
        assert r["utilisation"] == pytest.approx(r["speedup_vs_1_worker"] / r["workers"])
        assert r["oversubscribed"] == (r["processes"] > cores)
        assert 0 < r["train_memory_bytes_per_worker"] < r["peak_memory_bytes_per_worker"]
        assert (r["comm_bytes_per_step_per_worker"] > 0) == (r["workers"] > 1)
        if r["method"] == "ff_pipeline":
            assert r["sim_predicted_samples_per_s"] > 0 and r["bottleneck_fraction"] > 0
            assert r["sim_rel_error"] == pytest.approx(abs(r["sim_predicted_samples_per_s"] - r["samples_per_s"])
                                                       / r["samples_per_s"])
            assert len(r["idle_pct"]) == r["stages"] and sum(r["partition"]) == bench.MODELS[r["model"]].depth
    worst = max(r["sim_rel_error"] for r in rows if r["method"] == "ff_pipeline")
    assert result["summary"]["sim_max_rel_error"] == worst
    for model, profile in result["profiles"].items():
        seconds = profile["block_compute_s_per_step"]
        assert len(seconds) == bench.MODELS[model].depth and min(seconds) > 0
        times = times_from_dict(profile["times"])  # a valid times file for `ffpipe bench simulate`
        assert [b.forward_s + b.update_s for b in times.blocks] == pytest.approx(seconds)


def test_report_regenerates_from_the_json_alone(quick):
    result, out = quick
    first = (out / "results.md").read_text()
    assert "## Goals" in first and "## Simulator vs measured" in first and "ff_pipeline 2 stage(s) x 1" in first
    for name in ("results.md", *PLOTS):
        (out / name).unlink()
    assert bench_report(out) is True
    assert (out / "results.md").read_text() == first
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
