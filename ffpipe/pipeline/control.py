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

import torch.distributed as dist

from ffpipe.pipeline.wire import PeerError

ERROR_KEY = "error"


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

    # -- JSON exchange -----------------------------------------------------------------------------------
    def put(self, key: str, value) -> None:
        self.store.set(key, json.dumps(value))

    def get(self, key: str):
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

    def agree(self, key: str, make, leader: bool):
        """One value for every rank: the leader makes and publishes it, the others wait for it."""
        if leader:
            self.put(key, make())
        return self.get(key)

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
        self.put(f"live/{self.stage}", snapshot)

    def read_live(self, stages: int) -> list[dict | None]:
        keys = [f"live/{s}" for s in range(stages)]
        return [json.loads(self.store.get(k)) if self.store.check([k]) else None for k in keys]
