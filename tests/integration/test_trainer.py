"""The sequential trainer end to end: learning, run outputs, checkpoints, resume, resharding, eval, NaN."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.ff.head import select_range, with_selected_ranges
from ffpipe.ff.packet import PacketSource
from ffpipe.ff.stage import NonFiniteLoss
from ffpipe.run import loop
from ffpipe.run.checkpoint import latest_checkpoint, load_checkpoint
from ffpipe.run.records import read_records
from ffpipe.run.sequential import evaluate_checkpoint, train

ROOT = Path(__file__).resolve().parents[2]
MLP = ["model.type=linear", "model.depth=3", "model.width=64", "data.batch_size=50",
       "data.labels.encoding=onehot", "train.progress=false", "train.epochs=2"]


def weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))[1]


def assert_same_blocks(a, b):
    assert a.keys() == b.keys()
    for i in a:
        for part in ("block", "objective", "optim"):
            for key, value in a[i].get(part, {}).items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[i][part][key]), (i, part, key)


def test_run_writes_every_output(tmp_path):
    cfg = load_config(None, MLP + ["train.max_steps=40"])
    summary = train(cfg, out=str(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "confusion.json", "confusion.png", "curves.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch = records[0]
    assert epoch["step"] == 40 and len(epoch["blocks"]) == 3
    assert set(epoch["blocks"][0]) >= {"loss", "g_pos", "g_neg", "acc_pos", "acc_neg", "compute_s"}
    assert set(epoch["val"]) >= {"linear", "goodness", "exit", "infer_ms_per_image"}
    assert records[-1]["kind"] == "test" and summary["test"]["n"] == 1000


def test_the_block_range_is_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """THE loop hands the range selection the last epoch's validation readouts, as its record holds them, and
    applies the choice to the test readouts: a range chosen on test would be tuned to the numbers it reports."""
    seen = []

    def spy(test, val):
        seen.append((test, val))
        return with_selected_ranges(test, val)

    monkeypatch.setattr(loop, "with_selected_ranges", spy)
    summary = train(load_config(None, MLP + ["train.max_steps=40"]), out=str(tmp_path / "run"))
    (test, val), = seen
    epochs = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert val == epochs[-1]["val"] and test != val
    assert summary["test"]["goodness_selected_range"] == list(select_range(val["goodness_ranges"]))


@pytest.mark.parametrize("stop", [120, 50])
def test_resume_is_bit_identical(tmp_path, stop):
    """2 epochs straight == stop (at the epoch end, 120 steps, or mid-epoch) + resume + the rest."""
    straight = tmp_path / "straight"
    train(load_config(None, MLP), out=str(straight))
    split = tmp_path / "split"
    train(load_config(None, MLP + [f"train.max_steps={stop}"]), out=str(split))
    assert load_checkpoint(latest_checkpoint(split))[0]["step"] == stop
    train(load_config(None, MLP), out=str(split), resume=True)
    assert_same_blocks(weights(straight), weights(split))
    assert load_checkpoint(latest_checkpoint(split))[0]["step"] == 240


def test_checkpoint_loads_into_another_partition(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, MLP + ["pipeline.stages=3", "train.max_steps=120", "train.epochs=1"]), out=str(run))
    meta, blocks = load_checkpoint(latest_checkpoint(run))
    assert sorted(blocks) == [0, 1, 2] and len(list(latest_checkpoint(run).glob("blocks-*.pt"))) == 3
    result = evaluate_checkpoint(str(run), split="val")
    assert set(result["accuracy"]) == {"linear", "goodness"} and result["n"] == 1000


def test_wrong_architecture_is_refused(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, MLP + ["train.max_steps=10", "train.epochs=1"]), out=str(run))
    with pytest.raises(FFPipeError, match="different architecture: model.width"):
        train(load_config(None, MLP + ["model.width=32"]), out=str(run), resume=True)


def test_nan_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = PacketSource.train_packets

    def poisoned(self, epoch, start_step=0):
        for packet in original(self, epoch, start_step):
            if packet.step == 124:
                packet.x[:] = float("nan")
            yield packet

    monkeypatch.setattr(PacketSource, "train_packets", poisoned)
    with pytest.raises(NonFiniteLoss, match="non-finite loss in block 0 at step 124"):
        train(load_config(None, MLP), out=str(run))
    assert load_checkpoint(latest_checkpoint(run))[0]["epoch"] == 1
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "error"


def test_eval_cli_prints_one_json_object(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, MLP + ["train.max_steps=20", "train.epochs=1"]), out=str(run))
    out = subprocess.run([sys.executable, "-m", "ffpipe.cli", "eval", "--checkpoint", str(run), "--json",
                          "--readout", "linear"], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)
    assert result["split"] == "test" and set(result["accuracy"]) == {"linear"} and result["n"] == 1000
