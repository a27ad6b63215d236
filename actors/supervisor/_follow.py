"""`Followers`: how a supervisor worker reads the steps of the partitions it holds (DESIGN §3).

One ordered consumer per held partition, on a connection of its own: a new owner's
catch-up is a flood, and lease renewals, commands and status replies on the worker's main
connection must not queue behind it (on one connection they did, and a worker lost its own
leases while catching up). Each consumer starts ``lookback_s`` back, so a new owner
rebuilds its runs' windows from the stream; the partition's events up to its last sequence
when following began are *history*, whose decisions the previous owner may have made. Until
the last of them is judged the partition is *catching up*: what the worker knows of its runs
is older than what the previous owner last said of them.

While a partition's lease is stale (a renewal is late), its steps are held back, not
judged and not dropped: a late renewal that goes through confirms the partition and they
are judged in order; a lost lease discards them, and the next owner replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from protocols import codec, subjects

log = logging.getLogger(__name__)

#: Idle heartbeat of the step consumers, in seconds: a consumer lost with a server restart is
#: noticed after two missed ones and re-created within seconds (nats-py's default: 10-20 s).
CONSUMER_HEARTBEAT_S = 2.0
#: Steps kept per partition while its lease is stale (a renewal is due within a third of the TTL).
MAX_HELD_BACK = 100_000

#: Judges one step of a partition: (partition, message, when it was stored if it is history, else None).
StepHandler = Callable[[int, Msg, float | None], Awaitable[None]]


class Followers:
    """The step consumers of one worker, and the steps held back while a lease is stale."""

    def __init__(
        self, nc: Client, steps_nc: Client, holds: Callable[[int], bool], handle: StepHandler,
        lookback_s: float, clock: Callable[[], float], worker_id: str,
    ) -> None:  # fmt: skip
        """Args:
        nc: the worker's main connection (direct gets: where a partition's history begins and ends).
        steps_nc: the connection the consumers read on.
        holds: whether the worker's lease on a partition is fresh.
        handle: judges one step of a partition, in order (see ``StepHandler``).
        lookback_s: how far back a new consumer starts.
        clock: wall clock (seconds).
        worker_id: for logs.
        """
        self._nc = nc
        self._steps_js: JetStreamContext = steps_nc.jetstream()
        self._holds = holds
        self._handle = handle
        self.lookback_s = lookback_s
        self._clock = clock
        self._worker_id = worker_id
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Per followed partition, its last sequence within the lookback when following began, until
        # that step is judged; then 0 (live). Absent while following is still being set up.
        self._history_until: dict[int, int] = {}
        self._held_back: dict[int, list[Msg]] = {}
        self._releasing: set[int] = set()
        self._overflowed: set[int] = set()

    def start(self, partition: int) -> None:
        """Follow ``partition`` from ``lookback_s`` back, in the background.

        Creating a consumer is a request on the steps connection, which may be busy with other
        partitions' catch-up; the lease round that gained the partition must not wait for it.
        """
        self._tasks[partition] = asyncio.create_task(self._follow(partition), name=f"follow-p{partition}")

    async def stop(self, partition: int) -> None:
        """Stop following ``partition`` (its lease is gone); what was held back is dropped."""
        task = self._tasks.pop(partition, None)
        self._history_until.pop(partition, None)
        self._held_back.pop(partition, None)  # the next owner replays them
        self._overflowed.discard(partition)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cancel_all(self) -> None:
        """Stop every consumer at once, without waiting (the worker is failing)."""
        for task in self._tasks.values():
            task.cancel()

    def catching_up(self, partition: int) -> bool:
        """Whether ``partition`` is followed and the last step of its history is not judged yet."""
        return partition in self._tasks and self._history_until.get(partition) != 0

    async def release_ready(self) -> None:
        """Judge what was held back on partitions whose lease is fresh again (ones gone quiet since)."""
        for partition in [p for p in self._held_back if self._holds(p)]:
            await self._release(partition)

    # -- consumers ---------------------------------------------------------------------

    async def _follow(self, partition: int) -> None:
        """Follow one partition until cancelled; retry the consumer until it exists (a held lease with
        no consumer would be a partition nobody watches)."""
        since = dt.datetime.fromtimestamp(self._clock() - self.lookback_s, tz=dt.UTC)
        delay = 0.1
        while True:
            try:
                last = await self._direct_get_seq({"last_by_subj": subjects.partition_filter(partition)}) or 0
                first = await self._direct_get_seq({"start_time": since.isoformat().replace("+00:00", "Z")})
                start = first or last + 1
                self._history_until[partition] = last if last >= start else 0  # 0: nothing to replay
                # By sequence, not by start time: nats-py 2.16 re-creates an ordered consumer after
                # a reset (a server restart, missed heartbeats) by sequence but keeps the start time
                # in its request, which the server refuses; the partition would never be read again.
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
                sub = await self._steps_js.subscribe(
                    subjects.partition_filter(partition), stream=subjects.STEPS_STREAM, ordered_consumer=True,
                    config=config, cb=functools.partial(self._on_step, partition), idle_heartbeat=CONSUMER_HEARTBEAT_S,
                )  # fmt: skip
                _resume_no_earlier_than(sub, start)
                break
            except Exception as exc:
                log.warning("cannot follow partition %d yet: %s", partition, exc, extra={"worker": self._worker_id})
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        try:
            await asyncio.Future()  # until stop() cancels this task
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _direct_get_seq(self, request: dict[str, str]) -> int | None:
        """The stream sequence of the step a direct get on ``RV_STEPS`` finds; None when there is none."""
        found = await direct_get_step(self._nc, request)
        return None if found is None else int((found.headers or {})["Nats-Sequence"])

    # -- steps -------------------------------------------------------------------------

    async def _on_step(self, partition: int, msg: Msg) -> None:
        if partition not in self._tasks:
            return  # lost: a step still queued as its consumer goes; the next owner replays it
        if not self._holds(partition):
            self._hold_back(partition, msg)  # stale: not ours to judge now, nor to drop
        elif partition in self._held_back:
            self._hold_back(partition, msg)  # behind the ones already waiting, to keep the order
            await self._release(partition)
        else:
            await self._judge(partition, msg)

    async def _judge(self, partition: int, msg: Msg) -> None:
        """Hand one step to the worker, saying when it was stored if it is history.

        Only a partition still catching up pays for reading the delivery's metadata (its
        reply subject; nats-py's ``msg.metadata`` costs several times more).
        """
        until = self._history_until.get(partition, 0)
        if not until:
            await self._handle(partition, msg, None)
            return
        position = stream_position(msg.reply)
        if position is None or position[0] > until:
            self._history_until[partition] = 0
            await self._handle(partition, msg, None)
            return
        await self._handle(partition, msg, position[1])
        if position[0] == until and partition in self._tasks:
            self._history_until[partition] = 0  # its history is judged

    def _hold_back(self, partition: int, msg: Msg) -> None:
        held = self._held_back.setdefault(partition, [])
        if len(held) < MAX_HELD_BACK:
            held.append(msg)
        elif partition not in self._overflowed:
            self._overflowed.add(partition)
            log.warning("partition %d: over %d steps held back; dropping more", partition, MAX_HELD_BACK)

    async def _release(self, partition: int) -> None:
        """Judge the steps held back while the lease was stale, in order, now that it is fresh again."""
        if partition in self._releasing:
            return  # the task already at it also takes what was just added
        self._releasing.add(partition)
        try:
            while held := self._held_back.get(partition):
                self._held_back[partition] = []
                for i, msg in enumerate(held):
                    if not self._holds(partition):  # stale again, or lost meanwhile
                        if partition in self._tasks:
                            self._held_back[partition] = held[i:] + self._held_back[partition]
                        return
                    await self._judge(partition, msg)
            self._held_back.pop(partition, None)
            self._overflowed.discard(partition)
        finally:
            self._releasing.discard(partition)


async def direct_get_step(nc: Client, request: dict[str, str]) -> Msg | None:
    """The step of ``RV_STEPS`` that a direct get finds (``last_by_subj``, ``next_by_subj``,
    ``start_time``); None when there is none.

    Raises:
        RuntimeError: the server answered with an error other than "not found".
    """
    reply = await nc.request(subjects.direct_get(subjects.STEPS_STREAM), codec.json_bytes(request), timeout=5)
    headers = reply.headers or {}
    if headers.get("Nats-Sequence") is not None:
        return reply
    if headers.get("Status") == "404":
        return None
    raise RuntimeError(f"direct get {request} failed: {headers}")


def stream_position(reply: str | None) -> tuple[int, float] | None:
    """(stream sequence, stored time in epoch seconds) of a JetStream delivery, from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``, or the newer form
    with a domain and an account hash after ``$JS.ACK`` (and a trailing token); None otherwise.
    """
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7]) / 1e9
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[9]) / 1e9
    return None


def _resume_no_earlier_than(sub: Any, start: int) -> None:
    """Make an ordered consumer that has read nothing yet resume at ``start`` after a reset, not at 1.

    nats-py 2.16 (pinned) re-creates an ordered consumer at the last stream sequence it
    delivered plus one, which is 0 + 1 before the first message: a quiet partition would
    replay the whole stream (a week) after a server restart. Its private resume point is
    set to where this consumer really starts; if the internals ever differ, nothing is done.
    """
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    if jsi is not None and getattr(jsi, "_sseq", None) == 0:
        jsi._sseq = start - 1


__all__ = ["CONSUMER_HEARTBEAT_S", "MAX_HELD_BACK", "Followers", "direct_get_step", "stream_position"]
