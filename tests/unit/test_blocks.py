"""FF blocks: shapes, FLOPs, activations, init rules and seeding."""

import math

import pytest
import torch

from ffpipe.config import ModelConfig
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec, FFBlock, block_specs, build_block, build_blocks, dropout_mask, relu_fullgrad


def test_relu_fullgrad_is_relu_forward_and_identity_backward():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0])
    y = relu_fullgrad(z)
    assert torch.equal(y, torch.relu(z.detach()))
    y.backward(upstream)
    assert torch.equal(z.grad, upstream)
    z_plain = z.detach().clone().requires_grad_()
    torch.relu(z_plain).backward(upstream)
    assert torch.equal(z_plain.grad, torch.tensor([0.0, 0.0, 0.0, -4.0, 5.0]))


def test_fullgrad_block_passes_gradient_to_dead_units():
    spec = BlockSpec(index=0, kind="linear", in_shape=(4,), out=3, activation="relu_fullgrad")
    block = build_block(spec, seed=0)
    with torch.no_grad():
        block.layer.bias.fill_(-100.0)  # every unit dead
    block(torch.randn(5, 4)).sum().backward()
    assert torch.equal(block.layer.bias.grad, torch.full((3,), 5.0))


def test_loewe_init_statistics_linear_and_conv():
    linear = build_block(BlockSpec(index=0, kind="linear", in_shape=(400,), out=500, init="loewe"), seed=1)
    w = linear.layer.weight
    assert abs(w.mean().item()) < 3e-3
    assert w.std().item() == pytest.approx(1 / math.sqrt(500), rel=0.02)
    assert torch.equal(linear.layer.bias, torch.zeros(500))
    conv_spec = BlockSpec(index=1, kind="conv", in_shape=(32, 8, 8), out=64, kernel=5, init="loewe")
    conv = build_block(conv_spec, seed=1)
    assert conv.layer.weight.std().item() == pytest.approx(1 / math.sqrt(64 * 25), rel=0.02)
    assert torch.equal(conv.layer.bias, torch.zeros(64))


def test_default_init_is_pytorchs():
    block = build_block(BlockSpec(index=0, kind="linear", in_shape=(400,), out=500), seed=1)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) and the bias both draw from U(-bound, bound)
    assert block.layer.weight.abs().max().item() <= bound
    assert block.layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert block.layer.bias.abs().max().item() > 0


def _mlp_specs(depth: int) -> list[BlockSpec]:
    return block_specs(ModelConfig(type="linear", depth=depth, width=[50, 40, 30, 20][:depth]), (1, 6, 6))


def test_seeded_init_depends_only_on_seed_and_index():
    four = build_blocks(_mlp_specs(4), seed=7)
    torch.manual_seed(123)  # other global random state must not matter
    alone = build_block(_mlp_specs(4)[2], seed=7)
    for name, tensor in four[2].state_dict().items():
        assert torch.equal(tensor, alone.state_dict()[name]), name
    other_seed = build_block(_mlp_specs(4)[2], seed=8)
    assert not torch.equal(other_seed.layer.weight, alone.layer.weight)


def test_building_a_block_leaves_the_global_generator_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_block(_mlp_specs(1)[0], seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_block_specs_chain_an_mlp():
    specs = _mlp_specs(3)
    assert [s.in_shape for s in specs] == [(1, 6, 6), (50,), (40,)]
    assert [s.out_shape for s in specs] == [(50,), (40,), (30,)]
    assert [s.index for s in specs] == [0, 1, 2]
    assert specs[0].flops() == 2 * 36 * 50
    assert build_block(specs[0], 0)(torch.randn(2, 1, 6, 6)).shape == (2, 50)


def test_block_specs_chain_a_cnn_with_pooling_and_valid_padding():
    cfg = ModelConfig(type="conv", depth=3, width=[8, 16, 12], kernel=[5, 3, 3], pool=[0, 2, 2],
                      padding="valid", batchnorm=True)
    specs = block_specs(cfg, (1, 28, 28))
    assert [s.out_shape for s in specs] == [(8, 24, 24), (16, 11, 11), (12, 4, 4)]
    assert [s.in_shape for s in specs] == [(1, 28, 28), (8, 24, 24), (16, 11, 11)]
    assert specs[1].units == 16 * 11 * 11
    assert specs[1].flops() == 2 * 8 * 9 * 16 * 22 * 22  # conv output 22x22, before the pool
    x = torch.randn(3, 1, 28, 28)
    for block in build_blocks(specs, seed=0):
        x = block(x)
        assert x.shape[1:] == block.spec.out_shape
    assert specs[0].batchnorm and build_block(specs[1], 0).bn.num_features == 8  # BN on the input (seed 001)


def test_same_padding_keeps_the_map_and_stride_shrinks_it():
    assert BlockSpec(index=0, kind="conv", in_shape=(3, 28, 28), out=4, kernel=7).out_shape == (4, 28, 28)
    spec = BlockSpec(index=0, kind="conv", in_shape=(3, 28, 28), out=4, kernel=3, stride=2)
    assert spec.out_shape == (4, 14, 14)
    assert build_block(spec, 0)(torch.randn(1, 3, 28, 28)).shape == (1, 4, 14, 14)
    even = BlockSpec(index=0, kind="conv", in_shape=(3, 8, 8), out=4, kernel=4, padding="valid")  # FF_tiny's 4x4
    assert even.out_shape == (4, 5, 5)


def test_linear_block_after_conv_flattens():
    spec = BlockSpec(index=3, kind="linear", in_shape=(4, 3, 3), out=10)
    assert spec.flops() == 2 * 36 * 10
    assert build_block(spec, 0)(torch.randn(2, 4, 3, 3)).shape == (2, 10)


@pytest.mark.parametrize(("cfg", "message"), [
    (ModelConfig(type="conv", depth=3, width=4, kernel=3, pool=[2, 2, 8]), "max-pool 8 leaves nothing"),
    (ModelConfig(type="conv", depth=3, width=4, kernel=7, padding="valid"), "leaves nothing"),
    (ModelConfig(type="conv", depth=1, width=4, kernel=4), "odd kernel"),
])
def test_impossible_shapes_are_one_line_errors(cfg, message):
    with pytest.raises(FFPipeError, match=message) as info:
        block_specs(cfg, (1, 12, 12))
    assert "\n" not in str(info.value)


def test_samples_are_independent_without_batchnorm():
    spec = BlockSpec(index=0, kind="conv", in_shape=(2, 6, 6), out=3, pool=2)
    block = build_block(spec, 0)
    x = torch.randn(5, 2, 6, 6)
    assert torch.allclose(block(x)[3:4], block(x[3:4]), atol=1e-6)


def test_block_is_an_nn_module_holding_its_spec():
    block = build_block(_mlp_specs(1)[0], seed=0)
    assert isinstance(block, FFBlock) and block.spec.index == 0
    assert sum(p.numel() for p in block.parameters()) == 36 * 50 + 50


def test_dropout_masks_depend_on_seed_and_step_only():
    """Not on the global RNG: a pipelined stage and the sequential run draw the same masks."""
    y = torch.ones(4, 10, 8, 8)
    torch.manual_seed(1)
    a = dropout_mask(y, 0.2, seed=7, step=3)
    torch.manual_seed(2)
    assert torch.equal(a, dropout_mask(y, 0.2, seed=7, step=3))
    assert not torch.equal(a, dropout_mask(y, 0.2, seed=7, step=4))
    assert a.unique().tolist() == [0.0, torch.tensor(65536 / (65536 - 13107)).item()]  # 1 / realized keep
    assert abs((a == 0).float().mean().item() - 0.2) < 0.03


def test_dropout_mask_drops_p_and_keeps_the_mean():
    """The realized drop fraction is p (binomial margin, 5 sigma) and the scale undoes the drop exactly."""
    y = torch.ones(64, 16, 16, 16)
    for p, seed in ((0.2, 1), (0.5, 2), (0.05, 3)):
        a = dropout_mask(y, p, seed=seed, step=11)
        dropped = (a == 0).double().mean().item()
        assert abs(dropped - p) < 5 * (p * (1 - p) / y.numel()) ** 0.5
        assert a.dtype == y.dtype and a.shape == y.shape
        assert a.max().item() == torch.tensor(65536 / (65536 - round(p * 65536))).item()


def test_dropout_mask_leading_rows_do_not_depend_on_the_batch():
    """The neutral rows' separate pass draws the leading rows of the trained pass's mask (`FFBlock`)."""
    big = dropout_mask(torch.ones(12, 3, 5, 5), 0.3, seed=4, step=9)
    small = dropout_mask(torch.ones(5, 3, 5, 5), 0.3, seed=4, step=9)
    assert torch.equal(big[:5], small)
