"""Layer dynamics (seed 003) on metrics.jsonl files written by hand with known per-layer curves."""

import json
import math

import numpy as np
import pytest
import yaml

from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.dynamics import analyze, correlation, first_reach, write_dynamics
from ffpipe.lab.analysis.runs import find_runs, grid_axes

pytest.importorskip("scipy")

EPOCHS = range(1, 9)


def write_run(path, config, records):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps(r) for r in records] + [json.dumps({"kind": "test", "step": 80, "test": {"linear": 0.9}})]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def ramp(e, layer):
    """Layer accuracy 0.5 + 0.125·(e − 2·layer), clipped to [0.5, 1]: reaches 0.75 at epoch 2 + 2·layer."""
    return min(1.0, max(0.5, 0.5 + 0.125 * (e - 2 * layer)))


def delay_sweep(root, depths=(3,), seeds=(0, 1), readout="linear"):
    """Per seed s, acc_pos = ramp − d_s and acc_neg = ramp + d_s: layer accuracy (their mean) is the ramp
    exactly, whatever the spread of acc_pos; the last layer is 0.125·s lower in seed s. Model accuracy
    0.5 + 0.03·e + 0.01·s."""
    for depth in depths:
        for s in seeds:
            d = 0.0625 * s
            records = [{"epoch": e, "step": 10 * e,
                        "blocks": [{"index": i, "acc_pos": ramp(e, i) - d - 0.125 * s * (i == depth - 1),
                                    "acc_neg": ramp(e, i) + d - 0.125 * s * (i == depth - 1)}
                                   for i in range(depth)],
                        "val": {readout: 0.5 + 0.03 * e + 0.01 * s}} for e in EPOCHS]
            write_run(root / f"depth={depth}-seed{s}", {"model": {"depth": depth}, "train": {"seed": s}}, records)


def test_first_reach():
    assert first_reach([1, 2, 3, 4], np.array([0.5, 0.69, 0.7, 0.9]), 0.7) == 3
    assert first_reach([1, 2], np.array([np.nan, 0.8]), 0.7) == 2
    assert first_reach([1, 2], np.array([0.1, 0.2]), 0.7) is None


def test_known_delays_and_std_bands(tmp_path):
    delay_sweep(tmp_path)
    runs = find_runs(tmp_path)
    result = analyze(runs, grid_axes(runs, tmp_path), target=0.75)
    (group,) = result["groups"]
    assert group["seeds"] == [0, 1] and group["epochs"] == list(EPOCHS)
    assert [layer["delay"] for layer in group["layers"]] == [2, 4, 7]  # last: mean = ramp − 0.0625
    assert group["layers"][1]["delay_per_seed"] == [4, 4]
    assert group["layers"][0]["mean"] == [ramp(e, 0) for e in EPOCHS]
    assert group["layers"][0]["std"] == [0.0] * 8  # acc_pos/acc_neg spread cancels in (TP + TN) / m
    # the last layer's seeds differ by 0.125: sample std 0.125/√2; seed 1 reaches 0.75 one epoch later
    assert group["layers"][2]["std"] == pytest.approx([0.125 / math.sqrt(2)] * 8)
    assert group["layers"][2]["delay_per_seed"] == [6, 7]
    assert group["model"]["mean"] == pytest.approx([0.505 + 0.03 * e for e in EPOCHS])


def test_known_correlations(tmp_path):
    """Layer 0 is a linear function of the model accuracy (r = rho = 1); layer 1 a decreasing one (−1);
    layer 2 a monotone nonlinear one (rho = 1, r from numpy's corrcoef); layer 3 is constant (undefined)."""
    model = {(s, e): 0.4 + 0.05 * e + 0.013 * s for s in (0, 1, 2) for e in EPOCHS}
    layers = [lambda m: 0.2 + 0.5 * m, lambda m: 1.2 - m, lambda m: 0.5 + m ** 6, lambda m: 0.75]
    for s in (0, 1, 2):
        records = [{"epoch": e, "blocks": [{"index": i, "acc_pos": f(model[s, e]), "acc_neg": f(model[s, e])}
                                           for i, f in enumerate(layers)],
                    "val": {"goodness": model[s, e]}} for e in EPOCHS]  # no linear readout: falls back
        write_run(tmp_path / f"seed{s}", {"train": {"seed": s}}, records)
    result, written = write_dynamics(tmp_path, target=0.7)
    (group,) = result["groups"]
    assert group["readout"] == "goodness" and group["label"] == "all runs"
    first, second, third, flat = group["layers"]
    assert first["pairs"] == 24  # 3 seeds × 8 epochs, as seed 003 pools (seed, epoch) pairs
    assert first["pearson"] == pytest.approx(1.0) and first["spearman"] == pytest.approx(1.0)
    assert second["pearson"] == pytest.approx(-1.0) and second["spearman"] == pytest.approx(-1.0)
    m = np.array([model[s, e] for s in (0, 1, 2) for e in EPOCHS])
    assert third["spearman"] == pytest.approx(1.0)
    assert third["pearson"] == pytest.approx(np.corrcoef(m, 0.5 + m ** 6)[0, 1]) and third["pearson"] < 0.999
    assert flat["pearson"] is None and flat["spearman"] is None
    assert {p.name for p in written} == {"dynamics.json", "layer_accuracy.png", "delay.png", "correlation.png"}
    saved = json.loads((tmp_path / "dynamics" / "dynamics.json").read_text())  # strict JSON: no NaN
    assert saved["groups"][0]["layers"][3]["pearson"] is None


def test_groups_by_configuration(tmp_path):
    delay_sweep(tmp_path, depths=(2, 3), seeds=(0, 1, 2))
    runs = find_runs(tmp_path)
    assert grid_axes(runs, tmp_path) == ["model.depth"]
    result = analyze(runs, ["model.depth"], target=0.75)
    assert [g["label"] for g in result["groups"]] == ["depth=2", "depth=3"]
    assert [len(g["layers"]) for g in result["groups"]] == [2, 3]
    assert all(g["seeds"] == [0, 1, 2] for g in result["groups"])
    # the last layer of each group is 0.125·s lower in seed s: its seed mean is ramp − 0.125
    assert [[layer["delay"] for layer in g["layers"]] for g in result["groups"]] == [[2, 5], [2, 4, 7]]


def test_too_few_pairs_or_a_constant_series_has_no_correlation():
    assert correlation(np.array([0.5, 0.6]), np.array([0.1, 0.2]))["pearson"] is None
    assert correlation(np.array([0.5, 0.6, np.nan, 0.7]), np.array([0.1, 0.2, 0.3, 0.3]))["pairs"] == 3


def test_layer_metric_picks_threshold_or_pair_accuracy():
    from ffpipe.lab.analysis.runs import layer_accuracy

    bce = {"acc_pos": 0.6, "acc_neg": 0.8, "acc_pair": 0.9}
    symba = {"acc_pair": 0.95}
    assert layer_accuracy(bce) == pytest.approx(0.7) and layer_accuracy(bce, "pair") == 0.9
    assert layer_accuracy(symba) == 0.95 and layer_accuracy(symba, "threshold") is None
    assert layer_accuracy({"acc": 0.4}) == 0.4  # group_ce's class accuracy
    with pytest.raises(FFPipeError, match="layer metric 'auc'"):
        layer_accuracy(bce, "auc")
