"""t-SNE of block activity (seed 004 Figs. 4-5) and its separation score; a clear line without scikit-learn."""

import json
import sys

import numpy as np
import pytest
import torch

from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.tsne import parse_layers
from ffpipe.run.sequential import train

MLP = ["model.type=linear", "model.depth=2", "model.width=16", "data.batch_size=50",
       "data.labels.encoding=onehot", "head.readouts=[linear]", "train.progress=false", "train.max_steps=3"]


def test_tsne_embeds_every_layer_and_scores_it(tmp_path, capsys, run_cli):
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, MLP), out=str(tmp_path / "run"))
        out = tmp_path / "tsne.png"
        assert run_cli("analyze", "tsne", "--checkpoint", str(tmp_path / "run"), "--layers", "input,all",
                       "--n", "60", "--out", str(out)) == 0
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads(out.with_suffix(".json").read_text())
    assert scores["n"] == 60 and scores["stream"] == "positive"
    assert [s["layer"] for s in scores["layers"]] == ["input", 0, 1]
    assert all(-1.0 <= s["silhouette"] <= 1.0 for s in scores["layers"])
    printed = capsys.readouterr().out
    assert "block 1: silhouette" in printed and "input: silhouette" in printed


def test_separation_score_of_clear_clusters():
    pytest.importorskip("sklearn")
    from ffpipe.lab.analysis.tsne import separation

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    apart = np.array([[0, 0], [10, 0], [0, 10]])[labels] + rng.normal(0, 0.1, (60, 2))
    mixed = rng.normal(0, 1, (60, 2))
    assert separation(apart, labels) > 0.9 > 0.1 > separation(mixed, labels)


def test_without_scikit_learn_one_clear_line(tmp_path, monkeypatch, run_cli):
    for name in [m for m in sys.modules if m.split(".")[0] == "sklearn"] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import sklearn...` now raises ImportError
    with pytest.raises(FFPipeError, match=r"scikit-learn, which is not installed: pip install 'ffpipe\[analysis\]'"):
        run_cli("analyze", "tsne", "--checkpoint", str(tmp_path))


def test_layer_lists():
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("input,2,all", 3) == ["input", 2, 0, 1]
    with pytest.raises(FFPipeError, match="block index 0..2"):
        parse_layers("3", 3)
