"""The between-block normalization (seed 000 eq. 2) and its per-class-group variant."""

import pytest
import torch

from ffpipe.config import ModelConfig
from ffpipe.errors import FFPipeError
from ffpipe.ff.norm import between_blocks, group_rms_norm, network_input, rms_norm


def _activity(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # channels on very different scales, so a per-channel norm and a per-sample norm give different results
    scale = torch.logspace(-1, 1, shape[1], dtype=torch.float64).reshape(1, -1, *([1] * (len(shape) - 2)))
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * scale).float()


def test_rms_norm_is_over_all_units_of_a_conv_sample():
    x = _activity(4, 3, 5, 6)
    y = rms_norm(x)
    assert torch.allclose(y.square().mean(dim=(1, 2, 3)), torch.ones(4), atol=1e-6)
    per_channel = y.square().mean(dim=(2, 3))
    assert not torch.allclose(per_channel, torch.ones_like(per_channel), atol=1e-2)
    expected = x / torch.sqrt(x.square().sum(dim=(1, 2, 3), keepdim=True) / (3 * 5 * 6) + 1e-8)
    assert torch.allclose(y, expected, rtol=1e-6)


def test_rms_norm_removes_the_length_and_keeps_the_direction():
    x = _activity(2, 7)
    assert torch.allclose(rms_norm(5.0 * x), rms_norm(x), rtol=1e-6)
    cos = torch.nn.functional.cosine_similarity(rms_norm(x), x, dim=1)
    assert torch.allclose(cos, torch.ones(2), atol=1e-6)


def test_rms_norm_of_a_dead_layer_is_finite_with_finite_gradient():
    x = torch.zeros(2, 4, requires_grad=True)
    y = rms_norm(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(2, 4))
    assert torch.isfinite(x.grad).all()


def test_group_rms_norm_normalizes_each_contiguous_channel_group():
    x = _activity(3, 6, 4, 4)
    y = group_rms_norm(x, groups=3)
    groups = y.reshape(3, 3, 2, 4, 4)  # [N, group, channel in group, H, W]
    assert torch.allclose(groups.square().mean(dim=(2, 3, 4)), torch.ones(3, 3), atol=1e-6)
    first = x[:, :2]
    expected = first / torch.sqrt(first.square().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
    assert torch.allclose(y[:, :2], expected)


def test_group_rms_norm_with_one_group_is_rms_norm_and_works_for_linear():
    x = _activity(2, 8)
    assert torch.allclose(group_rms_norm(x, groups=1), rms_norm(x))
    y = group_rms_norm(x, groups=4)
    assert torch.allclose(y.reshape(2, 4, 2).square().mean(dim=-1), torch.ones(2, 4), atol=1e-6)


def test_group_rms_norm_rejects_an_uneven_split():
    with pytest.raises(FFPipeError, match="divisible by 4"):
        group_rms_norm(torch.ones(2, 6), groups=4)


def test_between_blocks_picks_the_configured_normalization():
    x = _activity(2, 6, 3, 3)
    assert torch.equal(between_blocks(ModelConfig(norm="rms"), 3)(x), rms_norm(x))
    assert torch.equal(between_blocks(ModelConfig(norm="group_rms"), 3)(x), group_rms_norm(x, 3))
    # DeeperForward's CWConv: per sample and class group, zero mean and unit variance, no affine
    grouped = between_blocks(ModelConfig(norm="group"), 3)(x).reshape(2, 3, -1)
    assert torch.allclose(grouped.mean(dim=-1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(grouped.var(dim=-1, unbiased=False), torch.ones(2, 3), atol=1e-3)
    with pytest.raises(FFPipeError, match="model.norm"):
        between_blocks(ModelConfig(norm="layer"), 3)


def test_group_norm_by_hand_and_the_layer_norm_input():
    """DeeperForward: GroupNorm with one group per class, no affine, between blocks; LayerNorm over (C, H, W)
    on the network input. Two channels per group, one pixel each, so every value is checkable by hand."""
    x = torch.tensor([[1.0, 3.0, 0.0, 4.0]]).view(1, 4, 1, 1)  # groups {1, 3} and {0, 4}
    y = between_blocks(ModelConfig(norm="group", eps=1e-8), 2)(x).flatten()
    assert y.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-6)  # (v - mean) / std, std 1 and 2
    image = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])  # mean 3, variance 5
    normed = network_input(ModelConfig(input_norm="layer", eps=1e-8))(image).flatten()
    assert normed.tolist() == pytest.approx([v / 5 ** 0.5 for v in (-3.0, -1.0, 1.0, 3.0)], rel=1e-6)
