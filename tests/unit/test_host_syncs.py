"""A pipeline stage's training step reads nothing off the device, so on a GPU the host runs ahead of the kernels.

Every Python-level device-to-host read of a tensor (`item`, `tolist`, `float(t)`, `int(t)`, `bool(t)`, `numpy`)
made while the workers run their steps is counted. The stages run in this process with the wire replaced by a
recorder (a message is handed from one worker to the next as the receiver would deliver it), so the count
covers the whole step: compute, packing and unpacking, the head's error, the optimizer steps, the statistics
and the live snapshot. The snapshot reads the statistics, but only when it is due (once a second): that read
is counted too, which shows the counter sees what it should.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ffpipe.config import load_config
from ffpipe.pipeline.control import Control
from ffpipe.pipeline.head_channel import HeadChannel
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import Kind, Message
from ffpipe.pipeline.worker import Links, StageWorker, unpack
from ffpipe.run.model import Model

READS = ("item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__", "__array__")
STEPS = 6

# a residual group-goodness net: shortcut tensors cross the boundary, so their sources travel as tags
RESIDUAL = ["data.batch_size=20", "data.labels.encoding=none", "model.type=conv", "model.depth=4",
            "model.width=[10,10,20,20]", "model.stride=[1,1,2,1]", "model.shortcuts=[[0,2,add],[1,3,concat]]",
            "model.norm=group", "model.dropout=0.2", "loss.family=group_ce", "head.mode=none",
            "head.readouts=[group]", "train.progress=false", "pipeline.stages=2", "pipeline.partition=[2,2]"]
# an overlay MLP with the joint head, whose last stage computes the head's error and counts correct answers
JOINT = ["data.batch_size=20", "data.labels.encoding=onehot", "model.type=linear", "model.depth=2",
         "model.width=16", "head.mode=joint", "train.progress=false"]


class Recorder:
    """Stands in for the `Sender`: keeps each message as the `Receiver` would deliver it."""

    def __init__(self):
        self.messages: list[Message] = []

    def send(self, kind, step, epoch, tensors=(), *, tags=(), copy=True):
        self.messages.append(Message(kind, step, epoch, list(tensors), tuple(tags)))

    def stats(self) -> dict:
        return {"bytes": 0, "blocked_s": 0.0}


def workers(overrides: list[str], tmp_path) -> list[StageWorker]:
    cfg = load_config(None, overrides)
    model = Model.build(cfg, torch.device("cpu"))
    stages = cfg.pipeline.stages
    built = []
    for k in range(stages):
        topology = Topology(stages, 1, rank=k)
        links = Links(prev=None, next=Recorder() if k < stages - 1 else None,
                      head=HeadChannel(cfg, topology, [False] * stages))
        worker = StageWorker(cfg, model, topology, Control(dist.HashStore(), k), links, tmp_path)
        worker.start()
        built.append(worker)
    return built


def run_steps(built: list[StageWorker], live_due: bool, monkeypatch) -> int:
    """Run STEPS training steps through every worker; the device reads made meanwhile."""
    packets = built[0].model.source().train_packets(epoch=1)
    batches = [next(packets) for _ in range(STEPS)]  # drawn before counting: the data source is not the step
    for worker in built:
        monkeypatch.setattr(worker.control, "live_due", lambda: live_due)
    reads = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for packet in batches:
        built[0].train_step(packet)
        for prev, worker in zip(built, built[1:]):
            worker.train_step(unpack(prev.links.next.messages.pop(0), worker.wire_dtype)[0])
    monkeypatch.undo()
    return len(reads)


@pytest.mark.parametrize("overrides", [RESIDUAL, JOINT], ids=["residual-2-stages", "joint-head"])
def test_a_training_step_reads_nothing_off_the_device(overrides, tmp_path, monkeypatch):
    built = workers(overrides, tmp_path)
    assert run_steps(built, live_due=False, monkeypatch=monkeypatch) == 0
    assert run_steps(built, live_due=True, monkeypatch=monkeypatch) > 0  # the due snapshot's read is seen
    if overrides is JOINT:
        assert built[-1].head_correct.device.type == "cpu" and built[-1].head_correct > 0


def test_the_metadata_travels_as_tags(tmp_path, monkeypatch):
    built = workers(RESIDUAL, tmp_path)
    packet = next(built[0].model.source().train_packets(epoch=1))
    monkeypatch.setattr(built[0].control, "live_due", lambda: False)
    built[0].train_step(packet)
    message = built[0].links.next.messages[0]
    assert message.kind == Kind.TRAIN and message.tags[2:] == (0, 1)  # joined at blocks 2 and 3
    got, split = unpack(message)
    assert got.view == "train" and split == "val" and sorted(got.shortcuts) == [0, 1]
