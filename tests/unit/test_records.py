import json
import math
from io import StringIO

import pytest
import torch
from rich.console import Console

from ffpipe.errors import FFPipeError
from ffpipe.ff.head import confusion_matrix
from ffpipe.run.console import TrainView
from ffpipe.run.plots import plot_confusion, plot_curves, save_confusion
from ffpipe.run.records import MetricsLog, read_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(epoch: int, num_blocks: int = 3, val: bool = True) -> dict:
    rec = {
        "epoch": epoch,
        "step": 500 * epoch,
        "lr": 1e-3,
        "wall_s": 12.3,
        "train_s": 10.1,
        "samples_per_s": 4950.0,
        "blocks": [
            {
                "index": i,
                "loss": 0.7 / (epoch + i),
                "g_pos": 1.0 + 0.1 * epoch,
                "g_neg": 0.9 - 0.05 * epoch,
                "acc_pos": 0.6 + 0.03 * epoch + 0.01 * i,
                "acc_neg": 0.55 + 0.03 * epoch,
                "compute_s": 3.2,
                "samples_per_s": 15000.0,
            }
            for i in range(num_blocks)
        ],
    }
    if val:
        rec["val"] = {
            "linear": 0.8 + 0.01 * epoch,
            "goodness": 0.78 + 0.012 * epoch,
            "exit": [None, 0.7 + 0.01 * epoch, 0.75 + 0.01 * epoch],
            "infer_ms_per_image": {"linear": 0.02, "goodness": 0.1},
            "n": 5000,
        }
    return rec


def _test_record() -> dict:
    test = {"linear": 0.86, "goodness": 0.87, "exit": [None, 0.76, 0.81]}
    return {"kind": "test", "step": 2500, "test": test}


def test_metrics_log_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path)
    records = [_record(1), _record(2, val=False), _test_record()]
    for r in records:
        log.write(r)
    assert path.read_text().count("\n") == 3
    assert read_records(path) == records


def test_each_write_is_on_disk_before_the_next(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(_record(1))
    assert json.loads(path.read_text()) == _record(1)


def test_torn_last_line_is_cut_when_the_log_is_reopened(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).write(_record(1))
    with open(path, "a") as f:
        f.write('{"epoch": 2, "st')  # the process died mid-write
    MetricsLog(path).write(_record(2))
    assert [r["epoch"] for r in read_records(path)] == [1, 2]


def test_resumed_epochs_replace_the_abandoned_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for epoch in (1, 2, 3):
        log.write(_record(epoch))
    rerun = _record(3)
    rerun["lr"] = 0.5
    log.write(rerun)
    log.write(_record(4))
    got = read_records(path)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4]
    assert got[2]["lr"] == 0.5


def test_read_records_errors_are_one_line(tmp_path):
    with pytest.raises(FFPipeError, match="cannot read metrics"):
        read_records(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(FFPipeError, match=r"bad.jsonl:2: not a JSON record"):
        read_records(bad)


def test_nan_loss_survives_the_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rec = _record(1)
    rec["blocks"][0]["loss"] = float("nan")
    MetricsLog(path).write(rec)
    assert math.isnan(read_records(path)[0]["blocks"][0]["loss"])


def test_confusion_matrix_values():
    y_true = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 2, 2, 2, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    assert int(cm.sum()) == 9 and cm.sum(dim=1).tolist() == [2, 3, 4, 0]


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


def test_plot_curves_writes_a_png(tmp_path):
    records = [_record(e) for e in range(1, 6)] + [_test_record()]
    out = plot_curves(records, tmp_path / "curves.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_curves_without_val_and_without_records(tmp_path):
    records = [_record(e, val=False) for e in (1, 2)]
    records[0]["blocks"][1]["loss"] = None  # a block with no loss of its own this epoch
    out = plot_curves(records, tmp_path / "c.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(FFPipeError, match="no epoch records"):
        plot_curves([_test_record()], tmp_path / "none.png")


def test_confusion_png_and_json(tmp_path):
    torch.manual_seed(0)
    y = torch.randint(0, 10, (500,))
    pred = torch.where(torch.rand(500) < 0.8, y, torch.randint(0, 10, (500,)))
    cm = confusion_matrix(y, pred, 10)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    names += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    save_confusion(cm, names, tmp_path / "cm.json", tmp_path / "cm.png")
    doc = json.loads((tmp_path / "cm.json").read_text())
    assert doc["class_names"] == names and doc["matrix"] == cm.tolist()
    assert (tmp_path / "cm.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="does not fit 3 names"):
        plot_confusion(cm, names[:3], tmp_path / "bad.png")


def _console() -> tuple[Console, StringIO]:
    buf = StringIO()
    return Console(file=buf, width=120, color_system=None), buf


def test_train_view_non_tty_prints_only_summaries():
    console, buf = _console()
    with TrainView(total_steps=100, epochs=5, console=console) as view:
        assert not view.live
        for step in range(1, 51):
            view.update(step, 1, loss=0.5, acc=0.7, samples_per_s=1234.0)
        assert buf.getvalue() == ""
        view.epoch_summary(_record(1))
    out = buf.getvalue()
    assert "epoch 1/5" in out and "samples/s" in out
    for i in range(3):
        assert f"│     {i} │" in out
    assert "0.7000" in out and "val: linear 0.8100" in out and "exit [-, 0.7100, 0.7600]" in out
    assert "n 5000" in out and "ms/img linear 0.020" in out


def test_train_view_disabled_still_prints_summary_and_test_table():
    console, buf = _console()
    view = TrainView(total_steps=10, epochs=2, enabled=False, console=console)
    with view:
        view.update(5, 1, 0.1, 0.9, 100.0)
        view.epoch_summary(_record(2, num_blocks=2, val=False))
        view.epoch_summary(_test_record())
    out = buf.getvalue()
    assert "epoch 2/2" in out and "val:" not in out
    assert "test: linear 0.8600" in out


def test_train_view_live_on_a_terminal_draws_the_bar():
    buf = StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system=None)
    with TrainView(total_steps=10, epochs=2, console=console) as view:
        assert view.live
        view.update(4, 1, loss=0.25, acc=0.875, samples_per_s=4321.0)
        view.epoch_summary(_record(1))
    out = buf.getvalue()
    assert "loss 0.2500" in out and "acc 0.8750" in out and "4,321 samples/s" in out
    assert "epoch 1/2" in out


def test_curve_series_are_accuracies_only():
    from ffpipe.run.plots import _readout_series

    series = _readout_series([_record(1), _record(2)], "val")
    assert sorted(series) == ["exit 2", "goodness", "linear"]  # the last exit is the linear head itself
    assert series["exit 2"] == ([1, 2], [pytest.approx(0.71), pytest.approx(0.72)])


def test_a_finished_run_ends_with_a_sentence():
    from ffpipe.run.console import final_line

    line = final_line("runs/x", 800, {"linear": 0.845, "goodness": 0.778, "n": 1000, "exit": [None, 0.845]})
    assert line == "finished runs/x after 800 steps; test accuracy: goodness readout 77.8%, linear head 84.5%"
