"""The Stage: locality of learning, partition invariance, FGFF lr = 0, NaN handling, and learning heads."""

import gc
import weakref

import pytest
import torch

from ffpipe.config import load_config
from ffpipe.ff.stage import NonFiniteLoss
from ffpipe.run.model import Model

MLP = ["model.type=linear", "model.depth=3", "model.width=64", "data.batch_size=50",
       "data.labels.encoding=onehot", "train.progress=false"]


def build(overrides, stages=1):
    cfg = load_config(None, MLP + list(overrides) + [f"pipeline.stages={stages}"])
    model = Model.build(cfg, torch.device("cpu"))
    return cfg, model.source(), model.stages()


def run_steps(source, stages, n):
    for i, packet in enumerate(source.train_packets(epoch=1)):
        if i == n:
            break
        for stage in stages:
            packet = stage.step(packet).out


def block_weights(stages):
    return {i: t for s in stages for i, e in s.state_dict().items() for t in [e["block"]]}


class Saved:
    """What the pack hook stores for a saved tensor: alive exactly as long as the graph that saved it."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_no_gradient_crosses_a_block_boundary():
    """Block 0 has no loss: the later blocks' local backward (run in `compute`) must not reach it."""
    _, source, (stage,) = build(["loss.exclude_first=true"])
    packet = next(source.train_packets(epoch=1))
    computed = stage.compute(packet)
    assert [b.trains for b in computed.blocks] == [False, True, True]
    assert all(p.grad is None for p in stage.blocks[0].parameters())
    assert all(p.grad is not None for b in stage.blocks[1:] for p in b.parameters())


def test_compute_leaves_gradients_and_no_graph_and_apply_only_steps():
    """Each block's backward runs before the next block, so no autograd graph outlives `compute`; `apply`
    changes the weights and computes nothing."""
    _, source, (stage,) = build([])
    packet = next(source.train_packets(epoch=1))
    saved = []  # a weak reference to every tensor an autograd graph saved during `compute`

    def pack(t):
        box = Saved(t)
        saved.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        computed = stage.compute(packet)
    gc.collect()
    assert len(saved) > 0 and all(ref() is None for ref in saved)  # every graph that saved them is gone
    assert computed.out.x.grad_fn is None and all(b.stats.grad_fn is None for b in computed.blocks)
    grads = [p.grad.clone() for p in stage.blocks.parameters()]
    before = [p.detach().clone() for p in stage.blocks.parameters()]
    stage.apply(computed)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, stage.blocks.parameters()))
    assert all(not torch.equal(b, p) for b, p in zip(before, stage.blocks.parameters()))


def test_backprop_chunk_sends_gradient_inside_the_stage_only():
    _, source, stages = build(["train.chunk_mode=backprop", "pipeline.partition=[2,1]"], stages=2)
    packet = next(source.train_packets(epoch=1))
    computed = stages[0].compute(packet)
    assert [b.trains for b in computed.blocks] == [True, True]
    assert all(p.grad is not None for p in stages[0].blocks[0].parameters())  # from block 1's loss
    assert not computed.out.x.requires_grad


def test_outputs_are_computed_before_the_update():
    _, source, (stage,) = build([])
    packet = next(source.train_packets(epoch=1))
    computed = stage.compute(packet)
    before = computed.out.x.clone()
    stage.apply(computed)
    again = stage.compute(packet).out
    assert torch.equal(computed.out.x, before) and not torch.equal(again.x, before)


@pytest.mark.parametrize("partition", [[1, 2], [2, 1]])
def test_partition_does_not_change_the_weights(partition):
    _, source, one = build(["head.mode=local"])
    _, source2, two = build(["head.mode=local", f"pipeline.partition={partition}"], stages=2)
    run_steps(source, one, 6)
    run_steps(source2, two, 6)
    a, b = block_weights(one), block_weights(two)
    assert a.keys() == b.keys()
    for i in a:
        for key in a[i]:
            assert torch.equal(a[i][key], b[i][key]), (i, key)


def test_fgff_with_lr_zero_is_plain_ff_bitwise():
    base = ["loss.family=hinge", "loss.goodness=mean", "loss.threshold=1.0", "loss.margin=0.5"]
    _, s1, plain = build(base)
    _, s2, fgff = build(base + ["loss.significance=true", "loss.significance_lr=0"])
    run_steps(s1, plain, 5)
    run_steps(s2, fgff, 5)
    a, b = block_weights(plain), block_weights(fgff)
    for i in a:
        for key in a[i]:
            assert torch.equal(a[i][key], b[i][key]), (i, key)
    _, s3, learned = build(base + ["loss.significance=true", "loss.significance_lr=0.01"])
    run_steps(s3, learned, 5)
    w = learned[0].objectives[1].significance
    assert not torch.equal(w, torch.ones_like(w))


def test_nan_names_the_block():
    _, source, (stage,) = build([])
    packet = next(source.train_packets(epoch=1))
    packet.x[0] = float("nan")
    stage.step(packet)  # no host sync in the step: the stage remembers, on the device, and says so once
    with pytest.raises(NonFiniteLoss, match="block 0 at step 1 \\(epoch 1\\)"):
        stage.check_finite(1)


def test_negatives_never_carry_the_true_label():
    _, source, _ = build([])
    for i, packet in enumerate(source.train_packets(epoch=1)):
        if i == 20:
            break
        n = packet.n
        pos_label = packet.x[:n, 0].flatten(1)[:, :10].argmax(dim=1)
        neg_label = packet.x[n:2 * n, 0].flatten(1)[:, :10].argmax(dim=1)
        assert torch.equal(pos_label, packet.y)
        assert bool((neg_label != packet.y).all())


def test_k_negative_streams_carry_distinct_wrong_labels_and_train():
    cfg, source, (stage,) = build(["data.labels.negatives_per_image=3", "loss.family=symba"])
    packet = next(source.train_packets(epoch=1))
    n = packet.n
    assert len(packet.x) == 5 * n  # pos, 3 negatives, neutral
    labels = [packet.x[k * n:(k + 1) * n].flatten(1)[:, :10].argmax(dim=1) for k in range(4)]
    assert torch.equal(labels[0], packet.y)
    for i in range(1, 4):
        assert bool((labels[i] != packet.y).all())
        for j in range(1, i):
            assert bool((labels[i] != labels[j]).all())
    computed = stage.step(packet)
    assert stage.stat_names == ("loss", "g_pos", "g_neg", "acc_pair")
    assert [b.stats.shape for b in computed.blocks] == [(4,)] * 3
