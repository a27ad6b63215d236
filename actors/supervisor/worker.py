"""The supervisor worker: leases partitions, follows their steps, decides and commands (DESIGN §3, §4).

For each partition it holds, the worker follows ``RV_STEPS`` with an ordered consumer
that starts ``lookback_s`` back in time, so a new owner rebuilds its runs' windows from
the stream. Those consumers read on a connection of their own: a new owner's catch-up is a
flood, and lease renewals, commands and status replies must not queue behind it (on one
connection they did, and a worker lost its own leases while catching up).

Each event goes through the pure :class:`Engine`; verdicts go out as ``Verdict`` JSON on
``rv.event.<run>`` (for people and dashboards), and a confirmed pause or stop as a
``Command`` on ``rv.ctl.<run>`` with a ``Nats-Msg-Id``, so a takeover that replays the
same events never stores a command twice. The worker keeps ``rv_runs`` current
(coalesced: a dirty run is written at most once per ``flush_s``), answers
``rv.status.<run>`` for the runs it owns, and follows operator commands on ``rv.ctl.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from actors.control import last_stored_command
from actors.endpoint import Endpoint
from actors.runtime import Actor
from actors.supervisor.engine import Engine
from actors.supervisor.leases import Leases
from protocols import codec, subjects
from protocols.codec import DecodeError
from protocols.messages import Command, RunState, StepEvent, Verdict
from protocols.policy import Policy

log = logging.getLogger(__name__)

NATS_MSG_ID = "Nats-Msg-Id"
#: Idle heartbeat of the step consumers, in seconds.
CONSUMER_HEARTBEAT_S = 2.0
#: Steps kept per partition while its lease is stale (a renewal is due within a third of the TTL).
MAX_HELD_BACK = 100_000


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


class SupervisorWorker(Actor):
    """One supervisor process; run several side by side and they share the partitions."""

    role = "supervisor"

    def __init__(
        self, endpoint: Endpoint | None = None, *, nc: Any = None, worker_id: str | None = None,
        partitions: int | None = None, lease_ttl_s: float | None = None,
        lookback_s: float = 900.0, idle_s: float = 3600.0, flush_s: float = 1.0, tick_s: float = 1.0,
        policy: Policy | None = None, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        """Args:
        endpoint: where to connect (the supervisor role); discovered when None.
        nc: an existing connection instead.
        worker_id: this worker's name in ``rv_leases`` (default: a random one).
        partitions: P; by default read from ``RV_STEPS``'s partition transform, so workers always
            agree with the stream.
        lease_ttl_s: lease lifetime; by default the ``rv_leases`` bucket's TTL, which is what
            actually expires a dead worker's keys. Leases are renewed every third of it.
        lookback_s: how far back a new owner replays a partition to rebuild windows.
        idle_s: runs silent this long are evicted from memory (their state stays in ``rv_runs``).
        flush_s: how often dirty run states are written to ``rv_runs`` (once a second by default:
            ``rv_runs`` is the view that outlives the worker; ``rv.status`` answers live).
        tick_s: how often silent stalls are checked.
        policy: the default policy for runs whose start event carries none.
        clock: wall clock (seconds), shared with event timestamps.
        """
        super().__init__(endpoint, nc=nc, name=f"supervisor-{worker_id or ''}".rstrip("-"))
        self.worker_id = subjects.check_token(worker_id or uuid.uuid4().hex[:12], "worker id")
        self.name = f"supervisor-{self.worker_id}"
        self.partitions = partitions or subjects.DEFAULT_PARTITIONS
        self._partitions_given = partitions is not None
        self.lease_ttl_s = lease_ttl_s
        self.lookback_s = lookback_s
        self.idle_s = idle_s
        self.flush_s = flush_s
        self.tick_s = tick_s
        self.clock = clock
        self.engine = Engine(policy)
        self.processed = 0
        self.first_at: float | None = None  # wall clock of the first and latest processed event
        self.last_at = 0.0
        self._reported = 0
        self.commands_sent = 0  # a count, not a list: a worker runs for months
        self._following: dict[int, asyncio.Task[None]] = {}
        # Per followed partition, the stream's last sequence when following began: events up to
        # it are history replayed to rebuild windows, and their decisions may be made already.
        self._history_until: dict[int, int] = {}
        self._held_back: dict[int, list[Msg]] = {}  # steps that came while the partition's lease was stale
        self._releasing: set[int] = set()
        self._overflowed: set[int] = set()
        self._dirty: set[str] = set()
        self._js: JetStreamContext | None = None
        self._steps_js: JetStreamContext | None = None
        self._runs_kv: KeyValue | None = None
        self._leases: Leases | None = None

    @property
    def leases(self) -> Leases:
        assert self._leases is not None, "the worker is not started"
        return self._leases

    def owns(self, run_id: str) -> bool:
        return self.leases.holds(subjects.partition_of(run_id, self.partitions))

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        self._js = self.nc.jetstream()
        self._steps_js = (await self.connect_more("steps")).jetstream()
        self._runs_kv = await self._js.key_value(subjects.RUNS_BUCKET)
        lease_kv = await self._js.key_value(subjects.LEASES_BUCKET)
        if not self._partitions_given:
            steps = (await self._js.stream_info(subjects.STEPS_STREAM)).config
            self.partitions = subjects.partitions_in(steps) or self.partitions
        if self.lease_ttl_s is None:
            bucket_ttl = (await self._js.stream_info(f"KV_{subjects.LEASES_BUCKET}")).config.max_age
            self.lease_ttl_s = bucket_ttl or subjects.DEFAULT_LEASE_TTL_S
        self._leases = Leases(
            lease_kv, self.worker_id, self.partitions, self.lease_ttl_s, self._gain, self._lose, time.monotonic
        )
        await self.nc.subscribe(subjects.CTL_ALL, cb=self._on_command)
        await self.nc.subscribe(subjects.STATUS_ALL, cb=self._on_status)
        await self.leases.round()
        log.info("supervisor started with partitions %s", self.leases.owned, extra={"worker": self.worker_id})

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [
            self._every(self.leases.ttl_s / 3, self._lease_round),
            self._every(self.tick_s, self._tick),
            self._every(self.flush_s, self._flush),
        ]

    async def on_stop(self) -> None:
        await self._flush()
        await self.leases.release_all()
        log.info("supervisor stopped; leases released", extra={"worker": self.worker_id})

    async def on_failure(self, exc: BaseException) -> None:
        # The leases are left to expire: the crash may be the connection. Following stops with us.
        for task in self._following.values():
            task.cancel()
        await super().on_failure(exc)

    async def _every(self, period: float, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while not self.stopping.is_set():
            try:
                await work()
            except Exception as exc:  # a failed round is retried next period, never fatal
                log.warning("%s failed: %s", work.__name__, exc, extra={"worker": self.worker_id})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period)

    # -- partitions --------------------------------------------------------------------

    async def _lease_round(self) -> None:
        await self.leases.round()
        # Steps held back while a lease was stale, on a partition that has since gone quiet.
        for partition in [p for p in self._held_back if self.leases.holds(p)]:
            await self._release_held_back(partition)

    async def _gain(self, partition: int) -> None:
        # Following starts in the background: creating a consumer is a request on the steps
        # connection, which may be busy with other partitions' catch-up, and the lease round
        # that called this must not wait for it (its next renewals would be late).
        self._following[partition] = asyncio.create_task(self._follow(partition), name=f"follow-p{partition}")

    async def _follow(self, partition: int) -> None:
        """Follow one partition's steps until cancelled; retry the consumer until it is created."""
        assert self._steps_js is not None
        assert self._js is not None
        since = dt.datetime.fromtimestamp(self.clock() - self.lookback_s, tz=dt.UTC)
        delay = 0.1
        while True:
            try:
                history = await self._js.stream_info(subjects.STEPS_STREAM)
                self._history_until[partition] = history.state.last_seq
                # By sequence, not by start time: nats-py 2.16 re-creates an ordered consumer after
                # a reset (a server restart, missed heartbeats) by sequence but keeps the start time
                # in its request, which the server refuses; the partition would never be read again.
                start = await self._first_seq_since(since) or history.state.last_seq + 1
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
                # Heartbeats every 2 s: a consumer lost with a server restart is noticed (two missed)
                # and re-created within seconds, not the 10-20 s of nats-py's default.
                sub = await self._steps_js.subscribe(
                    subjects.partition_filter(partition), stream=subjects.STEPS_STREAM, ordered_consumer=True,
                    config=config, cb=functools.partial(self._on_step, partition), idle_heartbeat=CONSUMER_HEARTBEAT_S,
                )  # fmt: skip
                _resume_no_earlier_than(sub, start)
                break
            except Exception as exc:  # a held lease with no consumer would be a partition nobody watches
                log.warning("cannot follow partition %d yet: %s", partition, exc, extra={"worker": self.worker_id})
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        try:
            await asyncio.Future()  # until _lose cancels this task
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _first_seq_since(self, since: dt.datetime) -> int | None:
        """The stream sequence of the first step stored at or after ``since``; None when there is none."""
        request = {"start_time": since.isoformat().replace("+00:00", "Z")}
        reply = await self.nc.request(subjects.direct_get(subjects.STEPS_STREAM), codec.json_bytes(request), timeout=5)
        headers = reply.headers or {}
        sequence = headers.get("Nats-Sequence")
        if sequence is not None:
            return int(sequence)
        if headers.get("Status") == "404":
            return None
        raise RuntimeError(f"direct get by start time failed: {headers}")

    async def _lose(self, partition: int) -> None:
        task = self._following.pop(partition, None)
        self._history_until.pop(partition, None)
        self._held_back.pop(partition, None)  # the next owner replays them
        self._overflowed.discard(partition)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gone = [run for run in self.engine.windows if subjects.partition_of(run, self.partitions) == partition]
        self.engine.forget(gone)
        self._dirty.difference_update(gone)

    # -- events ------------------------------------------------------------------------

    async def _on_step(self, partition: int, msg: Msg) -> None:
        if partition not in self._following:
            return  # lost: a step still queued as its consumer goes; the next owner replays it
        if not self.leases.holds(partition):
            # Stale: not ours to decide now. A late renewal may still confirm the lease (the
            # steps are then judged in order) or it is lost (the next owner replays them);
            # dropping them would leave holes in the windows of a partition we keep.
            self._hold_back(partition, msg)
        elif partition in self._held_back:
            self._hold_back(partition, msg)  # behind the ones already waiting, to keep the order
            await self._release_held_back(partition)
        else:
            await self._step(partition, msg)

    def _hold_back(self, partition: int, msg: Msg) -> None:
        held = self._held_back.setdefault(partition, [])
        if len(held) < MAX_HELD_BACK:
            held.append(msg)
        elif partition not in self._overflowed:
            self._overflowed.add(partition)
            log.warning("partition %d: over %d steps held back; dropping more", partition, MAX_HELD_BACK)

    async def _release_held_back(self, partition: int) -> None:
        """Judge the steps held back while the lease was stale, in order, now that it is fresh again."""
        if partition in self._releasing:
            return  # the task already at it also takes what was just added
        self._releasing.add(partition)
        try:
            while held := self._held_back.get(partition):
                self._held_back[partition] = []
                for i, msg in enumerate(held):
                    if not self.leases.holds(partition):  # stale again, or lost meanwhile
                        if partition in self._following:
                            self._held_back[partition] = held[i:] + self._held_back[partition]
                        return
                    await self._step(partition, msg)
            self._held_back.pop(partition, None)
            self._overflowed.discard(partition)
        finally:
            self._releasing.discard(partition)

    async def _step(self, partition: int, msg: Msg) -> None:
        try:
            event = codec.decode(StepEvent, msg.data)
        except DecodeError as exc:
            log.warning("undecodable step on %s: %s", msg.subject, exc, extra={"partition": partition})
            return
        self.processed += 1
        now = self.last_at = self.clock()
        if self.first_at is None:
            self.first_at = now
        verdicts = self.engine.observe(event, now)
        self._dirty.add(event.run_id)
        if verdicts:
            meta = msg.metadata
            replayed = meta.sequence.stream <= self._history_until.get(partition, 0)
            for verdict in verdicts:
                await self._decide(verdict, meta.timestamp if replayed else None)

    async def _tick(self) -> None:
        now = self.clock()
        for verdict in self.engine.tick(now):
            if self.owns(verdict.run_id):
                await self._decide(verdict)
        for run_id in self.engine.evict_idle(now, self.idle_s):
            self._dirty.discard(run_id)

    async def _decide(self, verdict: Verdict, replayed_at: dt.datetime | None = None) -> None:
        """Publish a verdict; a confirmed one also commands the run, once.

        ``replayed_at``: when the deciding event was stored, if it is history this worker is
        replaying after taking the partition over. The stream de-duplicates a repeated command
        but its subscribers (the agent) would still receive it, so a command already stored
        after that event (the previous owner's, or an operator's resume since) wins: it is
        applied to the rebuilt window and nothing is sent.
        """
        run_id = verdict.run_id
        self._dirty.add(run_id)
        if replayed_at is not None and verdict.severity != "warn" and await self._acted_since(run_id, replayed_at):
            return
        extra = {"run_id": run_id, "reason": verdict.reason, "worker": self.worker_id}
        await self.nc.publish(
            subjects.event(run_id), codec.encode_json(verdict), headers={codec.CONTENT_TYPE: codec.JSON}
        )
        if verdict.severity == "warn":
            log.info("warning: %s", verdict.evidence.summary, extra=extra)
            return
        if not self.owns(run_id):
            return
        command = Command(
            cmd=verdict.severity, reason=verdict.reason, issuer=f"supervisor:{self.worker_id}",
            evidence=verdict.evidence, note=verdict.hint or None, at_seq=verdict.at_seq, ts=verdict.ts,
        )  # fmt: skip
        # One stop per run ever; a pause once per reason and onset (DESIGN §3: idempotent decisions).
        msg_id = f"{run_id}:stop" if command.cmd == "stop" else f"{run_id}:pause:{verdict.reason}:{verdict.at_seq}"
        assert self._js is not None
        ack = await self._js.publish(
            subjects.ctl(run_id), codec.encode(command), headers={NATS_MSG_ID: msg_id, **codec.MSGPACK_HEADERS}
        )
        if not ack.duplicate:
            self.commands_sent += 1
            log.warning("%s: %s", command.cmd, verdict.evidence.summary, extra=extra)

    async def _acted_since(self, run_id: str, event_at: dt.datetime) -> bool:
        assert self._js is not None
        stored = await last_stored_command(self._js, run_id)
        if stored is None or stored.stored_at is None or stored.stored_at < event_at:
            return False
        self.engine.apply_command(run_id, stored.command, self.clock())
        log.info(
            "replayed decision not repeated: %s %s since", stored.command.cmd, stored.command.issuer,
            extra={"run_id": run_id, "worker": self.worker_id},
        )  # fmt: skip
        return True

    async def _on_command(self, msg: Msg) -> None:
        run_id = subjects.run_id_of(msg.subject)
        try:
            if not self.owns(run_id):
                return
        except ValueError:
            return
        content_type = msg.headers.get(codec.CONTENT_TYPE) if msg.headers else None
        try:
            command = codec.decode_command(msg.data, content_type)
        except DecodeError as exc:
            # DESIGN §8: a clear error on rv.event and in the log; nothing crashes.
            log.warning("bad command: %s", exc, extra={"run_id": run_id, "worker": self.worker_id})
            error = {"run_id": run_id, "error": str(exc), "subject": msg.subject}
            await self.nc.publish(
                subjects.event(run_id), codec.json_bytes(error), headers={codec.CONTENT_TYPE: codec.JSON}
            )
            return
        self.engine.apply_command(run_id, command, self.clock())
        self._dirty.add(run_id)

    async def _on_status(self, msg: Msg) -> None:
        run_id = subjects.run_id_of(msg.subject)
        try:
            if not msg.reply or not self.owns(run_id):
                return  # the owner answers; silence lets the asker fall back to rv_runs
        except ValueError:
            return
        state = await self._state(run_id)
        await msg.respond(codec.encode_json(state) if state is not None else b"")

    async def _state(self, run_id: str) -> RunState | None:
        if run_id in self.engine.windows:
            return self.engine.state(run_id)
        assert self._runs_kv is not None
        try:
            entry = await self._runs_kv.get(run_id)
        except KeyNotFoundError:
            return None
        return codec.decode(RunState, entry.value) if entry.value else None

    async def _flush(self) -> None:
        """Write dirty run states to ``rv_runs``, pipelined, at most once per ``flush_s`` per run."""
        await self._report()
        if not self._dirty:
            return
        assert self._js is not None
        dirty, self._dirty = self._dirty, set()
        for run_id in dirty:
            if run_id in self.engine.windows and self.owns(run_id):
                state = self.engine.state(run_id)
                await self._js.publish_async(subjects.kv_subject(subjects.RUNS_BUCKET, run_id), codec.encode(state))
        await self._js.publish_async_completed()

    async def _report(self) -> None:
        """Publish throughput on ``rv.stats.<worker>`` when it changed (operators, the bench)."""
        if self.processed == self._reported:
            return
        self._reported = self.processed
        stats = {
            "worker": self.worker_id, "processed": self.processed, "first_at": self.first_at,
            "last_at": self.last_at, "runs": len(self.engine.windows), "commands": self.commands_sent,
            "partitions": self.leases.owned,
        }  # fmt: skip
        await self.nc.publish(subjects.stats(self.worker_id), codec.json_bytes(stats))
