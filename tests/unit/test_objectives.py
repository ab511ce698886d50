"""The goodness objectives: hand-computed values per family, one training step in the right direction."""

import math

import pytest
import torch

from ffpipe.config import LossConfig
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec, build_block
from ffpipe.ff.norm import rms_norm
from ffpipe.ff.objectives import make_objective, split_streams

LINEAR2 = BlockSpec(index=0, kind="linear", in_shape=(3,), out=2)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_hand_value_with_sum_goodness_and_threshold_units():
    obj = make_objective(LossConfig(family="bce"), LINEAR2, num_classes=10)
    assert obj.threshold == 2.0  # number of units
    y_pos = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # g = 5, 1
    y_neg = torch.tensor([[1.0, 0.0], [2.0, 1.0]])  # g = 1, 5
    loss, stats = obj.loss(y_pos, y_neg, None)
    expected = (softplus(2 - 5) + softplus(2 - 1) + softplus(1 - 2) + softplus(5 - 2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert obj.stat_names == ("loss", "g_pos", "g_neg", "acc_pos", "acc_neg", "acc_pair")
    assert stats.tolist() == pytest.approx([expected, 3.0, 3.0, 0.5, 0.5, 0.5], rel=1e-6)
    assert not stats.requires_grad and stats.dtype == torch.float32


def test_bce_mean_goodness_defaults_to_threshold_one_and_threshold_overrides():
    assert make_objective(LossConfig(goodness="mean"), LINEAR2, 10).threshold == 1.0
    obj = make_objective(LossConfig(goodness="mean", threshold=0.5), LINEAR2, 10)
    g = obj.goodness(torch.tensor([[1.0, 2.0]]))
    assert g.item() == 2.5
    loss, _ = obj.loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), None)
    assert loss.item() == pytest.approx((softplus(0.5 - 2.5) + softplus(0.5 - 0.5)) / 2, rel=1e-6)


def test_conv_goodness_sums_over_all_units():
    spec = BlockSpec(index=0, kind="conv", in_shape=(1, 3, 3), out=2)
    obj = make_objective(LossConfig(), spec, 10)
    assert obj.threshold == 18.0
    y = torch.arange(36.0).reshape(2, 2, 3, 3)
    assert torch.equal(obj.goodness(y), y.square().sum(dim=(1, 2, 3)))


def test_symba_hand_value():
    obj = make_objective(LossConfig(family="symba", alpha=0.5), LINEAR2, 10)
    y_pos = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # g = 5, 1
    y_neg = torch.tensor([[1.0, 0.0], [2.0, 1.0]])  # g = 1, 5
    loss, stats = obj.loss(y_pos, y_neg, None)
    expected = (softplus(-0.5 * (5 - 1)) + softplus(-0.5 * (1 - 5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert obj.stat_names == ("loss", "g_pos", "g_neg", "acc_pair")  # no threshold: no acc_pos / acc_neg
    assert stats.tolist() == pytest.approx([expected, 3.0, 3.0, 0.5], rel=1e-6)


def test_symba_with_two_negatives_is_the_softmax_over_the_three_labels():
    obj = make_objective(LossConfig(family="symba", alpha=0.5), LINEAR2, 10)
    y_pos = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # g = 5, 1
    y_neg = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # stream 1: g = 1, 5; stream 2: 0, 2
    loss, stats = obj.loss(y_pos, y_neg, None)
    image0 = -math.log(math.exp(2.5) / (math.exp(2.5) + math.exp(0.5) + math.exp(0.0)))
    image1 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(2.5) + math.exp(1.0)))
    assert loss.item() == pytest.approx((image0 + image1) / 2, rel=1e-6)
    assert stats[3].item() == pytest.approx(2 / 4)  # image 0 beats both negatives, image 1 neither


@pytest.mark.parametrize("family", ["bce", "symba", "hinge"])
def test_acc_pair_is_the_fraction_of_images_whose_positive_beats_its_own_negative(family):
    obj = make_objective(LossConfig(family=family), LINEAR2, 10)
    # g_pos = 5, 1, 4, 2 and g_neg = 1, 5, 4, 0: image 0 and 3 win, image 1 loses, image 2 ties (counts wrong)
    y_pos = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    y_neg = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    _, stats = obj.loss(y_pos, y_neg, None)
    assert dict(zip(obj.stat_names, stats.tolist()))["acc_pair"] == 0.5
    _, stats = obj.loss(y_pos[[0, 3, 1]], y_neg[[0, 3, 1]], None)
    assert dict(zip(obj.stat_names, stats.tolist()))["acc_pair"] == pytest.approx(2 / 3)


def test_hinge_hand_value():
    obj = make_objective(LossConfig(family="hinge", goodness="mean", margin=1.0, threshold=2.0), LINEAR2, 10)
    y_pos = torch.tensor([[1.0, 3.0], [1.0, 1.0]])  # g = 5, 1
    y_neg = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # g = 2, 4
    loss, _ = obj.loss(y_pos, y_neg, None)
    pos = (max(0, 1 - (5 - 2)) + max(0, 1 - (1 - 2))) / 2  # 0, 2
    neg = (max(0, 1 - (2 - 2)) + max(0, 1 - (2 - 4))) / 2  # 1, 3
    assert loss.item() == pytest.approx(0.5 * (pos + neg))


def test_group_ce_hand_value_and_class_scores():
    spec = BlockSpec(index=0, kind="linear", in_shape=(3,), out=4)
    obj = make_objective(LossConfig(family="group_ce"), spec, num_classes=2)
    assert not obj.needs_negatives
    y = torch.tensor([[1.0, 1.0, 0.0, 2.0], [3.0, 1.0, 1.0, 1.0]])  # G = [1, 2], [5, 1]
    scores = obj.class_scores(y)
    assert torch.equal(scores, torch.tensor([[1.0, 2.0], [5.0, 1.0]]))
    labels = torch.tensor([0, 0])
    loss, stats = obj.loss(y, None, labels)
    expected = (math.log(math.exp(1) + math.exp(2)) - 1 + math.log(math.exp(5) + math.exp(1)) - 5) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert obj.stat_names == ("loss", "g_true", "g_other", "acc")
    assert stats.tolist() == pytest.approx([expected, 3.0, 1.5, 0.5], rel=1e-6)


def test_group_ce_on_conv_groups_channels_and_mean_activation_option():
    spec = BlockSpec(index=0, kind="conv", in_shape=(1, 4, 4), out=6)
    y = torch.rand(5, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    obj = make_objective(LossConfig(family="group_ce"), spec, num_classes=3)
    scores = obj.class_scores(y)
    assert scores.shape == (5, 3)
    assert torch.allclose(scores[:, 1], y[:, 2:4].square().mean(dim=(1, 2, 3)))
    mean_obj = make_objective(LossConfig(family="group_ce", group_goodness="mean"), spec, num_classes=3)
    assert torch.allclose(mean_obj.class_scores(y)[:, 2], y[:, 4:].mean(dim=(1, 2, 3)))


def test_group_ce_needs_a_width_divisible_by_the_classes():
    with pytest.raises(FFPipeError, match="multiple of 10"):
        make_objective(LossConfig(family="group_ce"), LINEAR2, num_classes=10)


def test_class_scores_only_for_group_ce():
    with pytest.raises(TypeError):
        make_objective(LossConfig(), LINEAR2, 10).class_scores(torch.ones(1, 2))


def test_split_streams():
    t = torch.arange(12.0).reshape(6, 2)
    pos, neg, neutral = split_streams(t, 2, 3)
    assert torch.equal(neg, t[2:4]) and neutral.data_ptr() == t[4:].data_ptr()
    with pytest.raises(ValueError):
        split_streams(t, 4, 2)


def _stream_data(n: int, features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positives live on the first half of the features, negatives on the second; labels pick a half too."""
    g = torch.Generator().manual_seed(3)
    half = torch.arange(features) < features // 2
    pos = rms_norm(torch.rand(n, features, generator=g) * half)
    neg = rms_norm(torch.rand(n, features, generator=g) * ~half)
    labels = torch.randint(0, 2, (n,), generator=g)
    by_label = torch.where(labels[:, None] == 0, pos, neg)
    return pos, neg, labels, by_label


@pytest.mark.parametrize("cfg", [
    dict(family="bce"),
    dict(family="bce", goodness="mean", peer_weight=0.03),
    dict(family="symba", goodness="mean"),
    dict(family="hinge", goodness="mean", margin=5.0),
    dict(family="bce", significance=True),
], ids=["bce", "bce-mean-peer", "symba", "hinge", "bce-significance"])
def test_one_sgd_step_raises_positive_and_lowers_negative_goodness(cfg):
    spec = BlockSpec(index=0, kind="linear", in_shape=(12,), out=8)
    block = build_block(spec, seed=0)
    pos, neg, _, _ = _stream_data(16, 12)
    plain = make_objective(LossConfig(goodness=cfg.get("goodness", "sum")), spec, num_classes=2)
    with torch.no_grad():
        before = plain.goodness(block(pos)).mean(), plain.goodness(block(neg)).mean()
    # a threshold between the two streams' starting goodness, so neither side starts saturated
    obj = make_objective(LossConfig(**cfg, threshold=float(sum(before)) / 2), spec, num_classes=2)
    y_pos, y_neg = split_streams(block(torch.cat([pos, neg])), 16, 2)
    loss, _ = obj.loss(y_pos, y_neg, None)
    loss.backward()
    torch.optim.SGD(block.parameters(), lr=0.05).step()
    with torch.no_grad():
        after = plain.goodness(block(pos)).mean(), plain.goodness(block(neg)).mean()
    assert after[0] > before[0] and after[1] < before[1]


def test_one_sgd_step_raises_true_class_group_goodness():
    spec = BlockSpec(index=0, kind="linear", in_shape=(12,), out=8)
    block = build_block(spec, seed=0)
    obj = make_objective(LossConfig(family="group_ce"), spec, num_classes=2)
    _, _, labels, x = _stream_data(16, 12)
    mask = torch.nn.functional.one_hot(labels, 2).bool()
    with torch.no_grad():
        before = obj.class_scores(block(x))
    obj.loss(block(x), None, labels)[0].backward()
    torch.optim.SGD(block.parameters(), lr=0.5).step()
    with torch.no_grad():
        after = obj.class_scores(block(x))
    assert after[mask].mean() > before[mask].mean() and after[~mask].mean() < before[~mask].mean()


def test_symba_on_a_conv_block_with_fourier_labels_by_hand_and_one_step():
    """The default's objective on its kind of block: each image's positive goodness rises against its own
    negative's (the pair margin), which a threshold loss on summed conv goodness failed to do (issue 10)."""
    from ffpipe.ff.labels import make_encoder

    spec = BlockSpec(index=1, kind="conv", in_shape=(1, 12, 12), out=4, kernel=5)
    block = build_block(spec, seed=0)
    obj = make_objective(LossConfig(family="symba", alpha=1.0), spec, num_classes=10)
    enc = make_encoder("fourier", 10, (1, 12, 12), k=0.35)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 12, 12, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    y_neg = (y + torch.randint(1, 10, (8,), generator=g)) % 10
    inputs = rms_norm(torch.cat([enc.encode(x, y), enc.encode(x, y_neg)]))
    y_pos, y_neg_act = split_streams(block(inputs), 8, 2)
    loss, stats = obj.loss(y_pos, y_neg_act, None)
    g_pos, g_neg = (t.detach().square().sum(dim=(1, 2, 3)) for t in (y_pos, y_neg_act))
    expected = sum(softplus(-(p - n)) for p, n in zip(g_pos.tolist(), g_neg.tolist())) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats[3].item() == pytest.approx(float((g_pos > g_neg).float().mean()))
    loss.backward()
    torch.optim.SGD(block.parameters(), lr=1e-3).step()
    with torch.no_grad():
        after_pos, after_neg = (obj.goodness(t) for t in split_streams(block(inputs), 8, 2))
    assert (after_pos - after_neg).mean() > (g_pos - g_neg).mean()


def test_deeperforward_block_by_hand_and_one_adamw_step_lowers_its_loss():
    """A CWConv block (DeeperForward): a 1x1 conv without bias, ReLU, mean activation per class group, CE over
    the groups. Hand-set weights make the numbers checkable; one AdamW step must lower that same loss."""
    spec = BlockSpec(index=0, kind="conv", in_shape=(1, 2, 2), out=4, kernel=1, bias=False)
    block = build_block(spec, seed=0)
    with torch.no_grad():
        block.layer.weight.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5]).view(4, 1, 1, 1))
    x = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])  # one image, one channel
    obj = make_objective(LossConfig(family="group_ce", group_goodness="mean"), spec, num_classes=2)
    scores = obj.class_scores(block(x))
    # group 0 = channels 0, 1: relu(x) has mean 3/4, relu(-x) 1/4 -> 1/2; group 1: relu(2x) 6/4, relu(x/2) 3/8
    assert scores.tolist() == [[0.5, pytest.approx(0.9375)]]
    label = torch.tensor([0])
    loss = obj.loss(block(x), None, label)[0]
    assert loss.item() == pytest.approx(math.log(math.exp(0.5) + math.exp(0.9375)) - 0.5, rel=1e-6)
    loss.backward()
    torch.optim.AdamW(block.parameters(), lr=0.01, weight_decay=5e-4).step()
    with torch.no_grad():
        assert obj.loss(block(x), None, label)[0].item() < loss.item()
