"""A run's step events on ``rv.step.<run>``: numbered, stamped, published without waiting, never lost quietly.

Each event is one encode and one ``publish_async`` with a message id (``<run>:<seq>``); the
acks are collected here and awaited only at checkpoints and at the end of the run (``flush``),
so a checkpoint never claims steps that were not stored, and a step never costs a round trip.

A step JetStream refuses, or does not acknowledge within ``ACK_WAIT_S`` (a server restarting,
a reconnect that lost the reply), is sent again, with the same message id, so the stream
stores it once however often it is sent, until ``STEP_RETRY_S`` after it was first sent. At
most ``MAX_UNACKED`` steps wait like that (a server away for long); past either limit a step is
lost, and the log says so loudly, once, then at most every ``LOST_LOG_EVERY_S`` with the count:
a loop whose steps are dropped is a loop nobody sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import PubAck

from runvisor.actors.connection import Sparing
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent, StepKind

log = logging.getLogger(__name__)

#: How long a checkpoint (``flush``) waits for outstanding acks before it goes on without them.
ACK_TIMEOUT_S = 5.0
#: A step not acknowledged this long after it was sent is sent again.
ACK_WAIT_S = 2.0
#: How long a step is sent again before it is given up as lost.
STEP_RETRY_S = 30.0
#: Steps kept unacknowledged (for sending again) at most; past this the oldest is lost.
MAX_UNACKED = 10_000
#: How often the unacknowledged steps are looked at.
WATCH_S = 0.5
#: Lost steps are logged at once, then at most this often.
LOST_LOG_EVERY_S = 30.0
#: JetStream's de-duplication header.
MSG_ID = "Nats-Msg-Id"


@dataclass(slots=True)
class _Unacked:
    """A step sent and not yet acknowledged."""

    data: bytes
    headers: dict[str, str]
    first_sent: float
    sent: float
    ack: asyncio.Future[PubAck] | None = None  # None: refused, or never handed to nats-py; to send again


class StepStream:
    """Publishes one run's step events with a monotonically increasing ``seq``."""

    def __init__(self, js: JetStreamContext, run_id: str, clock: Callable[[], float]) -> None:
        self.js = js
        self.run_id = run_id
        self.clock = clock
        #: The seq of the last event published or reserved.
        self.seq = 0
        #: Steps given up as lost (never stored).
        self.lost = 0
        self._subject = subjects.step(run_id)
        self._unacked: dict[int, _Unacked] = {}  # by seq, oldest first
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._watcher: asyncio.Task[None] | None = None
        self._lost_log = Sparing(LOST_LOG_EVERY_S)
        self._lost_unlogged = 0
        self._lost_why = ""

    def reserve(self) -> int:
        """The next seq, for an event that must be named (in a checkpoint) before it is published."""
        self.seq += 1
        return self.seq

    async def publish(self, kind: StepKind, *, seq: int | None = None, **fields: Any) -> int:
        """Publish one event (the next seq unless one was reserved); returns its seq."""
        if seq is None:
            seq = self.reserve()
        event = StepEvent(run_id=self.run_id, seq=seq, ts=self.clock(), kind=kind, **fields)
        headers = {**codec.MSGPACK_HEADERS, MSG_ID: f"{self.run_id}:{seq}"}
        now = time.monotonic()
        step = _Unacked(codec.encode(event), headers, first_sent=now, sent=now)
        if len(self._unacked) >= MAX_UNACKED:
            oldest = next(iter(self._unacked))
            self._give_up(oldest, f"over {MAX_UNACKED} steps were waiting for the server")
        self._unacked[seq] = step
        self._all_acked.clear()
        await self._send(seq, step)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name=f"steps-{self.run_id}")
        return seq

    async def flush(self, timeout: float = ACK_TIMEOUT_S) -> None:
        """Wait until every step sent so far is acknowledged; after ``timeout``, say so and go on.

        Steps still unacknowledged then are not dropped: they are sent again until ``STEP_RETRY_S``.
        """
        if self._all_acked.is_set():
            return
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout)
        except TimeoutError:
            # A JetStream publish to a denied subject just times out (DESIGN §11): say what to check.
            log.error(
                "%d step events not acknowledged within %.0fs (still trying): is %s provisioned, and may "
                "this user publish %s?", len(self._unacked), timeout, subjects.STEPS_STREAM, self._subject,
                extra={"run_id": self.run_id},
            )  # fmt: skip

    async def close(self, timeout: float = ACK_TIMEOUT_S) -> None:
        """At the end of the run: wait for the last acks, then stop; what is still unacknowledged is lost."""
        await self.flush(timeout)
        await self.stop()
        for seq in list(self._unacked):
            self._give_up(seq, "the run ended before the server acknowledged them")
        self._flush_lost_log()

    async def stop(self) -> None:
        """Stop sending again (the run ended, or another process speaks for it now)."""
        watcher = self._watcher
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # -- sending and sending again -----------------------------------------------------

    async def _send(self, seq: int, step: _Unacked) -> None:
        """Hand ``step`` to nats-py (the caller has set ``step.sent``)."""
        try:
            ack = await self.js.publish_async(self._subject, step.data, headers=step.headers)
        except Exception as exc:  # nats-py's reconnect buffer full, the connection closed: later
            log.debug("step %d not sent yet: %s", seq, exc, extra={"run_id": self.run_id})
            step.ack = None
            return
        step.ack = ack
        ack.add_done_callback(functools.partial(self._acked, seq, step))

    def _acked(self, seq: int, step: _Unacked, ack: asyncio.Future[PubAck]) -> None:
        if step.ack is not ack or ack.cancelled():
            return  # superseded by a later send of the same step
        if ack.exception() is not None:
            step.ack = None  # refused (JetStream unavailable for a moment): the watcher sends it again
            return
        if self._unacked.get(seq) is step:
            del self._unacked[seq]
            if not self._unacked:
                self._all_acked.set()

    async def _watch(self) -> None:
        """While steps are unacknowledged: send again the refused and the unanswered, give up the too old."""
        try:
            while self._unacked:
                await asyncio.sleep(WATCH_S)
                now = time.monotonic()
                for seq, step in list(self._unacked.items()):
                    if self._unacked.get(seq) is not step:
                        continue
                    if now - step.first_sent > STEP_RETRY_S:
                        self._give_up(seq, f"not acknowledged within {STEP_RETRY_S:.0f}s")
                    elif step.ack is None or (not step.ack.done() and now - step.sent > ACK_WAIT_S):
                        if step.ack is not None:
                            step.ack.cancel()  # frees publish_async's slot (it allows 4,000 pending)
                        step.sent = now
                        await self._send(seq, step)
                self._flush_lost_log()
        finally:
            self._watcher = None

    def _give_up(self, seq: int, why: str) -> None:
        step = self._unacked.pop(seq, None)
        if step is None:
            return
        if step.ack is not None and not step.ack.done():
            step.ack.cancel()
        if not self._unacked:
            self._all_acked.set()
        self.lost += 1
        self._lost_unlogged += 1
        self._lost_why = why
        self._flush_lost_log()

    def _flush_lost_log(self) -> None:
        if self._lost_unlogged and self._lost_log.due():
            log.error(
                "%d step event(s) of this run were lost (%s; %d in all): supervisors did not see them, "
                "so a loop among them goes unnoticed; check the connection to NATS and %s",
                self._lost_unlogged, self._lost_why, self.lost, subjects.STEPS_STREAM, extra={"run_id": self.run_id},
            )  # fmt: skip
            self._lost_unlogged = 0


__all__ = ["ACK_TIMEOUT_S", "ACK_WAIT_S", "MAX_UNACKED", "MSG_ID", "STEP_RETRY_S", "StepStream"]
