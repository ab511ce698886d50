"""`ffpipe sweep --parallel 2`: every run is an `ffpipe train --resume` subprocess, two at a time."""

import json

from ffpipe.lab.analysis.grid import parse_axis
from ffpipe.lab.analysis.sweep import SweepPlan, _command, run_sweep

TINY = ["model.type=linear", "model.depth=2", "model.width=8", "data.batch_size=50",
        "data.labels.encoding=onehot", "head.readouts=[linear]", "train.progress=false", "train.max_steps=2"]


def test_subprocess_command_is_a_resumable_train(tmp_path):
    plan = SweepPlan(tmp_path, [parse_axis("model.width=8")], [3], config="cfg.yaml", overrides=["a.b=1"], stages=2)
    cmd = _command(plan, plan.points[0])
    assert cmd[1:5] == ["-m", "ffpipe.cli", "train", "--config"] and cmd[5].endswith("cfg.yaml")
    assert cmd[6:] == ["--set", "a.b=1", "--set", "model.width=8", "--set", "train.seed=3",
                       "--set", "pipeline.stages=2", "--out", str(tmp_path / "width=8-seed3"), "--resume"]


def test_parallel_sweep_trains_in_subprocesses(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    plan = SweepPlan(tmp_path / "sweep", [], [0, 1], overrides=TINY)
    outcomes = run_sweep(plan, parallel=2)
    assert [(o.name, o.status) for o in outcomes] == [("seed0", "trained"), ("seed1", "trained")]
    for seed in (0, 1):
        run = tmp_path / "sweep" / f"seed{seed}"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["kind"] == "test" and records[0]["step"] == 2
        assert "finished " in (run / "train.log").read_text()  # the subprocess's own output went to its log
    assert [o.status for o in run_sweep(plan, parallel=2)] == ["skipped", "skipped"]
