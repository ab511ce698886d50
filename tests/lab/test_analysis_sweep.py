"""`ffpipe sweep` in this process: run directories, aggregate files, skipping finished runs, resuming others."""

import csv
import json

import pytest
import torch

import ffpipe.lab.analysis.sweep as sweep_mod
from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.grid import parse_axis
from ffpipe.lab.analysis.sweep import SweepPlan, run_sweep
from ffpipe.run.checkpoint import latest_checkpoint, load_checkpoint
from ffpipe.run.sequential import train

TINY = ["model.type=linear", "model.depth=2", "model.width=8", "data.batch_size=50",
        "data.labels.encoding=onehot", "head.readouts=[linear]", "train.progress=false"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # no configs/default.yaml here: the sweep starts from the built-in defaults
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_calls(monkeypatch):
    """Count the sweep's calls of the real trainer."""
    calls = []

    def counting(cfg, out=None, resume=False):
        calls.append((out, resume))
        return train(cfg, out=out, resume=resume)

    monkeypatch.setattr(sweep_mod, "train", counting)
    return calls


def sets(*items):
    return [arg for item in TINY + list(items) for arg in ("--set", item)]


def test_sweep_trains_every_run_then_skips_them(tmp_path, train_calls, capsys, run_cli):
    out = tmp_path / "sweep"
    argv = ["sweep", "--grid", "model.width=8,16", "--seeds", "2", *sets("train.max_steps=2"), "--out", str(out)]
    assert run_cli(*argv) == 0
    names = ["width=8-seed0", "width=8-seed1", "width=16-seed0", "width=16-seed1"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    assert len(train_calls) == 4 and all(resume for _, resume in train_calls)
    for name in names:
        records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["kind"] == "test" and (out / name / "train.log").is_file()
    assert load_checkpoint(latest_checkpoint(out / "width=16-seed1"))[0]["config"]["train"]["seed"] == 1
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["model.width"], r["seeds"]) for r in rows] == [("8", "2"), ("16", "2")]
    assert 0.0 < float(rows[0]["test.linear.mean"]) <= 1.0 and rows[0]["test.linear.std"] != ""
    assert "## Test" in (out / "summary.md").read_text()
    assert (out / "lines_model.width.png").stat().st_size > 0
    assert json.loads((out / "sweep.json").read_text())["runs"] == names
    assert "4 trained, 0 already done, 0 failed" in capsys.readouterr().out

    mtimes = {name: (out / name / "metrics.jsonl").stat().st_mtime_ns for name in names}
    assert run_cli(*argv) == 0
    assert len(train_calls) == 4  # nothing retrained
    assert {name: (out / name / "metrics.jsonl").stat().st_mtime_ns for name in names} == mtimes
    assert "0 trained, 4 already done" in capsys.readouterr().out


def test_a_half_finished_run_resumes_from_its_checkpoint(tmp_path, train_calls):
    axes = [parse_axis("model.width=8")]
    short = SweepPlan(tmp_path / "sweep", axes, [0], overrides=TINY + ["train.max_steps=2"])
    run_sweep(short)
    run = short.run_dir(short.points[0])
    assert load_checkpoint(latest_checkpoint(run))[0]["step"] == 2

    full = SweepPlan(tmp_path / "sweep", axes, [0], overrides=TINY + ["train.max_steps=4"])
    assert [o.status for o in run_sweep(full)] == ["trained"]  # asked to train longer: it continues
    assert len(train_calls) == 2
    epoch = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "blocks" in r][-1]
    assert epoch["step"] == 4
    assert round(epoch["samples_per_s"] * epoch["train_s"]) == 2 * 50  # steps 3-4 only: resumed, not restarted
    straight = tmp_path / "straight"
    train(load_config(None, TINY + ["model.width=8", "train.seed=0", "train.max_steps=4"]), out=str(straight))
    resumed, fresh = load_checkpoint(latest_checkpoint(run))[1], load_checkpoint(latest_checkpoint(straight))[1]
    for i in fresh:
        for key, value in fresh[i]["block"].items():
            assert torch.equal(value, resumed[i]["block"][key]), (i, key)

    lines = (run / "metrics.jsonl").read_text().splitlines()  # an interruption before the test record
    (run / "metrics.jsonl").write_text("\n".join(line for line in lines if '"kind": "test"' not in line) + "\n")
    assert [o.status for o in run_sweep(full)] == ["trained"]
    assert len(train_calls) == 3
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"blocks"' in line for line in after) == sum('"blocks"' in line for line in lines)  # no step rerun
    assert '"kind": "test"' in after[-1]


def test_failed_runs_are_reported_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def broken(cfg, out=None, resume=False):
        if cfg.train.seed == 0:
            raise FFPipeError("non-finite loss in block 1")
        raise RuntimeError("a bug")

    monkeypatch.setattr(sweep_mod, "train", broken)
    plan = SweepPlan(tmp_path / "sweep", [], [0, 1], overrides=TINY)
    outcomes = run_sweep(plan)
    assert [(o.name, o.status) for o in outcomes] == [("seed0", "failed"), ("seed1", "failed")]
    assert outcomes[0].message == "non-finite loss in block 1"
    assert "RuntimeError: a bug" in outcomes[1].message
    assert "Traceback" in (tmp_path / "sweep" / "seed1" / "train.log").read_text()


def test_bad_grid_fails_before_training(tmp_path, train_calls):
    with pytest.raises(FFPipeError, match="run width=0-seed0: config model.width: must be > 0"):
        run_sweep(SweepPlan(tmp_path / "sweep", [parse_axis("model.width=8,0")], [0], overrides=TINY))
    assert train_calls == [] and not (tmp_path / "sweep").exists()
    with pytest.raises(FFPipeError, match="unknown key 'model.widht'"):
        run_sweep(SweepPlan(tmp_path / "sweep", [parse_axis("model.widht=8")], [0], overrides=TINY))
