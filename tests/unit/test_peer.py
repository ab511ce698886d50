"""Peer normalization (loeweX; seed 003 Table 1): running mean buffer and the added loss term."""

import pytest
import torch

from ffpipe.config import LossConfig
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.objectives import PeerNormalization, make_objective

LINEAR3 = BlockSpec(index=0, kind="linear", in_shape=(2,), out=3)


def test_running_mean_follows_the_positive_stream_with_momentum():
    peer = PeerNormalization(3, momentum=0.9)
    first = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # batch mean [2, 2, 2]
    peer(first)
    assert torch.allclose(peer.running_mean, torch.tensor([0.2, 0.2, 0.2]))
    second = torch.tensor([[0.0, 0.0, 6.0]])
    loss = peer(second)
    running = torch.tensor([0.18, 0.18, 0.78])
    assert torch.allclose(peer.running_mean, running)
    assert loss.item() == pytest.approx((running.mean() - running).square().mean().item(), rel=1e-6)


def test_running_mean_is_per_channel_for_conv_and_frozen_in_eval_mode():
    peer = PeerNormalization(2, momentum=0.5)
    y = torch.zeros(4, 2, 3, 3)
    y[:, 1] = 2.0
    peer(y)
    assert torch.equal(peer.running_mean, torch.tensor([0.0, 1.0]))
    peer.eval()
    peer(torch.full((4, 2, 3, 3), 10.0))
    assert torch.equal(peer.running_mean, torch.tensor([0.0, 1.0]))


def test_peer_term_is_added_with_its_weight_and_kept_in_the_state_dict():
    y_pos = torch.tensor([[1.0, 0.0, 2.0]])
    y_neg = torch.tensor([[0.0, 1.0, 0.0]])
    plain = make_objective(LossConfig(), LINEAR3, 10)
    peer = make_objective(LossConfig(peer_weight=0.5, peer_momentum=0.0), LINEAR3, 10)
    base, _ = plain.loss(y_pos, y_neg, None)
    total, stats = peer.loss(y_pos, y_neg, None)
    # momentum 0: the running mean is the batch mean [1, 0, 2]; its variance over units is 2/3
    assert total.item() == pytest.approx(base.item() + 0.5 * 2 / 3, rel=1e-6)
    assert stats[0].item() == pytest.approx(total.item())
    assert torch.equal(peer.state_dict()["peer.running_mean"], torch.tensor([1.0, 0.0, 2.0]))
    assert plain.peer is None and "peer.running_mean" not in plain.state_dict()


def test_peer_gradient_reaches_only_through_the_current_batch():
    peer = PeerNormalization(2, momentum=0.9)
    peer(torch.tensor([[4.0, 0.0]]))
    y = torch.tensor([[1.0, 1.0]], requires_grad=True)
    peer(y).backward()
    # r = 0.9 [0.4, 0] + 0.1 [1, 1] = [0.46, 0.1]; dL/dr_j = r_j - mean(r) = [0.18, -0.18]; times (1 - m)
    assert torch.allclose(y.grad, torch.tensor([[0.018, -0.018]]))


def test_peer_momentum_outside_unit_interval_is_a_config_error():
    with pytest.raises(FFPipeError, match="peer_momentum"):
        make_objective(LossConfig(peer_weight=0.03, peer_momentum=1.0), LINEAR3, 10)
