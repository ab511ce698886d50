"""The one backward message of a pipeline: the `joint` head's error, where it goes and when it is applied.

In a `joint` head (`ffpipe.ff.head`) every slice learns from the error of the *total* logits, which only the
last stage knows. So the last stage of each replica computes `joint_error` after each training step and
sends it, `[B, classes]`, to every earlier stage of its replica that owns head slices, one channel each; it
applies the error to its own slices at once. Stage k receives errors in step order and applies the error of
step t − (P−1−k) right after its own step t, so its staleness is exactly P−1−k steps (0 for the last stage),
the same in every run and independent of timing; the last P−1−k errors of an epoch are applied at the epoch's
end (`drain`). The error reaches head slices only, never an FF block. With `head.mode: local` or `none`
there is no channel at all, and the sequential runner applies every error at once (staleness 0).

Every channel ends with a STOP, like the activation channels (`close` waits for it): a receive left posted
when the process group goes down makes gloo abort the process (issue 11).
"""

from __future__ import annotations

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

    def after_step(self, stage: Stage, out: Packet) -> None:
        """After this stage's training step on `out`'s step: the last stage computes and sends the error and
        applies its own; an earlier stage applies the error that is due (`lag` steps old)."""
        if self.computes and out.logits is not None:
            error = joint_error(out.logits, out.y)
            for sender in self.outbound.values():
                sender.send(Kind.TRAIN, out.step, out.epoch, [error], copy=False)
            stage.apply_head_error(out.step, error)
        if self.inbound is not None:
            self.steps += 1
            if self.steps > self.lag:
                self._apply_next(stage)

    def drain(self, stage: Stage) -> None:
        """At an epoch's end: apply the errors still owed for the epoch's last steps."""
        while self.inbound is not None and self.applied < self.steps:
            self._apply_next(stage)
        self.steps = self.applied = 0

    def _apply_next(self, stage: Stage) -> None:
        msg = self.inbound.recv()
        stage.apply_head_error(msg.step, msg.tensors[0].clone())
        self.applied += 1

    def stop(self, step: int) -> None:
        """The last stage ends its outbound channels (after the last error was sent)."""
        for sender in self.outbound.values():
            sender.send(Kind.STOP, step, 0)

    def close(self) -> None:
        for sender in self.outbound.values():
            sender.close()
        if self.inbound is not None:
            self.inbound.close()
