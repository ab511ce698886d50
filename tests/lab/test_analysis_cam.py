"""Class activation maps (seed 000 §3.3): the analytic map of a hand-built head, and a tiny trained CNN."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.lab.analysis.cam import check_cam_layers, class_activation_map, compute_cams, upsample_density
from ffpipe.lab.analysis.probe import load_probe
from ffpipe.run.sequential import load_checkpoint_model, train

CONV = ["model.type=conv", "model.depth=3", "model.width=4", "model.kernel=3", "model.pool=[0,0,2]",
        "data.batch_size=50", "head.readouts=[linear]", "train.progress=false", "train.max_steps=3"]


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("cam") / "run"
    train(load_config(None, CONV), out=str(run))
    yield run
    torch.set_num_threads(threads)


def test_cam_of_a_hand_built_head_is_the_analytic_map():
    torch.manual_seed(0)
    acts = torch.rand(2, 3, 4, 5)  # A: [N, K, H, W]
    head = nn.Linear(3 * 4 * 5, 6).requires_grad_(False)
    classes = torch.tensor([1, 4])
    cam = class_activation_map(acts, head.weight, classes)
    for n in range(2):
        for x in range(4):
            for y in range(5):  # Σ_k A_k(x, y) · W[c, k, x, y], the flattened index being k·20 + x·5 + y
                expected = sum(acts[n, k, x, y] * head.weight[classes[n], k * 20 + x * 5 + y] for k in range(3))
                assert cam[n, x, y] == pytest.approx(float(expected), abs=1e-6)
    # a head that reads only map k=2 at (1, 3) for class 4: the CAM is that one activation there, 0 elsewhere
    head.weight.zero_()
    head.weight[4, 2 * 20 + 1 * 5 + 3] = 2.0
    cam = class_activation_map(acts, head.weight, torch.tensor([4, 1]))
    expected = torch.zeros(4, 5)
    expected[1, 3] = 2.0 * acts[0, 2, 1, 3]
    assert torch.equal(cam[0], expected) and torch.equal(cam[1], torch.zeros(4, 5))
    # summed over positions, plus the bias, it is the logit the slice gives that class
    logits = head(acts.flatten(1))
    assert float(cam[0].sum() + head.bias[4]) == pytest.approx(float(logits[0, 4]), abs=1e-6)


def test_upsampling_keeps_a_maps_sum():
    cam = torch.randn(3, 7, 7)
    up = upsample_density(cam, (28, 28))
    assert up.shape == (3, 28, 28)
    assert torch.allclose(up.sum(dim=(1, 2)), cam.sum(dim=(1, 2)), atol=1e-4)


def test_cams_split_the_networks_own_logits(conv_run):
    probe = load_probe(conv_run)
    result = compute_cams(probe, "val", 6, label="true")
    assert result.layers == [1, 2] and result.per_layer[1].shape == (6, 28, 28)
    assert result.native[2].shape == (6, 14, 14)  # the pooled block, at its own resolution
    # the network's own forward (Stage.evaluate on the neutral stream) gives the same logits
    model, stages, _ = load_checkpoint_model(probe.checkpoint)
    packet = stages[0].evaluate(next(model.source().eval_packets(model.dataset.val, "plain")))
    assert torch.allclose(packet.logits[:6], result.logits, atol=1e-5)
    rows = torch.arange(6)
    bias = sum(probe.heads[i].bias for i in result.layers)[result.labels]
    per_image = result.total.sum(dim=(1, 2)) + bias
    assert torch.allclose(per_image, result.logits[rows, result.labels], atol=1e-4)
    predicted = compute_cams(probe, "val", 6, layers=[2], label="predicted")
    assert torch.equal(predicted.classes, result.logits.argmax(dim=1)) and predicted.layers == [2]


def test_cam_command_writes_the_picture(conv_run, tmp_path, capsys, run_cli):
    out = tmp_path / "cam.png"
    assert run_cli("analyze", "cam", "--checkpoint", str(conv_run), "--n", "3", "--layers", "1,2",
                   "--out", str(out)) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CAMs of 3 val images" in capsys.readouterr().out
    with pytest.raises(FFPipeError, match="block\\(s\\) 0 have no linear-head slice; blocks with one: 1, 2"):
        run_cli("analyze", "cam", "--checkpoint", str(conv_run), "--layers", "0")


def test_an_mlp_has_no_maps():
    mlp = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(type="linear")), heads={1: None})
    with pytest.raises(FFPipeError, match="CAMs need a conv model"):
        check_cam_layers(mlp, None)
