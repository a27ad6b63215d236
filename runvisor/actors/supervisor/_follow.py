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
go back to the head of the queue, to be judged in order; a lost lease discards them, and the next owner replays them.

Steps are judged by one task, apart from nats-py's delivery callbacks, and it hands the event
loop back every ``SLICE_S``. A delivery callback does not yield while its queue is non-empty,
and judging never waits on I/O, so judged inside the callbacks a catch-up held the loop for
seconds at a time: lease renewals (on another connection, but the same loop) waited behind it,
the leases expired, and the worker lost, retook and replayed every partition. Now a renewal
waits one slice at most, however much is queued.

A step of a run the worker has no window for waits on one lookup of the run's first stored step
(is it new, or known from before: DESIGN §3, README "Security"). While one is awaited, the same
lookup starts for the next new runs up the queue, ``LOOKUPS_AHEAD`` at most: the steps are still
judged one at a time, in order, but a burst of new runs waits about one round trip per batch of
them, not one per run. 4,000 new runs sent at once delayed the stop of a loop behind them by 1.7-2.1 s,
now 0.8-1.2 s (``python -m bench.burst``): what is left is each new run's own CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from runvisor.actors.streams.steps import direct_get_step, first_step, stream_sequence
from runvisor.protocols import subjects

log = logging.getLogger(__name__)

#: Idle heartbeat of the step consumers, in seconds: a consumer lost with a server restart is
#: noticed after two missed ones and re-created within seconds (nats-py's default: 10-20 s).
CONSUMER_HEARTBEAT_S = 2.0
#: Steps kept per partition while its lease is stale (a renewal is due within a third of the TTL).
MAX_HELD_BACK = 100_000

#: How long the judging task keeps the event loop before handing it back (seconds).
SLICE_S = 0.005
#: Steps delivered but not yet judged, over all partitions; past this, delivery waits (nats-py's own
#: pending limits then apply, as they did before steps were queued here).
MAX_QUEUED = 50_000
#: First-step lookups for new runs further up the queue kept in flight at once (see the module doc),
#: and how many queued steps one lookup looks through for them.
LOOKUPS_AHEAD = 64
SCAN_AHEAD = 4 * LOOKUPS_AHEAD

#: Judges one step of a partition: (partition, message, when it was stored if it is history, else None).
StepHandler = Callable[[int, Msg, float | None], Awaitable[None]]


class Followers:
    """The step consumers of one worker, and the steps held back while a lease is stale."""

    def __init__(
        self, nc: Client, steps_nc: Client, holds: Callable[[int], bool], handle: StepHandler,
        lookback_s: float, clock: Callable[[], float], worker_id: str, known: Callable[[str], bool],
    ) -> None:  # fmt: skip
        """Args:
        nc: the worker's main connection (direct gets: where a partition's history begins and ends).
        steps_nc: the connection the consumers read on.
        holds: whether the worker's lease on a partition is fresh.
        handle: judges one step of a partition, in order (see ``StepHandler``).
        lookback_s: how far back a new consumer starts.
        clock: wall clock (seconds).
        worker_id: for logs.
        known: whether the worker has a window for a run (its first step is not looked up ahead).
        """
        self._nc = nc
        self._steps_js: JetStreamContext = steps_nc.jetstream()
        self._holds = holds
        self._handle = handle
        self.lookback_s = lookback_s
        self._clock = clock
        self._worker_id = worker_id
        self._known = known
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._subs: dict[int, Any] = {}  # each followed partition's ordered consumer, once created
        # Per followed partition, its last sequence within the lookback when following began, until
        # that step is judged; then 0 (live). Absent while following is still being set up.
        self._history_until: dict[int, int] = {}
        self._held_back: dict[int, list[Msg]] = {}
        self._overflowed: set[int] = set()
        # Delivered steps with the follow task that delivered them: a step of a consumer since
        # replaced (the lease lost, then taken again) is not judged twice.
        self._queue: deque[tuple[int, asyncio.Task[None] | None, Msg]] = deque()
        self._queued = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._judging: asyncio.Task[None] | None = None
        # First-step lookups started ahead, by run, for steps still queued; how many queued steps,
        # from the head, have been looked through for them.
        self._ahead: dict[str, asyncio.Task[Msg | None]] = {}
        self._scanned = 0

    def start(self, partition: int) -> None:
        """Follow ``partition`` from ``lookback_s`` back, in the background.

        Creating a consumer is a request on the steps connection, which may be busy with other
        partitions' catch-up; the lease round that gained the partition must not wait for it.
        """
        self._tasks[partition] = asyncio.create_task(self._follow(partition), name=f"follow-p{partition}")
        if self._judging is None:
            self._judging = asyncio.create_task(self._judge_queued(), name="judge-steps")

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
        """Stop every consumer and the judging at once, without waiting (the worker is failing)."""
        for task in self._tasks.values():
            task.cancel()
        if self._judging is not None:
            self._judging.cancel()

    async def close(self) -> None:
        """Stop judging (the worker has stopped); steps still queued are the next owner's to replay."""
        judging, self._judging = self._judging, None
        if judging is not None:
            judging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await judging
        self._queue.clear()

    def catching_up(self, partition: int) -> bool:
        """Whether ``partition`` is followed and the last step of its history is not judged yet."""
        return partition in self._tasks and self._history_until.get(partition) != 0

    async def lag(self, timeout: float = 2.0) -> dict[int, int]:
        """Per followed partition, the steps stored and not judged yet: those its consumer has still to
        deliver (the server's count), and those delivered and waiting here, queued or held back.

        One request per partition, on the steps connection: for metrics, every few seconds, not per
        step. A partition whose consumer does not answer within ``timeout`` (being re-created after
        a server restart, say) is left out this time.
        """
        queued = Counter(partition for partition, _, _ in self._queue)

        async def pending(partition: int, sub: Any) -> tuple[int, int] | None:
            try:
                info = await asyncio.wait_for(sub.consumer_info(), timeout)
            except Exception:
                return None
            held = len(self._held_back.get(partition, ()))
            return partition, (info.num_pending or 0) + queued[partition] + held

        found = await asyncio.gather(*(pending(p, sub) for p, sub in list(self._subs.items())))
        return dict(item for item in found if item is not None)

    def release_ready(self) -> None:
        """Queue what was held back on partitions whose lease is fresh again (ones gone quiet since).

        Queued, not judged here: the lease round that calls this must not wait for a backlog.
        """
        for partition in [p for p in self._held_back if self._holds(p)]:
            self._requeue(partition)

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
                    config=config, cb=functools.partial(self._deliver, partition, asyncio.current_task()),
                    idle_heartbeat=CONSUMER_HEARTBEAT_S,
                )  # fmt: skip
                _resume_no_earlier_than(sub, start)
                self._subs[partition] = sub
                break
            except Exception as exc:
                log.warning("cannot follow partition %d yet: %s", partition, exc, extra={"worker": self._worker_id})
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        try:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled while a request was being answered: Python 3.11's wait_for can return the
                # answer and lose the cancellation (bpo-42130); waiting here would then never end.
                raise asyncio.CancelledError
            await asyncio.Future()  # until stop() cancels this task
        finally:
            if self._subs.get(partition) is sub:
                del self._subs[partition]
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _direct_get_seq(self, request: dict[str, str]) -> int | None:
        """The stream sequence of the step a direct get on ``RV_STEPS`` finds; None when there is none."""
        found = await direct_get_step(self._nc, request)
        return None if found is None else stream_sequence(found)

    # -- first steps of new runs ---------------------------------------------------------

    async def first_step(self, partition: int, run_id: str) -> Msg | None:
        """The run's first step in ``RV_STEPS`` (see ``streams.steps.first_step``); None when it has none.

        Looked up ahead if it was; meanwhile the lookups of the next queued runs the worker has no
        window for start (see the module doc).
        """
        task = self._ahead.pop(run_id, None)
        self._look_ahead(run_id)
        if task is None:
            return await first_step(self._nc, partition, run_id)
        return await task

    def _look_ahead(self, current: str) -> None:
        ahead, known, start = self._ahead, self._known, self._scanned
        for partition, _, msg in itertools.islice(self._queue, start, start + SCAN_AHEAD):
            if len(ahead) >= LOOKUPS_AHEAD:
                break
            self._scanned += 1
            run_id = subjects.run_id_of(msg.subject)
            if run_id == current or run_id in ahead or known(run_id):
                continue
            task = asyncio.create_task(first_step(self._nc, partition, run_id))
            task.add_done_callback(_retrieved)
            ahead[run_id] = task

    def _forget_ahead(self) -> None:
        """The queue is empty: no lookup made ahead is left to take."""
        self._scanned = 0
        for task in self._ahead.values():
            task.cancel()
        self._ahead.clear()

    # -- steps -------------------------------------------------------------------------

    async def _deliver(self, partition: int, follower: asyncio.Task[None] | None, msg: Msg) -> None:
        """nats-py's delivery callback: queue the step for the judging task, waiting while the queue is full."""
        while len(self._queue) >= MAX_QUEUED:
            self._room.clear()
            await self._room.wait()
        self._queue.append((partition, follower, msg))
        self._queued.set()

    async def _judge_queued(self) -> None:
        """Judge delivered steps in order, one at a time, handing the loop back every ``SLICE_S``."""
        queue = self._queue
        slice_ends = 0.0
        while True:
            if not queue:
                if self._ahead or self._scanned:
                    self._forget_ahead()
                self._queued.clear()
                await self._queued.wait()
                slice_ends = time.perf_counter() + SLICE_S
            partition, follower, msg = queue.popleft()
            if self._scanned:
                self._scanned -= 1
            if len(queue) < MAX_QUEUED // 2 and not self._room.is_set():
                self._room.set()
            if follower is self._tasks.get(partition):  # else lost meanwhile: the next owner replays it
                try:
                    await self._on_step(partition, msg)
                except Exception:  # one step's failure must not stop the judging of every partition
                    log.exception("step on %s not judged", msg.subject, extra={"partition": partition})
            if self._ahead:  # a lookup for this step not taken (judged without one: undecodable, or not new)
                lookup = self._ahead.pop(subjects.run_id_of(msg.subject), None)
                if lookup is not None:
                    lookup.cancel()
            if time.perf_counter() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = time.perf_counter() + SLICE_S

    async def _on_step(self, partition: int, msg: Msg) -> None:
        if self._holds(partition) and partition not in self._held_back:
            await self._judge(partition, msg)
            return
        # Stale: not ours to judge now, nor to drop. Or fresh again, with steps still held back:
        # this one goes behind them, to keep the order.
        self._hold_back(partition, msg)
        if self._holds(partition):
            self._requeue(partition)

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

    def _requeue(self, partition: int) -> None:
        """Put the steps held back on ``partition`` at the head of the queue, in order, for judging now
        that its lease is fresh again (steps queued meanwhile are all later ones)."""
        held = self._held_back.pop(partition, [])
        self._overflowed.discard(partition)
        follower = self._tasks.get(partition)
        self._queue.extendleft((partition, follower, msg) for msg in reversed(held))
        if self._scanned:
            self._scanned += len(held)  # what was looked through is behind them now
        if held:
            self._queued.set()


def _retrieved(task: asyncio.Task[Msg | None]) -> None:
    """A lookup ahead that fails is awaited by nobody when its step is judged without it: no warning."""
    if not task.cancelled():
        task.exception()


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


__all__ = [
    "CONSUMER_HEARTBEAT_S",
    "LOOKUPS_AHEAD",
    "MAX_HELD_BACK",
    "MAX_QUEUED",
    "SLICE_S",
    "Followers",
    "stream_position",
]
