"""Sub-agent families: a parent's budget covers what its sub-agents spend, and a parent that ends
takes its live sub-agents with it (DESIGN §4, budgets "per parent run for sub-agents").

A sub-agent is a run of its own whose ``start`` event names its parent (``Run.start(parent=...)``).
It lies in a partition of its own, so another worker may well judge it. What the parent's
supervisor needs to know of its sub-agents goes through KV ``rv_family``:

- *Written by the sub-agent's supervisor*, at its flush cadence, with ``rv_runs`` (never per
  event: the engine's work per event is unchanged): a :class:`FamilyEntry` under
  ``p<N>.<parent>.<run>``, N the parent's partition, with the run's status and its counters plus
  those of its own sub-agents. Grandchildren so roll up level by level (one flush per level), up to
  :data:`MAX_DEPTH` levels; a cycle of parents (possible only with made-up ids) is counted at most
  that many times over while the depth climbs, never without bound. An ended run's entry is
  written with a per-message TTL (``keep_finished_s``, as in ``rv_runs``); a live one's never
  expires.
- *Read by the parent's supervisor*: each worker follows ``p<N>.>`` for each partition it holds
  (one ordered consumer per partition, the last value of each key, on its steps connection), so it
  sees the sub-agents of exactly the parents it judges, and a new owner rebuilds them from the
  bucket as it rebuilds windows from ``RV_STEPS``. Keyed by the parent's partition rather than by
  the parent alone, because a watch per parent would be a consumer per run, and a watch of the
  whole bucket would send every worker every sub-agent's every write; this way a worker holds
  at most P consumers and reads only what it judges. (``rv_runs`` is keyed by run for people
  and the ``nats`` CLI; a watch of it would be that whole-bucket watch.)
- *Judged at each flush* (:meth:`FamilyLink.flush`), for each parent whose family or own state
  changed: its own counters plus its sub-agents' against its policy's ``max_tokens``,
  ``max_cost_usd``, ``max_steps`` and ``max_tool_calls`` (:func:`overrun`). A family's overrun is
  graded like the run's own budget (``Engine.grade``: with ``warn_first`` a warning, then at the
  next flush the policy's ``budget_action``) and commanded through ``Decisions``. A sub-agent's own
  policy still applies to it alone, in its own supervisor's engine.
- *Ended with their parent*: a parent that is stopped for any reason (killed by an operator,
  stopped for a loop, for its family's budget, ...) ends its live sub-agents: a ``kill`` for a
  killed parent, else a ``stop`` with the parent's reason, each with evidence naming the parent and
  what ended it (:func:`end_command`). A pause for the family's budget pauses them too. The parent's
  supervisor sends these, because it is the one place that sees every way a parent ends (a
  ``runvisor kill``, a ``nats pub rv.ctl.RUN kill``, its own stop, an agent's crash) and knows the
  sub-agents; the CLI would see only the first. Each goes through ``RV_CONTROL`` with a message id
  (``<run>:stop``), so it is stored once, and the sub-agent's supervisor applies it as it applies
  any command. A sub-agent whose entry arrives after its parent ended (it started at that moment)
  is ended when it arrives. A completed parent leaves its sub-agents alone, and a pause by an
  operator is not passed down: each sub-agent is paused and resumed by its own id.

What is kept in memory (:class:`Book`) is what the bucket holds for the partitions a worker owns:
an ended sub-agent's entry is dropped when its TTL would have expired it. A parent evicted from
its supervisor's memory (silent for ``idle_s``) is judged again when it is heard from; one that
ended before its sub-agents' entries came is read from ``rv_runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, PubAck
from nats.js.errors import NotFoundError

from runvisor.actors.connection import Sparing
from runvisor.actors.supervisor._decide import Decisions
from runvisor.actors.supervisor._follow import CONSUMER_HEARTBEAT_S
from runvisor.actors.supervisor.detection.engine import Engine
from runvisor.protocols import codec, subjects
from runvisor.protocols.commands import ENDED
from runvisor.protocols.messages import (
    MAX_COUNT,
    MAX_MONEY,
    MAX_TEXT_CHARS,
    Command,
    Counters,
    Evidence,
    FamilyEntry,
    RunState,
    Verdict,
)
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RECOVERY_HINTS, RunStatus, StopReason

log = logging.getLogger(__name__)

#: Levels of sub-agents a parent's budget covers (the parent's children are level 2).
MAX_DEPTH = 8
#: How often ended sub-agents whose entries have expired are dropped from memory.
SWEEP_EVERY_S = 60.0
#: How long a write to ``rv_family`` may wait for its acknowledgement before it is retried.
WRITE_TIMEOUT_S = 5.0
#: A failure to judge a family is logged at most this often.
LOG_EVERY_S = 30.0

DETECTOR = "family_budget"
#: The budgets a family shares: (what the evidence calls it, the ``Counters`` field, the ``Policy`` field).
LIMITS = (
    ("tokens", "tokens", "max_tokens"),
    ("cost", "cost_usd", "max_cost_usd"),
    ("steps", "steps", "max_steps"),
    ("tool calls", "tool_calls", "max_tool_calls"),
)


# -- pure: what a family spent, and what to do about it -------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """What a run's sub-agents spent, over every level their entries cover."""

    counters: Counters = field(default_factory=Counters)
    sub_agents: int = 0
    depth: int = 0  # levels below the run that ``counters`` covers (0: none)


def add(a: Counters, b: Counters) -> Counters:
    """The sum of two runs' counters, saturated as ``Engine.state`` saturates one run's."""
    return Counters(
        steps=min(a.steps + b.steps, MAX_COUNT),
        tokens=min(a.tokens + b.tokens, MAX_COUNT),
        cost_usd=min(a.cost_usd + b.cost_usd, MAX_MONEY),
        tool_calls=min(a.tool_calls + b.tool_calls, MAX_COUNT),
        retries=min(a.retries + b.retries, MAX_COUNT),
        errors=min(a.errors + b.errors, MAX_COUNT),
    )


def entry_for(state: RunState, parent_run_id: str, family: Family, now: float) -> FamilyEntry:
    """The entry a sub-agent's supervisor writes for it: its own counters, and its family's while
    they cover fewer than :data:`MAX_DEPTH` levels (deeper ones count for nearer ancestors only)."""
    levels = family.depth + 1
    counters, sub_agents = state.counters, 0
    if family.sub_agents and levels <= MAX_DEPTH:
        counters, sub_agents = add(state.counters, family.counters), family.sub_agents
    return FamilyEntry(
        run_id=state.run_id, parent_run_id=parent_run_id, status=state.status, stop_reason=state.stop_reason,
        counters=counters, sub_agents=sub_agents, depth=min(levels, MAX_DEPTH), last_seq=state.last_seq,
        updated_at=now,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Overrun:
    """A budget the run and its sub-agents exceeded together."""

    label: str
    field: str
    own: float
    family: float
    limit: float

    @property
    def total(self) -> float:
        return self.own + self.family


def overrun(policy: Policy, own: Counters, family: Family) -> Overrun | None:
    """The first budget of ``policy`` that the run's own counters keep to and its family's take it over.

    A budget the run exceeds alone is its own budget detector's finding, not the family's.
    """
    if not family.sub_agents:
        return None
    for label, attr, name in LIMITS:
        limit = getattr(policy, name)
        if limit is None:
            continue
        mine, theirs = getattr(own, attr), getattr(family.counters, attr)
        if mine <= limit < mine + theirs:
            return Overrun(label, name, mine, theirs, limit)
    return None


def budget_verdict(run_id: str, over: Overrun, family: Family, at_seq: int, now: float) -> Verdict:
    """The finding that a run and its sub-agents together exceeded a budget of the run's policy."""
    n = family.sub_agents
    summary = (
        f"seq {at_seq}: {over.label} budget exceeded by the run and its {n} sub-agent{'s' if n != 1 else ''}: "
        f"{over.total:g} of {over.limit:g} (policy {over.field}; the run {over.own:g}, its sub-agents {over.family:g})"
    )
    return Verdict(
        run_id=run_id, reason=StopReason.BUDGET_EXCEEDED, severity="warn",
        evidence=Evidence(summary=summary[:MAX_TEXT_CHARS], seqs=(at_seq,)), detector=DETECTOR, at_seq=at_seq,
        ts=now, hint=RECOVERY_HINTS[StopReason.BUDGET_EXCEEDED],
    )  # fmt: skip


def end_command(
    parent_run_id: str, reason: StopReason, why: Verdict | None, member: FamilyEntry, issuer: str, now: float
) -> Command:
    """How a sub-agent ends with its parent, stopped for ``reason`` (``why``: the parent's last verdict):
    killed with a killed parent, else stopped with the parent's reason, the evidence naming the parent."""
    killed = reason is StopReason.USER_KILLED
    said = f"its parent run {parent_run_id} was " + ("killed" if killed else f"stopped ({reason.value})")
    if why is not None and why.reason is reason and why.severity == "stop":
        said = f"{said}: {why.evidence.summary}"
    return Command(
        cmd="kill" if killed else "stop", reason=reason, issuer=issuer,
        note=f"ended with its parent run {parent_run_id}", evidence=Evidence(summary=said[:MAX_TEXT_CHARS]),
        at_seq=member.last_seq, ts=now,
    )  # fmt: skip


def pause_command(parent_run_id: str, why: Verdict, member: FamilyEntry, issuer: str, now: float) -> Command:
    """How a sub-agent is held with its parent, paused for its family's budget (``why``)."""
    said = f"its parent run {parent_run_id} was paused: {why.evidence.summary}"
    return Command(
        cmd="pause", reason=why.reason, issuer=issuer, note=f"paused with its parent run {parent_run_id}",
        evidence=Evidence(summary=said[:MAX_TEXT_CHARS]), at_seq=member.last_seq, ts=now,
    )  # fmt: skip


class Book:
    """The sub-agents of the parents a worker judges, as ``rv_family`` last said, and which of them
    were already told to end with their parent."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, FamilyEntry]] = {}
        self._ended: dict[str, set[str]] = {}
        #: Parents whose family changed since they were last judged.
        self.changed: set[str] = set()

    def __contains__(self, parent_run_id: object) -> bool:
        return parent_run_id in self._members

    def __len__(self) -> int:
        return sum(map(len, self._members.values()))

    def parents(self) -> list[str]:
        return list(self._members)

    def take(self, entry: FamilyEntry) -> None:
        """A sub-agent's new entry."""
        if entry.run_id == entry.parent_run_id:
            return  # never its own sub-agent: it would count itself again at every write
        self._members.setdefault(entry.parent_run_id, {})[entry.run_id] = entry
        self.changed.add(entry.parent_run_id)

    def drop(self, parent_run_id: str, run_id: str) -> None:
        """A sub-agent's entry was deleted."""
        members = self._members.get(parent_run_id)
        if members is not None and members.pop(run_id, None) is not None:
            self.changed.add(parent_run_id)
            if not members:
                self.forget([parent_run_id])

    def members(self, parent_run_id: str) -> list[FamilyEntry]:
        return list(self._members.get(parent_run_id, {}).values())

    def family(self, parent_run_id: str) -> Family:
        """What the run's sub-agents spent, every level their entries cover."""
        members = self._members.get(parent_run_id)
        if not members:
            return Family()
        total = Counters()
        for entry in members.values():
            total = add(total, entry.counters)
        return Family(
            total, sum(1 + entry.sub_agents for entry in members.values()), max(e.depth for e in members.values())
        )

    def to_end(self, parent_run_id: str) -> list[FamilyEntry]:
        """The live sub-agents not yet told to end with their parent."""
        told = self._ended.get(parent_run_id, set())
        return [e for e in self.members(parent_run_id) if e.status not in ENDED and e.run_id not in told]

    def ended(self, parent_run_id: str, run_id: str) -> None:
        """Note that the sub-agent was told to end with its parent."""
        self._ended.setdefault(parent_run_id, set()).add(run_id)

    def forget(self, parents: Iterable[str]) -> None:
        """Drop the families of ``parents`` (their partition is another worker's now)."""
        for parent in list(parents):
            self._members.pop(parent, None)
            self._ended.pop(parent, None)
            self.changed.discard(parent)

    def sweep(self, before: float) -> int:
        """Drop the entries of sub-agents that ended and were last written before ``before`` (their
        TTL has expired them from the bucket); returns how many."""
        dropped = 0
        for parent, members in list(self._members.items()):
            gone = [run for run, e in members.items() if e.status in ENDED and e.updated_at < before]
            for run in gone:
                del members[run]
                self._ended.get(parent, set()).discard(run)
            dropped += len(gone)
            if not members:
                self.forget([parent])
        return dropped


# -- I/O: one worker's side of rv_family ----------------------------------------------------


class FamilyLink:
    """Writes the entries of the sub-agents a worker judges, follows those of its parents' sub-agents,
    and judges its parents' families (see the module doc)."""

    def __init__(
        self, js: JetStreamContext, follow_js: JetStreamContext, engine: Engine, decisions: Decisions,
        judged: Callable[[str], bool], stored_state: Callable[[str], Awaitable[RunState | None]],
        dirty: Callable[[str], None], partitions: int, clock: Callable[[], float], worker_id: str,
        keep_finished_s: float, *, ttl: bool = True, enabled: bool = True,
    ) -> None:  # fmt: skip
        """Args:
        js: the worker's main JetStream context (writes).
        follow_js: the one on its steps connection (the partitions' entries, a flood after a takeover).
        engine: the worker's engine (its runs' windows; grades a family's overrun).
        decisions: sends what is decided (the parent's verdict, its sub-agents' commands).
        judged: whether a run is this worker's to judge now (its lease fresh, its partition caught up).
        stored_state: reads a run's state from ``rv_runs`` (a parent no longer in memory).
        dirty: marks a run's state to be written (a parent graded here).
        partitions: P.
        clock: wall clock (seconds).
        worker_id: the issuer of commands, and for logs.
        keep_finished_s: the TTL of an ended sub-agent's entry.
        ttl: whether the bucket takes per-message TTLs.
        enabled: False when there is no ``rv_family`` bucket (provisioned by an older ``runvisor up``).
        """
        self._js = js
        self._follow_js = follow_js
        self._engine = engine
        self._decisions = decisions
        self._judged = judged
        self._stored_state = stored_state
        self._dirty = dirty
        self.partitions = partitions
        self._clock = clock
        self.worker_id = worker_id
        self.keep_finished_s = keep_finished_s
        self._ttl = ttl
        self.enabled = enabled
        self.book = Book()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._over: set[str] = set()  # parents warned of their family's budget: acted on at the next flush
        self._unwritten: set[str] = set()  # sub-agents whose last write failed
        self._next_sweep = 0.0
        self._sparing = Sparing(LOG_EVERY_S)

    @classmethod
    async def open(
        cls, js: JetStreamContext, follow_js: JetStreamContext, engine: Engine, decisions: Decisions,
        judged: Callable[[str], bool], stored_state: Callable[[str], Awaitable[RunState | None]],
        dirty: Callable[[str], None], partitions: int, clock: Callable[[], float], worker_id: str,
        keep_finished_s: float,
    ) -> FamilyLink:  # fmt: skip
        """A link to ``rv_family`` as provisioned; without the bucket (or the right to read it: a
        deployment's permissions older than it), one that does nothing, said in the log."""
        try:
            info = await js.stream_info(f"KV_{subjects.FAMILY_BUCKET}")
        except Exception as exc:
            why = "no such bucket" if isinstance(exc, NotFoundError) else str(exc) or type(exc).__name__
            log.warning("%s not usable (%s): parents' budgets do not cover their sub-agents, nor do their ends "
                        "end them, until `runvisor up` provisions it", subjects.FAMILY_BUCKET, why,
                        extra={"worker": worker_id})  # fmt: skip
            return cls(js, follow_js, engine, decisions, judged, stored_state, dirty, partitions, clock, worker_id,
                       keep_finished_s, enabled=False)  # fmt: skip
        return cls(js, follow_js, engine, decisions, judged, stored_state, dirty, partitions, clock, worker_id,
                   keep_finished_s, ttl=bool(info.config.allow_msg_ttl))  # fmt: skip

    # -- following ---------------------------------------------------------------------

    def follow(self, partition: int) -> None:
        """Follow the entries of the sub-agents of ``partition``'s runs, in the background."""
        if self.enabled and partition not in self._tasks:
            self._tasks[partition] = asyncio.create_task(self._follow(partition), name=f"family-p{partition}")

    async def unfollow(self, partition: int) -> None:
        """Stop following ``partition`` (its lease is gone) and forget its families."""
        task = self._tasks.pop(partition, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.book.forget(p for p in self.book.parents() if subjects.partition_of(p, self.partitions) == partition)
        self._over = {p for p in self._over if subjects.partition_of(p, self.partitions) != partition}

    def cancel_all(self) -> None:
        """Stop following every partition, without waiting (the worker is failing or stopping)."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _follow(self, partition: int) -> None:
        keys = subjects.kv_subject(subjects.FAMILY_BUCKET, subjects.family_filter(partition))
        delay = 0.1
        while True:
            try:
                sub = await self._follow_js.subscribe(
                    keys, stream=f"KV_{subjects.FAMILY_BUCKET}", ordered_consumer=True,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, cb=self._on_entry,
                    idle_heartbeat=CONSUMER_HEARTBEAT_S,
                )  # fmt: skip
                break
            except Exception as exc:
                log.warning("cannot follow the sub-agents of partition %d yet: %s", partition, exc,
                            extra={"worker": self.worker_id})  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        try:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # lost in a request's wait_for (see ``Followers._follow``)
            await asyncio.Future()  # until unfollow() cancels this task
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_entry(self, msg: Msg) -> None:
        """A sub-agent's entry: taken into the book (its parent is judged at the next flush)."""
        key = msg.subject[len(subjects.kv_subject(subjects.FAMILY_BUCKET, "")) :]
        names = key.split(".")
        if len(names) != 3:
            return
        _, parent, run_id = names
        if not msg.data or (msg.headers or {}).get("KV-Operation"):
            self.book.drop(parent, run_id)
            return
        try:
            entry = codec.decode_stored(FamilyEntry, msg.data)
        except codec.DecodeError as exc:
            if self._sparing.due():
                log.warning("rv_family entry %r ignored: %s", key, exc, extra={"worker": self.worker_id})
            return
        if (entry.parent_run_id, entry.run_id) == (parent, run_id):
            self.book.take(entry)

    # -- flushing ----------------------------------------------------------------------

    async def flush(self, written: Iterable[str]) -> None:
        """Judge the families that changed, then write the entries of the sub-agents whose state
        (``written``: just written to ``rv_runs``) or family changed. Never raises: what fails is
        logged, and tried again at a later flush."""
        if not self.enabled:
            return
        try:
            await self._flush(set(written))
        except Exception as exc:
            if self._sparing.due():
                log.warning("sub-agent families not judged: %s", exc, extra={"worker": self.worker_id})

    async def _flush(self, written: set[str]) -> None:
        now = self._clock()
        book = self.book
        due = book.changed | self._over | {run for run in written if run in book}
        book.changed, self._over = set(), set()
        changed: set[str] = set()
        for parent in due:
            if not self._judged(parent):
                if parent in book:
                    book.changed.add(parent)  # its partition catches up, or its lease is late: later
                continue
            try:
                await self._judge(parent, now)
            except Exception as exc:
                if self._sparing.due():
                    log.warning("family of %s not judged: %s", parent, exc, extra={"worker": self.worker_id})
            changed.add(parent)
        rewrite, self._unwritten = written | changed | self._unwritten, set()
        await self._write(rewrite, now)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            book.sweep(now - self.keep_finished_s)

    async def _judge(self, parent: str, now: float) -> None:
        """Judge one parent's family: end its sub-agents if it was stopped, else check its budgets."""
        window = self._engine.windows.get(parent)
        if window is None:
            if self.book.to_end(parent):  # ended and forgotten before these sub-agents were heard of?
                stored = await self._stored_state(parent)
                if stored is not None and stored.status is RunStatus.STOPPED:
                    await self._end(parent, stored.stop_reason or StopReason.USER_KILLED, stored.last_verdict, now)
            return  # else judged again when it is heard from
        if window.stopped:
            reason = StopReason(window.stop_reason) if window.stop_reason else StopReason.USER_KILLED
            await self._end(parent, reason, window.last_verdict, now)
            return
        if window.completed:
            return
        family = self.book.family(parent)
        over = overrun(window.policy, self._engine.state(parent).counters, family)
        if over is None:
            return
        graded = self._engine.grade(budget_verdict(parent, over, family, window.last_seq, now), now)
        if not graded:
            return  # acted on already: held until an operator says
        self._dirty(parent)
        for verdict in graded:
            await self._decisions.decide(verdict)
        last = graded[-1]
        if last.severity == "warn":
            self._over.add(parent)
        elif last.severity == "pause":
            issuer = f"supervisor:{self.worker_id}"
            for member in self.book.to_end(parent):
                command = pause_command(parent, last, member, issuer, now)
                await self._decisions.command_for(member.run_id, command, parent)
        else:
            await self._end(parent, last.reason, last, now)

    async def _end(self, parent: str, reason: StopReason, why: Verdict | None, now: float) -> None:
        issuer = f"supervisor:{self.worker_id}"
        for member in self.book.to_end(parent):
            command = end_command(parent, reason, why, member, issuer, now)
            await self._decisions.command_for(member.run_id, command, parent)
            self.book.ended(parent, member.run_id)

    async def _write(self, run_ids: set[str], now: float) -> None:
        """Write the entries of the sub-agents among ``run_ids``, pipelined; those not acknowledged are
        written again at the next flush."""
        acks: dict[str, asyncio.Future[PubAck]] = {}
        for run_id in run_ids:
            window = self._engine.windows.get(run_id)
            if window is None or window.parent_run_id is None or not self._judged(run_id):
                continue
            parent = window.parent_run_id
            entry = entry_for(self._engine.state(run_id), parent, self.book.family(run_id), now)
            subject = subjects.kv_subject(subjects.FAMILY_BUCKET, subjects.family_key(parent, run_id, self.partitions))
            ttl = max(1, round(self.keep_finished_s)) if self._ttl and entry.status in ENDED else None
            try:
                acks[run_id] = await self._js.publish_async(subject, codec.encode_json(entry), msg_ttl=ttl)
            except Exception:
                self._unwritten.add(run_id)
        if not acks:
            return
        done, pending = await asyncio.wait(acks.values(), timeout=WRITE_TIMEOUT_S)
        for ack in pending:
            ack.cancel()
        failed = {run for run, ack in acks.items() if ack not in done or ack.exception() is not None}
        self._unwritten |= failed
        if failed and self._sparing.due():
            log.warning("%d sub-agent entries not written to %s; retrying", len(failed), subjects.FAMILY_BUCKET,
                        extra={"worker": self.worker_id})  # fmt: skip


__all__ = [
    "DETECTOR",
    "LIMITS",
    "MAX_DEPTH",
    "Book",
    "Family",
    "FamilyLink",
    "Overrun",
    "add",
    "budget_verdict",
    "end_command",
    "entry_for",
    "overrun",
    "pause_command",
]
