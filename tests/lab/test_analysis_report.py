"""Grid parsing, run-directory reading and sweep aggregation, on run directories written by hand."""

import csv
import json
import math

import pytest
import yaml

from ffpipe.config import dump_config, load_config
from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.grid import Axis, expand, parse_axis, parse_seeds, short_keys
from ffpipe.lab.analysis.report import report, write_report
from ffpipe.lab.analysis.runs import find_runs, grid_axes, group_runs
from ffpipe.lab.analysis.sweep import run_state


def write_run(path, config, epochs, test=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps(r) for r in epochs] + ([json.dumps({"kind": "test", "step": 9, "test": test})] if test else [])
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def epoch(e, acc_pos=0.75, acc_neg=0.25, val=0.5):
    return {"epoch": e, "step": 10 * e, "train_s": 2.0, "wall_s": 3.0, "samples_per_s": 100.0,
            "blocks": [{"index": 0, "loss": 1.0, "acc_pos": acc_pos, "acc_neg": acc_neg}],
            "val": {"linear": val, "exit": [val], "n": 10}}


# 2 × 2 grid, 2 seeds; test accuracy = width/100 + kernel/1000 + seed/10 (so mean adds 0.05, std = 0.1/√2)
def make_sweep(root, unfinished=False):
    for width in (16, 32):
        for kernel in (3, 5):
            for seed in (0, 1):
                cfg = {"model": {"width": width, "kernel": kernel}, "train": {"seed": seed, "epochs": 2}}
                acc = width / 100 + kernel / 1000 + seed / 10
                done = not (unfinished and width == 32 and kernel == 5 and seed == 1)
                write_run(root / f"width={width}_kernel={kernel}-seed{seed}", cfg, [epoch(1), epoch(2, val=acc)],
                          {"linear": acc, "exit": [acc], "n": 10} if done else None)
    (root / "sweep.json").write_text(json.dumps({"axes": [{"key": "model.width"}, {"key": "model.kernel"}]}))


def test_parse_axis_reads_yaml_values():
    assert parse_axis("model.width=16,32,64").values == (16, 32, 64)
    assert parse_axis("pipeline.partition=[2,1],[1,2]").values == ([2, 1], [1, 2])
    assert parse_axis("optim.lr=1e-3,0.01").values == (0.001, 0.01)
    assert parse_axis("optim.schedule=constant,cosine").values == ("constant", "cosine")
    for bad in ("model.width", "model.width=", "train.seed=1,2", "model.width=16,16", "a={b: 1}"):
        with pytest.raises(FFPipeError):
            parse_axis(bad)


def test_seeds_and_run_names():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("1,7") == [1, 7]
    with pytest.raises(FFPipeError):
        parse_seeds("0")
    shorts = short_keys(["model.width", "optim.lr", "head.lr"])
    assert shorts == {"model.width": "width", "optim.lr": "optim.lr", "head.lr": "head.lr"}
    points = expand([Axis("model.width", (16, 32)), Axis("pipeline.partition", ([2, 1],))], [0, 1])
    names = [p.name(short_keys(["model.width", "pipeline.partition"])) for p in points]
    assert names == ["width=16_partition=2x1-seed0", "width=16_partition=2x1-seed1",
                     "width=32_partition=2x1-seed0", "width=32_partition=2x1-seed1"]
    assert points[0].overrides() == ["model.width=16", "pipeline.partition=[2, 1]", "train.seed=0"]
    assert load_config(None, ["model.depth=3"] + points[0].overrides()[:1]).model.width == 16


def test_axes_are_the_varying_keys_in_sweep_order(tmp_path):
    make_sweep(tmp_path)
    runs = find_runs(tmp_path)
    assert len(runs) == 8
    assert grid_axes(runs, tmp_path) == ["model.width", "model.kernel"]
    groups = group_runs(runs, grid_axes(runs, tmp_path))
    assert [g.values for g in groups] == [{"model.width": w, "model.kernel": k} for w in (16, 32) for k in (3, 5)]
    assert all([r.seed for r in g.runs] == [0, 1] for g in groups)


def test_final_metrics_of_a_run(tmp_path):
    make_sweep(tmp_path)
    metrics = find_runs(tmp_path / "width=16_kernel=3-seed1")[0].final_metrics()
    assert metrics["test.linear"] == pytest.approx(0.263)
    assert metrics["test.exit.1"] == pytest.approx(0.263)
    assert metrics["val.linear"] == pytest.approx(0.263)  # the last epoch's, not the first's 0.5
    assert metrics["block0.acc"] == 0.5  # seed 003 eq. 3: (TP + TN) / m = mean(acc_pos, acc_neg)
    assert metrics["train.train_s_total"] == 4.0 and metrics["train.step"] == 20
    assert "test.n" not in metrics


def test_summary_is_mean_and_std_over_seeds(tmp_path):
    make_sweep(tmp_path, unfinished=True)
    written = write_report(tmp_path)
    names = {p.name for p in written}
    assert {"summary.csv", "summary.md", "heatmap_test.linear.png", "lines_model.width.png",
            "lines_model.kernel.png"} <= names
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["model.width"], r["model.kernel"], r["seeds"]) for r in rows] == [
        ("16", "3", "2"), ("16", "5", "2"), ("32", "3", "2"), ("32", "5", "1")]
    first = rows[0]
    assert float(first["test.linear.mean"]) == pytest.approx(0.16 + 0.003 + 0.05)
    assert float(first["test.linear.std"]) == pytest.approx(0.1 / math.sqrt(2), rel=1e-5)
    assert float(rows[3]["test.linear.mean"]) == pytest.approx(0.325)  # the unfinished seed 1 is left out
    assert rows[3]["test.linear.std"] == ""  # one seed has no sample std
    md = (tmp_path / "summary.md").read_text()
    assert "| 16 | 3 | 2 | 0.213 ± 0.071 |" in md
    assert "Unfinished runs (not averaged)" in md and "width=32_kernel=5-seed1" in md


def test_report_of_a_single_run_prints_its_metrics(tmp_path):
    make_sweep(tmp_path)
    text, written = report(tmp_path / "width=32_kernel=5-seed0")
    assert written == []
    assert "finished" in text and "test.linear" in text and "0.325" in text


def test_report_of_an_empty_dir_is_one_error(tmp_path):
    with pytest.raises(FFPipeError, match="no run directories"):
        report(tmp_path)


def test_a_run_trained_with_another_config_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dump_config(load_config(None, ["train.max_steps=5", "train.device=auto"]), run / "config.yaml")
    assert run_state(run, load_config(None, ["train.max_steps=5"])) == "todo"  # no test record yet
    with pytest.raises(FFPipeError, match="optim.lr=0.001 but the sweep asks for 0.01"):
        run_state(run, load_config(None, ["train.max_steps=5", "optim.lr=0.01"]))
    (run / "metrics.jsonl").write_text('{"kind": "test", "test": {}}\n{"torn')
    assert run_state(run, load_config(None, ["train.max_steps=5"])) == "done"
    assert run_state(run, load_config(None, ["train.max_steps=9"])) == "todo"  # asked to train longer
    assert run_state(run, load_config(None, [])) == "todo"  # no step cap: all train.epochs
    with pytest.raises(FFPipeError, match="train.max_steps=5 but the sweep asks for 3"):
        run_state(run, load_config(None, ["train.max_steps=3"]))
