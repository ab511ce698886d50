"""The one backward message of a pipeline: the `joint` head's error, where it goes and when it is applied.

In a `joint` head (`ffpipe.ff.head`) every slice learns from the error of the *total* logits, which only the
last stage knows. So the last stage of each replica computes `joint_error` after each training step and
sends it, `[B, classes]`, to every earlier stage of its replica that owns head slices, one channel each; it
applies the error to its own slices at once. Stage k receives errors in step order and applies the error of
step t − (P−1−k) right after its own step t, so its staleness is exactly P−1−k steps (0 for the last stage),
the same in every run and independent of timing; the last P−1−k errors of an epoch are applied at the epoch's
end (`drain`). The error reaches head slices only, never an FF block. With `head.mode: local` or `none`
there is no channel at all, and the sequential runner applies every error at once (staleness 0).

The channel runs on its own process group (`topology.backward_group`): under NCCL a rank pair's sends and
receives of one group share one in-order stream, so the receive an earlier stage posts at start-up would
block its step-1 activation send on the same pair, and the error it waits for needs that send first.
`FFPIPE_EMULATE_NCCL=1` reproduces those semantics on the CPU (`ffpipe.pipeline.wire`).

Every channel ends with a STOP, like the activation channels (`close` waits for it): a receive left posted
when the process group goes down makes gloo abort the process (issue 11).
"""

from __future__ import annotations

import torch

from ffpipe.config import Config
from ffpipe.ff.head import joint_error
from ffpipe.ff.packet import Packet
from ffpipe.ff.stage import Stage
from ffpipe.pipeline.topology import Topology
from ffpipe.pipeline.wire import Kind, Receiver, Sender


class HeadChannel:
    def __init__(self, cfg: Config, topology: Topology, owns_head: list[bool], **wire):
        """`owns_head[k]`: whether stage k has head slices; `wire`: the Sender/Receiver options."""
        joint = cfg.head.mode == "joint"
        t, last = topology, topology.stages - 1
        self.lag = last - t.stage
        self.inbound = Receiver(t.rank_of(last), **wire) if joint and not t.last and owns_head[t.stage] else None
        self.outbound = {k: Sender(t.rank_of(k), **wire) for k in range(last) if owns_head[k]} \
            if joint and t.last else {}
        self.computes = joint and t.last
        self.steps = self.applied = 0

    def receive_due(self) -> tuple[int, torch.Tensor] | None:
        """Count this stage's training step and receive the error due after it (`lag` steps old), or None.
        Received apart from `after_step`, so that the caller keeps the wait for it out of its compute time."""
        if self.inbound is None:
            return None
        self.steps += 1
        return self._receive() if self.steps > self.lag else None

    def after_step(self, stage: Stage, out: Packet, due: tuple[int, torch.Tensor] | None) -> None:
        """After this stage's training step on `out`'s step: the last stage computes and sends the error and
        applies its own; an earlier stage applies the error `receive_due` gave it."""
        if self.computes and out.logits is not None:
            error = joint_error(out.logits, out.y)
            for sender in self.outbound.values():
                sender.send(Kind.TRAIN, out.step, out.epoch, [error], copy=False)
            stage.apply_head_error(out.step, error)
        if due is not None:
            stage.apply_head_error(*due)
            self.applied += 1

    def drain(self, stage: Stage) -> None:
        """At an epoch's end: apply the errors still owed for the epoch's last steps."""
        while self.inbound is not None and self.applied < self.steps:
            stage.apply_head_error(*self._receive())
            self.applied += 1
        self.steps = self.applied = 0

    def _receive(self) -> tuple[int, torch.Tensor]:
        msg = self.inbound.recv()
        return msg.step, msg.tensors[0].clone()

    def stop(self, step: int) -> None:
        """The last stage ends its outbound channels (after the last error was sent)."""
        for sender in self.outbound.values():
            sender.send(Kind.STOP, step, 0)

    def close(self) -> None:
        for sender in self.outbound.values():
            sender.close()
        if self.inbound is not None:
            self.inbound.close()
