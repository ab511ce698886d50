"""`pipeline.wire_dtype`: one rounding at every stage boundary, the same in the pipeline's pack/unpack and in
the sequential runner; only the activity (x, shortcut tensors) is rounded, and float32 changes nothing."""

from pathlib import Path

import pytest
import torch

from ffpipe.config import load_config
from ffpipe.ff.blocks import BlockSpec
from ffpipe.ff.packet import WIRE_DTYPES, Packet
from ffpipe.ff.partition import partition_table
from ffpipe.pipeline.wire import Kind, Message
from ffpipe.pipeline.worker import pack, unpack
from ffpipe.run.sequential import SequentialRunner


def packet() -> Packet:
    gen = torch.Generator().manual_seed(0)
    return Packet("train", torch.randn(12, 7, generator=gen), torch.arange(4), step=3, epoch=1,
                  logits=torch.randn(4, 10, generator=gen), scores=torch.randn(2, 4, 10, generator=gen),
                  exits=torch.randint(0, 10, (1, 4), generator=gen),
                  shortcuts={0: torch.randn(12, 7, generator=gen), 2: torch.randn(12, 3, 2, generator=gen)})


def test_bfloat16_rounds_x_and_shortcuts_only():
    p = packet()
    out = p.at_boundary("bfloat16")
    assert out.x.dtype == torch.float32 and torch.equal(out.x, p.x.to(torch.bfloat16).float())
    assert not torch.equal(out.x, p.x)  # randn values are not all bfloat16-representable
    assert sorted(out.shortcuts) == [0, 2]
    for src, t in p.shortcuts.items():
        got = out.shortcuts[src]
        assert got.dtype == torch.float32 and torch.equal(got, t.to(torch.bfloat16).float())
    assert out.y is p.y and out.logits is p.logits and out.scores is p.scores and out.exits is p.exits
    assert (out.view, out.step, out.epoch) == (p.view, p.step, p.epoch)
    wired = p.to_wire("bfloat16")
    assert wired.x.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in wired.shortcuts.values())


def test_float32_is_the_identity_without_a_copy():
    p = packet()
    for out in (p.at_boundary("float32"), p.to_wire("float32"), p.from_wire("float32")):
        assert out is p and out.x is p.x and all(out.shortcuts[s] is t for s, t in p.shortcuts.items())


@pytest.mark.parametrize("wire_dtype", sorted(WIRE_DTYPES))
def test_pack_and_unpack_carry_the_same_rounding(wire_dtype):
    """The pipeline's send + receive gives the sequential runner's `at_boundary`, bit for bit; bfloat16
    sends x and the shortcut tensors at 2 bytes a value; float32 hands x over uncopied."""
    p = packet()
    tensors, tags = pack(p, "val", wire_dtype)
    size = WIRE_DTYPES[wire_dtype].itemsize
    x, y, logits, scores, exits, *extras = tensors
    assert tags[2:] == (0, 2)
    assert x.element_size() == size and all(t.element_size() == size for t in extras)
    assert y.dtype == torch.int64 and logits.dtype == scores.dtype == torch.float32 and exits.dtype == torch.int64
    if wire_dtype == "float32":
        assert x is p.x
    got, split = unpack(Message(Kind.TRAIN, p.step, p.epoch, tensors, tags), wire_dtype)
    want = p.at_boundary(wire_dtype)
    assert split == "val" and got.x.dtype == torch.float32 and torch.equal(got.x, want.x)
    assert {s: t.dtype for s, t in got.shortcuts.items()} == {0: torch.float32, 2: torch.float32}
    assert all(torch.equal(got.shortcuts[s], want.shortcuts[s]) for s in want.shortcuts)
    assert torch.equal(got.logits, p.logits) and torch.equal(got.scores, p.scores) and torch.equal(got.y, p.y)


def test_sequential_rounds_at_stage_boundaries_only():
    """One stage has no boundary, so bfloat16 changes nothing; two stages round between them."""

    def weights(*overrides):
        cfg = load_config(None, ["model.type=linear", "model.depth=2", "model.width=16", "data.batch_size=20",
                                 "data.labels.encoding=onehot", "train.progress=false", *overrides])
        runner = SequentialRunner(cfg)
        runner.start(Path("."), resume=False)  # nothing is read or written there without resume
        runner.set_epoch(1)
        for step, p in zip(range(1, 4), runner.batches(1, 0)):
            runner.train_step(step, p)
        return [e["block"] for s in runner.stages for _, e in sorted(s.state_dict().items())]

    def same(a, b):
        return all(torch.equal(u[k], v[k]) for u, v in zip(a, b) for k in u)

    assert same(weights(), weights("pipeline.wire_dtype=bfloat16"))
    two = ["pipeline.stages=2", "pipeline.partition=[1,1]"]
    assert same(weights(*two), weights())
    assert not same(weights(*two, "pipeline.wire_dtype=bfloat16"), weights(*two))


def test_partition_table_counts_the_wire_dtype_bytes():
    specs = [BlockSpec(index=0, kind="linear", in_shape=(784,), out=512),
             BlockSpec(index=1, kind="linear", in_shape=(512,), out=10)]
    four, two = (partition_table(specs, [(0, 1), (1, 2)], element_bytes=b).splitlines()[1] for b in (4, 2))
    assert four.endswith("2.0 (0.0)") and two.endswith("1.0 (0.0)")
    assert partition_table(specs, [(0, 1), (1, 2)]).splitlines()[1].endswith("2.0 (0.0)")
