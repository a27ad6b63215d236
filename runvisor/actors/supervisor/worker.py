"""The supervisor worker: leases partitions, follows their steps, decides and commands (DESIGN §3, §4).

For each partition it holds, the worker follows ``RV_STEPS`` from ``lookback_s`` back
(:class:`Followers`, on a connection of its own), so a new owner rebuilds its runs' windows
from the stream.

Each event goes through the pure :class:`Engine`; what it decides goes out through
:class:`Decisions` (verdicts on ``rv.event.<run>``, a confirmed pause or stop stored in
``RV_CONTROL`` once). The worker keeps ``rv_runs`` current (coalesced: a dirty run is written
at most once per ``flush_s``), answers ``rv.status.<run>`` for the runs it owns, and follows
operator commands on ``rv.ctl.*``. Sub-agents' spending and ends go through ``rv_family``
(:class:`FamilyLink`, at the same flush cadence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue

from runvisor.actors.connection import Sparing
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.metrics import Metrics, WorkerSnapshot
from runvisor.actors.runtime import Actor
from runvisor.actors.streams.runs import allows_ttl, finished_ttl, read_state
from runvisor.actors.streams.steps import stream_sequence
from runvisor.actors.supervisor._decide import Decisions
from runvisor.actors.supervisor._family import FamilyLink
from runvisor.actors.supervisor._follow import Followers
from runvisor.actors.supervisor._metrics import LAG_EVERY_S, Measures
from runvisor.actors.supervisor._rejections import Rejections
from runvisor.actors.supervisor.detection.engine import Engine
from runvisor.actors.supervisor.leases import Leases
from runvisor.errors import ConfigError
from runvisor.protocols import codec, subjects
from runvisor.protocols.codec import DecodeError
from runvisor.protocols.commands import ENDED, refusal
from runvisor.protocols.messages import Command, RunState, StepEvent
from runvisor.protocols.policy import Policy

log = logging.getLogger(__name__)

#: How long a write to ``rv_runs`` may wait for its acknowledgement before it is retried.
WRITE_TIMEOUT_S = 5.0
#: A run whose state cannot be encoded is logged at most this often (it is retried with its next event).
UNWRITABLE_LOG_EVERY_S = 30.0
#: How long a stopped or completed run stays in memory after its last event (its state is in
#: ``rv_runs``): memory follows the runs that are active, not every run of the last hour.
FINISHED_S = 60.0


class SupervisorWorker(Actor):
    """One supervisor process; run several side by side and they share the partitions."""

    role = "supervisor"

    def __init__(
        self, endpoint: Endpoint | None = None, *, nc: Any = None, worker_id: str | None = None,
        partitions: int | None = None, lease_ttl_s: float | None = None,
        lookback_s: float = 900.0, idle_s: float = 3600.0, finished_s: float = FINISHED_S, flush_s: float = 1.0,
        tick_s: float = 1.0, keep_finished_s: float = subjects.KEEP_FINISHED_S,
        policy: Policy | None = None, clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
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
        finished_s: stopped and completed runs are evicted this long after their last event, once
            their state is written (a late step recalls them from ``rv_runs``).
        flush_s: how often dirty run states are written to ``rv_runs`` (once a second by default:
            ``rv_runs`` is the view that outlives the worker; ``rv.status`` answers live).
        tick_s: how often silent stalls are checked.
        keep_finished_s: how long a stopped or completed run's state stays in ``rv_runs`` after its
            last write (a per-message TTL, see ``streams/runs.py``); a live run's never expires.
        policy: the default policy for runs whose start event carries none.
        clock: wall clock (seconds), shared with event timestamps.
        metrics: the Prometheus registry to report to (``runvisor supervisor --metrics-port``); None: none.
        """
        super().__init__(endpoint, nc=nc, name=f"supervisor-{worker_id or ''}".rstrip("-"))
        self.worker_id = subjects.check_token(worker_id or uuid.uuid4().hex[:12], "worker id")
        self.name = f"supervisor-{self.worker_id}"
        self.partitions = partitions or subjects.DEFAULT_PARTITIONS
        self._partitions_given = partitions is not None
        self.lease_ttl_s = lease_ttl_s
        self.lookback_s = lookback_s
        self.idle_s = idle_s
        self.finished_s = finished_s
        self.flush_s = flush_s
        self.tick_s = tick_s
        self.keep_finished_s = keep_finished_s
        self._ttl = True  # whether rv_runs takes per-message TTLs (checked on start)
        self.clock = clock
        self.engine = Engine(policy)
        self.processed = 0
        self.first_at: float | None = None  # wall clock of the first and latest processed event
        self.last_at = 0.0
        self._reported = (0, 0, 0)  # (processed, rejected, runs) last published on rv.stats
        self._dirty: set[str] = set()
        self._writing: set[str] = set()  # states sent to rv_runs, not yet acknowledged
        self._decisions: Decisions | None = None
        self._family: FamilyLink | None = None  # sub-agents' spending and ends (``_family``)
        self._js: JetStreamContext | None = None
        self._followers: Followers | None = None
        self._runs_kv: KeyValue | None = None
        self._leases: Leases | None = None
        self._unwritable = Sparing(UNWRITABLE_LOG_EVERY_S)
        self._rejections = Rejections()
        self.metrics = metrics
        self.measures = Measures()

    @property
    def leases(self) -> Leases:
        assert self._leases is not None, "the worker is not started"
        return self._leases

    @property
    def decisions(self) -> Decisions:
        assert self._decisions is not None, "the worker is not started"
        return self._decisions

    @property
    def commands_sent(self) -> int:
        return self._decisions.commands_sent if self._decisions is not None else 0

    def owns(self, run_id: str) -> bool:
        return self.leases.holds(subjects.partition_of(run_id, self.partitions))

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        self._js = self.nc.jetstream()
        steps_nc = await self.connect_more("steps")
        self._runs_kv = await self._js.key_value(subjects.RUNS_BUCKET)
        self._ttl = await allows_ttl(self.nc)
        if not self._ttl:  # a TTL there would have every write refused: finished runs are kept instead
            log.warning("rv_runs does not allow per-message TTLs: finished runs stay until `runvisor up` "
                        "provisions it again", extra={"worker": self.worker_id})  # fmt: skip
        lease_kv = await self._js.key_value(subjects.LEASES_BUCKET)
        if not self._partitions_given:
            steps = (await self._js.stream_info(subjects.STEPS_STREAM)).config
            self.partitions = subjects.partitions_in(steps) or self.partitions
        if self.lease_ttl_s is None:
            bucket_ttl = (await self._js.stream_info(f"KV_{subjects.LEASES_BUCKET}")).config.max_age
            self.lease_ttl_s = bucket_ttl or subjects.DEFAULT_LEASE_TTL_S
        self._leases = Leases(
            self._js, lease_kv, self.worker_id, self.partitions, self.lease_ttl_s, self._gain, self._lose,
            time.monotonic, lambda: self.nc.is_connected,
        )  # fmt: skip
        self._decisions = Decisions(
            self.nc, self._js, self.engine, self.owns, self._stored_state, self.stopping, self.clock, self.worker_id,
            on_published=self.measures.decisions.add,
        )  # fmt: skip
        self._family = await FamilyLink.open(
            self._js, steps_nc.jetstream(), self.engine, self._decisions,
            lambda run_id: self.owns(run_id) and not self._catching_up(run_id), self._stored_state, self._dirty_add,
            self.partitions, self.clock, self.worker_id, self.keep_finished_s,
        )  # fmt: skip
        # Steps are timed only for metrics: a worker without them pays nothing per step.
        judge = self._step if self.metrics is None else self.measures.timed(self._step)
        self._followers = Followers(
            self.nc,
            steps_nc,
            self.leases.holds,
            judge,
            self.lookback_s,
            self.clock,
            self.worker_id,
            self.engine.windows.__contains__,
        )
        if self.metrics is not None:
            self.metrics.watch(self.worker_id, self.snapshot)
        await self.nc.subscribe(subjects.CTL_ALL, cb=self._on_command)
        await self.nc.subscribe(subjects.STATUS_ALL, cb=self._on_status)
        await self.leases.round()
        log.info("supervisor started with partitions %s", self.leases.owned, extra={"worker": self.worker_id})

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [
            self._every(self.leases.ttl_s / 3, self._lease_round),
            self._every(self.tick_s, self._tick),
            self._every(self.flush_s, self._flush),
            *([self._every(LAG_EVERY_S, self._measure_lag)] if self.metrics is not None else []),
        ]

    async def on_stop(self) -> None:
        await self.decisions.drain()
        await self._flush()
        await self.leases.release_all()
        await self.followers.close()
        log.info("supervisor stopped", extra={"worker": self.worker_id})

    async def on_failure(self, exc: BaseException) -> None:
        # The leases are left to expire: the crash may be the connection. Following stops with us.
        if self._followers is not None:
            self._followers.cancel_all()
        if self._decisions is not None:
            self._decisions.cancel()
        if self._family is not None:
            self._family.cancel_all()
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

    @property
    def family(self) -> FamilyLink:
        assert self._family is not None, "the worker is not started"
        return self._family

    def _dirty_add(self, run_id: str) -> None:
        self._dirty.add(run_id)

    @property
    def followers(self) -> Followers:
        assert self._followers is not None, "the worker is not started"
        return self._followers

    async def _lease_round(self) -> None:
        await self.leases.round()
        self.followers.release_ready()

    async def _gain(self, partition: int) -> None:
        self.followers.start(partition)
        self.family.follow(partition)

    async def _lose(self, partition: int) -> None:
        # A lease given back is still held while this runs (see ``Leases``): the states the next
        # owner will read are written first, unless this worker's own view was still incomplete.
        complete = not self.followers.catching_up(partition)
        await self.followers.stop(partition)
        await self.family.unfollow(partition)
        gone = [run for run in self.engine.windows if subjects.partition_of(run, self.partitions) == partition]
        if complete and self.leases.holds(partition):
            await self._write_states([run for run in gone if run in self._dirty])
        self.engine.forget(gone)
        self._dirty.difference_update(gone)

    # -- events ------------------------------------------------------------------------

    async def _step(self, partition: int, msg: Msg, stored_at: float | None) -> None:
        """Judge one step; ``stored_at`` (epoch seconds) is given for history (see ``Followers``)."""
        try:
            event = codec.decode(StepEvent, msg.data)
            if not msg.subject.endswith(f".{event.run_id}"):
                # A step is judged as the run whose subject it came on: a payload naming another run
                # would feed that run's window (publish permissions are per subject, not per payload).
                raise DecodeError(f"StepEvent: run_id {event.run_id!r} is not the run of its subject")
        except DecodeError as exc:
            await self._rejected("step", msg.subject, exc, replayed=stored_at is not None)
            return
        self.processed += 1
        now = self.last_at = self.clock()
        if self.first_at is None:
            self.first_at = now
        if event.seq > 1 and event.kind != "start" and event.run_id not in self.engine.windows:
            await self._recall(partition, event.run_id, now)
        if event.kind == "start":
            screened = await self._screen_start(partition, msg, event, now, replayed=stored_at is not None)
            if screened is None:
                return
            event = screened
        # History is seen when it happened: a run already silent before a takeover is not
        # given a fresh stall timeout by being replayed.
        verdicts = self.engine.observe(event, now if stored_at is None else min(now, stored_at))
        self._dirty.add(event.run_id)
        if verdicts:
            for verdict in verdicts:
                await self.decisions.decide(verdict, stored_at)
            self._dirty.add(event.run_id)  # a stored command may have been applied meanwhile

    async def _screen_start(
        self, partition: int, msg: Msg, event: StepEvent, now: float, *, replayed: bool
    ) -> StepEvent | None:
        """A ``start`` for a run already known: refused (None) if the run has ended, for it would be
        judged afresh; else judged without its policy, so that no later start loosens the policy of
        the first (README "Security"). A run not in memory with earlier steps in ``RV_STEPS`` is
        recalled first. A refusal is said on ``rv.event.<run>``; the run stays as it ended."""
        run_id = event.run_id
        if run_id not in self.engine.windows:
            try:
                first = await self.followers.first_step(partition, run_id)
            except Exception as exc:  # judged as a new run, as before this check
                log.warning("earlier steps not looked for: %s", exc, extra={"run_id": run_id, "worker": self.worker_id})
                first = None
            if first is not None and stream_sequence(first) < msg.metadata.sequence.stream:
                await self._recall(partition, run_id, now, first)
        window = self.engine.windows.get(run_id)
        if window is None or not (window.events or window.last_seq):
            return event  # the run's first start (a window may hold only a command): its policy stands
        state = self.engine.state(run_id)
        if state.status in ENDED:
            reason = f", {state.stop_reason.value}" if state.stop_reason else ""
            why = f"run {run_id} has ended ({state.status.value}{reason}); a new run needs a new id"
            await self._rejected("start", msg.subject, ConfigError(why), replayed=replayed)
            return None
        return event if event.policy is None else event.model_copy(update={"policy": None})

    async def _recall(self, partition: int, run_id: str, now: float, first: Msg | None = None) -> None:
        """Before judging a run first seen mid-way, recall its policy from its ``start`` event in
        ``RV_STEPS`` (its ``first`` step there, when it was looked up already) and what it spent,
        and how it ended, from ``rv_runs`` (see ``Engine.recall``)."""
        try:
            if first is None:
                first = await self.followers.first_step(partition, run_id)
            stored = await self._stored_state(run_id)
        except Exception as exc:  # judged from here on, as before there was anything to recall
            log.warning("cannot recall run %s: %s", run_id, exc, extra={"worker": self.worker_id})
            return
        try:
            start = codec.decode(StepEvent, first.data) if first is not None else None
        except DecodeError:
            start = None  # an undecodable first step gives no policy; the stored state still counts
        self.engine.recall(run_id, start, stored, now)

    async def _tick(self) -> None:
        now = self.clock()
        for verdict in self.engine.tick(now):
            if self.owns(verdict.run_id):
                self._dirty.add(verdict.run_id)
                await self.decisions.decide(verdict, from_clock=True)
                self._dirty.add(verdict.run_id)  # a stored command may have been applied meanwhile
        self.engine.evict_idle(now, self.idle_s, self.finished_s, keep=self._unwritten)

    def _unwritten(self, run_id: str) -> bool:
        return run_id in self._dirty or run_id in self._writing

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
            await self._rejected("command", msg.subject, exc)  # DESIGN §8: said on rv.event and in the log
            return
        now = self.clock()
        if run_id not in self.engine.windows:
            stored = await self._stored_state(run_id)
            if stored is not None and (refused := refusal(run_id, stored, command)) and stored.status in ENDED:
                await self._ignored(run_id, command, refused)  # an ended run stays as it was written
                return
            # A command for a run forgotten (idle, or finished), or not written yet: applied to a bare
            # window, it would overwrite the run's counters and task in rv_runs with zeros.
            await self._recall(subjects.partition_of(run_id, self.partitions), run_id, now)
        if run_id not in self.engine.windows:  # no state and no start step: nobody knows this run
            await self._ignored(run_id, command, f"no run {run_id!r} is known")
            return
        state = self.engine.state(run_id)
        if (refused := refusal(run_id, state, command)) is not None:
            if state.status in ENDED:  # a no-op on a live run (a resume of a running one) is just that
                await self._ignored(run_id, command, refused)
            return
        self.engine.apply_command(run_id, command, now)
        self._dirty.add(run_id)

    async def _ignored(self, run_id: str, command: Command, why: str) -> None:
        """Say on the run's ``rv.event`` and in the log that ``command`` was ignored (DESIGN §8): one
        sent with the ``nats`` CLI for a run nobody knows, or one that would change nothing. A
        supervisor's own decision comes back here after its engine applied it: nothing to say."""
        if command.issuer.startswith("supervisor:"):
            return
        log.warning("%s ignored: %s", command.describe(), why, extra={"run_id": run_id, "worker": self.worker_id})
        report = {"run_id": run_id, "error": f"{command.cmd} ignored: {why}", "command": codec.to_wire(command)}
        await self.nc.publish(
            subjects.event(run_id), codec.json_bytes(report), headers={codec.CONTENT_TYPE: codec.JSON}
        )

    async def _rejected(self, what: str, subject: str, exc: Exception, *, replayed: bool = False) -> None:
        """Count a rejected step, start or command; say so sparingly in the log and on the run's ``rv.event``."""
        run_id = subjects.run_id_of(subject)
        said = self._rejections.add(run_id, time.monotonic(), replayed=replayed, kind=what)
        if said.log_count:
            log.warning("%d %s(s) rejected since the last report; the latest, on %s: %s", said.log_count, what,
                        subject, exc, extra={"run_id": run_id, "worker": self.worker_id})  # fmt: skip
        if said.report:
            error = {"run_id": run_id, "error": f"{what} rejected: {exc}", "subject": subject}
            try:
                event_subject = subjects.event(run_id)
            except ValueError:
                return  # not a run id an operator could subscribe to: the log has it
            await self.nc.publish(event_subject, codec.json_bytes(error), headers={codec.CONTENT_TYPE: codec.JSON})

    async def _on_status(self, msg: Msg) -> None:
        run_id = subjects.run_id_of(msg.subject)
        try:
            # Answers go to inboxes only: a reply subject of the asker's choosing (`$KV.rv_runs.<run>`)
            # would have this worker write there for someone who may not.
            if not msg.reply or not subjects.is_inbox(msg.reply) or not self.owns(run_id):
                return  # the owner answers; silence lets the asker fall back to rv_runs
        except ValueError:
            return
        state = await self._state(run_id)
        if state is None:  # JSON either way: `nats req rv.status.RUN ''` is read by people
            await msg.respond(codec.json_bytes({"run_id": run_id, "error": f"no run {run_id!r} is known"}))
            return
        await msg.respond(codec.encode_json(state))

    async def _state(self, run_id: str) -> RunState | None:
        """The run's state: live, or while its partition catches up, the last one written (a
        replay half done is older than that)."""
        known = run_id in self.engine.windows
        if known and not self._catching_up(run_id):
            return self.engine.state(run_id)
        stored = await self._stored_state(run_id)
        return self.engine.state(run_id) if stored is None and known else stored

    async def _stored_state(self, run_id: str) -> RunState | None:
        assert self._runs_kv is not None
        return await read_state(self._runs_kv, run_id)

    def _catching_up(self, run_id: str) -> bool:
        return self.followers.catching_up(subjects.partition_of(run_id, self.partitions))

    async def _flush(self) -> None:
        """Write dirty run states to ``rv_runs`` at most once per ``flush_s`` per run.

        Runs of a partition still catching up wait: their replayed state would rewind what the
        previous owner wrote (a stopped run shown RUNNING until the replay reaches the stop).
        """
        await self._report()
        dirty, self._dirty = self._dirty, set()
        ready = []
        for run_id in dirty:
            if run_id in self.engine.windows and self.owns(run_id):
                if self._catching_up(run_id):
                    self._dirty.add(run_id)
                else:
                    ready.append(run_id)
        await self._write_states(ready)
        await self.family.flush(ready)  # sub-agents' entries, and their parents' budgets and ends

    async def _write_states(self, run_ids: list[str]) -> None:
        """Write the runs' states to ``rv_runs``, pipelined; those not acknowledged stay dirty.

        A finished run sends nothing more, so a write that failed (JetStream unavailable) or
        whose acknowledgement never came (lost in a reconnect: nats-py's own wait for pending
        publishes would then hang for ever) must be retried by the next flush, not forgotten.
        """
        if not run_ids:
            return
        assert self._js is not None
        acks: dict[str, asyncio.Future[PubAck]] = {}
        self._writing.update(run_ids)
        try:
            for run_id in run_ids:
                try:
                    state = self.engine.state(run_id)
                    data = codec.encode_json(state)  # JSON: read by people (DESIGN §8)
                except Exception as exc:  # one run's state must never keep the others' from being written
                    if self._unwritable.due():
                        log.warning("state of run %s cannot be written to rv_runs: %s", run_id, exc,
                                    extra={"run_id": run_id, "worker": self.worker_id})  # fmt: skip
                    continue
                subject = subjects.kv_subject(subjects.RUNS_BUCKET, run_id)
                ttl = finished_ttl(state, self.keep_finished_s) if self._ttl else None
                acks[run_id] = await self._js.publish_async(subject, data, msg_ttl=ttl)
        finally:
            done: set[asyncio.Future[PubAck]] = set()
            if acks:
                done, pending = await asyncio.wait(acks.values(), timeout=WRITE_TIMEOUT_S)
                for ack in pending:
                    ack.cancel()
            # A state that cannot be encoded is not retried: it would fail the same way every flush.
            failed = [run for run in acks if acks[run] not in done or acks[run].exception() is not None]
            self._dirty.update(failed)
            self._writing.difference_update(run_ids)
            if failed:
                log.warning(
                    "%d run states not written to rv_runs; retrying", len(failed), extra={"worker": self.worker_id}
                )

    async def _measure_lag(self) -> None:
        await self.measures.measure_lag(self.followers)

    def snapshot(self) -> WorkerSnapshot:
        """What this worker reports to Prometheus (see ``runvisor.actors.metrics``)."""
        return self.measures.snapshot(
            self.worker_id, processed=self.processed, rejected=self._rejections.by_kind, commands=self.commands_sent,
            windows=self.engine.windows.values(), partitions=len(self.leases.owned),
            lease_changes=self.leases.changes,
        )  # fmt: skip

    async def _report(self) -> None:
        """Publish throughput on ``rv.stats.<worker>`` when it changed (operators, the bench); runs
        forgotten while nothing arrives are a change too."""
        counts = (self.processed, self._rejections.total, len(self.engine.windows))
        if counts == self._reported:
            return
        self._reported = counts
        stats = {
            "worker": self.worker_id, "processed": self.processed, "first_at": self.first_at,
            "last_at": self.last_at, "runs": len(self.engine.windows), "commands": self.commands_sent,
            "rejected": self._rejections.total,
            "partitions": self.leases.owned,
        }  # fmt: skip
        await self.nc.publish(subjects.stats(self.worker_id), codec.json_bytes(stats))
