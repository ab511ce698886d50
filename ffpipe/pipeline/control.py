"""The control plane: small JSON messages between stage processes through the rendezvous store.

Activations travel over the wire (P2P); everything else a pipeline needs to coordinate — the error flag that
stops every stage when one fails, per-epoch metrics for rank 0's record, live snapshots for the rich view,
"my checkpoint shard is written" — is a few hundred bytes once a second or once an epoch. It goes through
torchrun's key-value store, so the hot path runs no extra collective, and nothing here can block on a peer
that died: every wait polls the error flag and has a deadline.

Keys live under `ffpipe/<restart count>/`, so a job restarted by `torchrun --max-restarts` never reads the
flags of the attempt that crashed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch.distributed as dist

from ffpipe.pipeline.wire import PeerError

ERROR_KEY = "error"
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Close:
    """One EPOCH_END, as every stage and the control plane name it: after training up to `step` in `epoch`,
    with the validation readouts (`split` "val") or without (None), or after the final test ("test")."""

    epoch: int
    step: int
    split: str | None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {SPLITS} or None")

    @property
    def tag(self) -> int:
        """The split as the EPOCH_END message's header tag (0: none)."""
        return 0 if self.split is None else 1 + SPLITS.index(self.split)

    @classmethod
    def from_tag(cls, epoch: int, step: int, tag: int) -> Close:
        return cls(epoch, step, None if tag == 0 else SPLITS[tag - 1])

    @property
    def trained(self) -> bool:
        """Whether this closes a training epoch (reports, checkpoint shard), not the final test."""
        return self.split != "test"

    @property
    def key(self) -> str:
        """The control-plane address; a training epoch's is the same whether or not it evaluated."""
        return f"close/{'epoch' if self.trained else 'test'}/{self.epoch}/{self.step}"


class Control:
    def __init__(self, store: dist.Store, stage: int, timeout_s: float = 120.0):
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = dist.PrefixStore(f"ffpipe/{restart}/", store)
        self.stage = stage
        self.timeout_s = timeout_s
        self._last_live = 0.0

    # -- failure --------------------------------------------------------------------------------------------
    def raise_error(self, message: str) -> None:
        """Publish the first failure; later ones (usually consequences of the first) keep the first line."""
        self.store.compare_set(ERROR_KEY, "", message)

    def error(self) -> str | None:
        """The published failure, if any: the wire's `abort_check`, polled only while blocked."""
        if self.store.check([ERROR_KEY]):
            return self.store.get(ERROR_KEY).decode() or None
        return None

    # -- what the stages tell rank 0 at each EPOCH_END --------------------------------------------------------
    def put_report(self, close: Close, stage: int, report: dict) -> None:
        """A stage's epoch: per-block statistics, compute, idle and send-blocked time, bytes, memory."""
        self._put(f"{close.key}/report/{stage}", report)

    def reports(self, close: Close, stages: int) -> list[dict]:
        return [self._get(f"{close.key}/report/{k}") for k in range(stages)]

    def put_shard_written(self, close: Close, stage: int) -> None:
        self._put(f"{close.key}/shard/{stage}", True)

    def wait_shards(self, close: Close, stages: int) -> None:
        """Until every stage has written its checkpoint shard (then rank 0 writes the manifest)."""
        for k in range(stages):
            self._get(f"{close.key}/shard/{k}")

    def put_readouts(self, close: Close, readouts: dict | None, head_correct: float) -> None:
        """The last stage's readouts of the split (None when none was evaluated) and its head's train hits."""
        self._put(f"{close.key}/readouts", {"eval": readouts, "head_correct": head_correct})

    def readouts(self, close: Close) -> dict:
        return self._get(f"{close.key}/readouts")

    # -- set-up ------------------------------------------------------------------------------------------------
    def agree(self, key: str, make, leader: bool):
        """One value for every rank (the run directory, the measured block times): the leader makes and
        publishes it, the others wait for it."""
        if leader:
            self._put(key, make())
        return self._get(key)

    # -- JSON exchange ---------------------------------------------------------------------------------------
    def _put(self, key: str, value) -> None:
        self.store.set(key, json.dumps(value))

    def _get(self, key: str):
        """Wait for `key`, polling the error flag, so a dead peer turns into a `PeerError`, not a hang."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.005
        while True:
            if self.store.check([key]):
                return json.loads(self.store.get(key))
            failure = self.error()
            if failure:
                raise PeerError(f"stopping: {failure}", peer=-1)
            if time.monotonic() > deadline:
                raise PeerError(f"no '{key}' from the other stages for {self.timeout_s:.0f} s", peer=-1)
            # Poll: a blocking store.get cannot be interrupted by the error flag, and store.wait logs a
            # warning at every timeout.
            time.sleep(pause)
            pause = min(2 * pause, 0.2)

    # -- live view ---------------------------------------------------------------------------------------------
    def live_due(self, every_s: float = 1.0) -> bool:
        """Whether a live snapshot is due (at most one per `every_s`): the caller builds one only then, since
        building it reads statistics off the device."""
        now = time.monotonic()
        if now - self._last_live < every_s:
            return False
        self._last_live = now
        return True

    def publish_live(self, snapshot: dict) -> None:
        self._put(f"live/{self.stage}", snapshot)

    def read_live(self, stages: int) -> list[dict | None]:
        keys = [f"live/{s}" for s in range(stages)]
        return [json.loads(self.store.get(k)) if self.store.check([k]) else None for k in keys]
