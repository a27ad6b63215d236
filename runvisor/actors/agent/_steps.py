"""A run's step events on ``rv.step.<run>``: numbered, stamped, and published without waiting.

Each event is one encode and one ``publish_async``; the acks are collected here and awaited
only at checkpoints and at the end of the run (``flush``), so a checkpoint never claims steps
that were not stored, and a step never costs a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import PubAck

from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent, StepKind

log = logging.getLogger(__name__)

#: How long a flush waits for outstanding acks before reporting the steps as lost.
ACK_TIMEOUT_S = 5.0


class StepStream:
    """Publishes one run's step events with a monotonically increasing ``seq``."""

    def __init__(self, js: JetStreamContext, run_id: str, clock: Callable[[], float]) -> None:
        self.js = js
        self.run_id = run_id
        self.clock = clock
        #: The seq of the last event published or reserved.
        self.seq = 0
        self._subject = subjects.step(run_id)
        self._acks: set[asyncio.Future[PubAck]] = set()

    def reserve(self) -> int:
        """The next seq, for an event that must be named (in a checkpoint) before it is published."""
        self.seq += 1
        return self.seq

    async def publish(self, kind: StepKind, *, seq: int | None = None, **fields: Any) -> int:
        """Publish one event (the next seq unless one was reserved); returns its seq."""
        if seq is None:
            seq = self.reserve()
        event = StepEvent(run_id=self.run_id, seq=seq, ts=self.clock(), kind=kind, **fields)
        ack = await self.js.publish_async(self._subject, codec.encode(event), headers=codec.MSGPACK_HEADERS)
        self._acks.add(ack)
        ack.add_done_callback(self._acked)
        return seq

    def _acked(self, ack: asyncio.Future[PubAck]) -> None:
        self._acks.discard(ack)
        if not ack.cancelled() and (exc := ack.exception()) is not None:
            log.error(
                "a step event was not stored in %s: %r", subjects.STEPS_STREAM, exc, extra={"run_id": self.run_id}
            )

    async def flush(self, timeout: float = ACK_TIMEOUT_S) -> None:
        """Wait for the outstanding acks; ones that do not come in time are reported and dropped."""
        if not self._acks:
            return
        _, late = await asyncio.wait(list(self._acks), timeout=timeout)
        for ack in late:
            ack.cancel()  # frees publish_async's slot (it allows 4,000 pending)
        if late:
            # A JetStream publish to a denied subject just times out (DESIGN §11): say what to check.
            log.error(
                "%d step events not acknowledged within %.0fs: is %s provisioned, and may this user publish %s?",
                len(late), timeout, subjects.STEPS_STREAM, self._subject, extra={"run_id": self.run_id},
            )  # fmt: skip
