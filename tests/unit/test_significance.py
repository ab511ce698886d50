"""FGFF significance weights (seed 004 eq. 3): shapes, inference switch, and lr = 0 reproducing plain FF."""

import pytest
import torch

from ffpipe.config import LossConfig
from ffpipe.ff.blocks import BlockSpec, build_block
from ffpipe.ff.norm import rms_norm
from ffpipe.ff.objectives import make_objective, split_streams

LINEAR = BlockSpec(index=1, kind="linear", in_shape=(20,), out=16)
CONV = BlockSpec(index=1, kind="conv", in_shape=(2, 6, 6), out=4, pool=2)


def test_significance_is_off_by_default_and_shaped_per_unit_or_per_channel():
    assert make_objective(LossConfig(), LINEAR, 10).significance is None
    linear = make_objective(LossConfig(significance=True), LINEAR, 10)
    conv = make_objective(LossConfig(significance=True), CONV, 10)
    assert linear.significance.shape == (16,) and conv.significance.shape == (4, 1, 1)
    assert torch.equal(linear.significance, torch.ones(16))
    assert [p is conv.significance for p in conv.parameters()] == [True]


def test_significance_weights_the_squares_and_can_be_dropped_at_inference():
    y = torch.rand(3, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for keep in (True, False):
        obj = make_objective(LossConfig(significance=True, significance_at_inference=keep), CONV, 10)
        with torch.no_grad():
            obj.significance[2] = 3.0
        weighted = y.square().sum(dim=(1, 2, 3)) + 2 * y[:, 2].square().sum(dim=(1, 2))
        assert torch.allclose(obj.goodness(y), weighted)
        expected = weighted if keep else y.square().sum(dim=(1, 2, 3))
        assert torch.allclose(obj.goodness(y, inference=True), expected)


def test_unit_significance_is_bitwise_plain_goodness():
    y = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(1)).relu()
    plain = make_objective(LossConfig(goodness="mean"), CONV, 10)
    fgff = make_objective(LossConfig(goodness="mean", significance=True), CONV, 10)
    assert torch.equal(plain.goodness(y), fgff.goodness(y))


def _train(cfg: LossConfig, spec: BlockSpec, significance_lr: float, steps: int = 4):
    """A few Adam steps on fixed data; the significance weights get their own Adam (seed 004 §III-D)."""
    block = build_block(spec, seed=3)
    obj = make_objective(cfg, spec, num_classes=10)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    sig_opt = None if obj.significance is None else torch.optim.Adam([obj.significance], lr=significance_lr)
    g = torch.Generator().manual_seed(4)
    x = rms_norm(torch.rand(2 * 8, *spec.in_shape, generator=g))
    for _ in range(steps):
        y_pos, y_neg = split_streams(block(x), 8, 2)
        loss, _ = obj.loss(y_pos, y_neg, None)
        opt.zero_grad()
        if sig_opt is not None:
            sig_opt.zero_grad()
        loss.backward()
        opt.step()
        if sig_opt is not None:
            sig_opt.step()
    return block, obj


@pytest.mark.parametrize("spec", [LINEAR, CONV], ids=["linear", "conv"])
def test_significance_with_zero_lr_is_bitwise_plain_ff(spec):
    cfg = dict(family="bce", goodness="mean", peer_weight=0.03)
    plain, _ = _train(LossConfig(**cfg), spec, significance_lr=0.0)
    fgff, obj = _train(LossConfig(**cfg, significance=True), spec, significance_lr=0.0)
    assert torch.equal(obj.significance, torch.ones_like(obj.significance))
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, fgff.state_dict()[name]), name
    learned, learned_obj = _train(LossConfig(**cfg, significance=True), spec, significance_lr=1e-2)
    assert not torch.equal(learned_obj.significance, torch.ones_like(learned_obj.significance))
    assert not torch.equal(learned.layer.weight, plain.layer.weight)
