"""head.ema_decay: the linear readout reads a debiased moving average of each slice's weights, while the slice
itself trains on its own weights; the average survives a checkpoint; decay 0 means no average at all."""

from __future__ import annotations

import torch

from ffpipe.config import load_config
from ffpipe.ff.head import HeadSlices


def slices(decay: float) -> HeadSlices:
    cfg = load_config(None, [f"head.ema_decay={decay}", "head.optimizer=sgd", "head.lr=0.5", "head.momentum=0"])
    return HeadSlices(cfg.head, cfg.train.seed, {0: 6}, 3, torch.device("cpu"))


def train(head: HeadSlices, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` SGD steps of slice 0; the slice's (weight, bias) after each."""
    gen, seen = torch.Generator().manual_seed(0), []
    for step in range(steps):
        feats, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        head.zero_grad()
        torch.nn.functional.cross_entropy(head.train_logits(step, 0, feats), y).backward()
        head.step()
        seen.append((head.slices[0].weight.detach().clone(), head.slices[0].bias.detach().clone()))
    return seen


def test_readout_uses_the_debiased_average_of_the_slice_weights():
    decay, head = 0.9, slices(0.9)
    feats = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    before = head.readout_logits(0, feats)
    assert torch.equal(before, head.slices[0](feats))  # no step yet: the slice itself
    seen = train(head, 4)
    weights = [(1 - decay) * decay ** (3 - t) for t in range(4)]
    w = sum(c * s[0] for c, s in zip(weights, seen)) / (1 - decay ** 4)
    b = sum(c * s[1] for c, s in zip(weights, seen)) / (1 - decay ** 4)
    torch.testing.assert_close(head.readout_logits(0, feats), feats @ w.T + b)
    assert not torch.allclose(head.readout_logits(0, feats), head.slices[0](feats))  # not the live weights


def test_decay_zero_reads_the_live_slice_and_keeps_no_average():
    head = slices(0.0)
    train(head, 3)
    feats = torch.randn(5, 6)
    assert head.averages == {} and "head_average" not in head.state(0)
    assert torch.equal(head.readout_logits(0, feats), head.slices[0](feats))


def test_the_average_round_trips_through_a_checkpoint_entry():
    head, fresh = slices(0.9), slices(0.9)
    train(head, 3)
    fresh.load_state(0, head.state(0))
    feats = torch.randn(5, 6)
    assert torch.equal(fresh.readout_logits(0, feats), head.readout_logits(0, feats))
    assert int(fresh.averages[0].steps) == 3
