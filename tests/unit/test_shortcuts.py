"""Shortcut tensors: shapes of ADD and CONCAT joins with pooling, what a stage carries and drops, and the
topology errors, each one line."""

import pytest
import torch

from ffpipe.config import load_config
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import block_specs
from ffpipe.ff.shortcuts import Shortcut, ShortcutPlan, join, joined_shape, parse_shortcuts
from ffpipe.run.model import Model

RESIDUAL = ["data.labels.encoding=none", "loss.family=group_ce", "model.norm=group", "head.mode=none",
            "head.readouts=[group]", "model.depth=6", "model.width=[10,10,10,20,20,20]", "model.kernel=3",
            "model.stride=[1,1,1,2,1,1]", "model.shortcuts=[[0,2,add],[2,4,concat],[3,5,add]]",
            "train.progress=false"]


def test_add_pools_and_zero_pads_the_source_and_concat_stacks_it():
    x = torch.ones(2, 4, 7, 7)
    source = torch.arange(2 * 3 * 14 * 14, dtype=torch.float32).reshape(2, 3, 14, 14)
    pooled = torch.nn.functional.avg_pool2d(source, 2)
    added = join(x, source, "add")
    assert added.shape == (2, 4, 7, 7)
    assert torch.equal(added[:, :3], x[:, :3] + pooled) and torch.equal(added[:, 3], x[:, 3])  # padded channel
    stacked = join(x, source, "concat")
    assert stacked.shape == (2, 7, 7, 7) and torch.equal(stacked[:, 4:], pooled)


def test_block_specs_chain_the_joined_shapes():
    cfg = load_config(None, RESIDUAL)
    specs = block_specs(cfg.model, (1, 28, 28))
    assert [s.in_shape for s in specs] == [(1, 28, 28), (10, 28, 28), (10, 28, 28), (10, 28, 28),
                                           (20, 14, 14), (30, 14, 14)]  # block 4's output + block 2's, pooled
    assert joined_shape((20, 14, 14), (10, 28, 28), Shortcut(2, 4, "concat")) == (30, 14, 14)


def test_a_stage_carries_a_shortcut_only_as_far_as_its_last_destination():
    plan = ShortcutPlan(tuple(parse_shortcuts([[0, 2, "add"], [0, 3, "concat"], [2, 4, "add"]], 5)))
    assert plan.in_flight(0) == [0] and plan.in_flight(1) == [0] and plan.in_flight(2) == [0, 2]
    assert plan.in_flight(3) == [2] and plan.in_flight(4) == []
    assert plan.done_after(3) == [0] and plan.done_after(4) == [2]
    cfg = load_config(None, RESIDUAL + ["pipeline.stages=2", "pipeline.partition=[3,3]"])
    model = Model.build(cfg, torch.device("cpu"))
    first, second = model.stages()
    packet = next(model.source().train_packets(epoch=1))
    out = first.compute(packet).out
    assert sorted(out.shortcuts) == [2]  # block 0's tensor was used up at block 2; block 2's goes on to block 4
    assert out.shortcuts[2].shape == (100, 10, 28, 28) and not out.shortcuts[2].requires_grad  # default batch 100
    assert second.compute(out).out.shortcuts == {}


@pytest.mark.parametrize("shortcuts, message", [
    ("[[2,1,add]]", "2 -> 1 does not run forward"),
    ("[[0,9,add]]", "outside 0..5"),
    ("[[0,2,add],[1,2,add]]", "block 2 already receives a shortcut"),
    ("[[0,1,mul]]", "'mul' is not one of add, concat"),
])
def test_bad_topologies_are_one_line_when_the_config_loads(shortcuts, message):
    with pytest.raises(FFPipeError, match=message):
        load_config(None, RESIDUAL + [f"model.shortcuts={shortcuts}"])  # not only once blocks are built


def test_a_shortcut_that_does_not_fit_is_one_line_when_the_shapes_are_known():
    cfg = load_config(None, RESIDUAL + ["model.shortcuts=[[4,5,add],[3,4,concat]]"])
    with pytest.raises(FFPipeError, match="cannot add 40 channels to 20"):
        block_specs(cfg.model, (1, 28, 28))


def test_the_specs_carry_the_plan_parsed_once():
    specs = block_specs(load_config(None, RESIDUAL + ["model.shortcuts=[[0,2,add],[2,4,concat]]"]).model,
                        (1, 28, 28))
    assert [s.shortcut for s in specs] == [None, None, Shortcut(0, 2, "add"), None, Shortcut(2, 4, "concat"), None]
    assert ShortcutPlan.of(specs).shortcuts == (Shortcut(0, 2, "add"), Shortcut(2, 4, "concat"))


def test_a_narrower_source_is_zero_padded_for_add():
    specs = block_specs(load_config(None, RESIDUAL + ["model.shortcuts=[[2,4,add]]"]).model, (1, 28, 28))
    assert specs[5].in_shape == (20, 14, 14)


def test_shortcuts_need_conv_blocks_and_matching_resolutions():
    with pytest.raises(FFPipeError, match="model.shortcuts: needs model.type conv"):
        load_config(None, ["model.type=linear", "data.labels.encoding=onehot", "model.shortcuts=[[0,1,add]]"])
    with pytest.raises(FFPipeError, match="no average pooling takes a 7x7 source to 5x5"):
        joined_shape((4, 5, 5), (4, 7, 7), Shortcut(0, 1, "add"))


def test_an_odd_source_pools_like_a_stride_2_conv():
    """7x7 -> 4x4 (a padded stride-2 conv's output): windows of 2 with a partial last one."""
    assert joined_shape((4, 4, 4), (4, 7, 7), Shortcut(0, 1, "add")) == (4, 4, 4)
    source = torch.arange(49.0).view(1, 1, 7, 7)
    joined = join(torch.zeros(1, 1, 4, 4), source, "add")
    assert joined[0, 0, 0, 0] == (0 + 1 + 7 + 8) / 4
    assert joined[0, 0, 3, 3] == 48  # the partial corner window holds one pixel
