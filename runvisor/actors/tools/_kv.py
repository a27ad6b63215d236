"""What tool executors share through KV: circuit breakers (``rv_breakers``) and results (``rv_results``).

Every write is a compare-and-set (``create`` for a missing key, ``update(last=revision)``
otherwise), so replicas that race never lose each other's changes: the loser reloads and
re-applies the pure transition, which gives the state a serial order would have given.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from runvisor.actors.retry import Admission, Breaker, BreakerState
from runvisor.actors.tools._registry import kv_key
from runvisor.protocols import codec
from runvisor.protocols.messages import ToolResult

log = logging.getLogger(__name__)

R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

#: Lost compare-and-sets tolerated before giving up on persisting one change.
MAX_CONFLICTS = 16


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A breaker state as read from KV, with the revision a CAS write must name (``None``: no key)."""

    state: BreakerState
    revision: int | None


class BreakerStore:
    """Breaker states per tool in KV ``rv_breakers`` (key: the tool name, value: msgpack state).

    Args:
        kv: The ``rv_breakers`` bucket.
        max_conflicts: Lost CAS writes tolerated per change.
    """

    def __init__(self, kv: KeyValue, *, max_conflicts: int = MAX_CONFLICTS) -> None:
        self.kv = kv
        self.max_conflicts = max_conflicts

    async def load(self, tool: str) -> Snapshot:
        """The tool's current state; a missing or unreadable value reads as a fresh (closed) breaker."""
        entry = await _get(self.kv, kv_key(tool))
        if entry is None:
            return Snapshot(BreakerState(), None)
        try:
            return Snapshot(codec.decode(BreakerState, entry.value or b""), entry.revision)
        except codec.DecodeError as exc:
            # A hand-edited or foreign value must not wedge the tool; the next write replaces it.
            log.warning("breaker state unreadable, starting fresh: %s", exc, extra={"tool": tool})
            return Snapshot(BreakerState(), entry.revision)

    async def admit(self, tool: str, breaker: Breaker, now: float) -> tuple[Admission, Snapshot]:
        """``breaker.allow`` on the shared state, written back when the admission changed it."""
        return await self._apply(tool, await self.load(tool), lambda state: _admitted(breaker.allow(state, now)))

    async def record(
        self, tool: str, breaker: Breaker, ok: bool, now: float, *, generation: int, last: Snapshot
    ) -> BreakerState:
        """Fold one attempt's outcome into the shared state.

        Args:
            tool: The tool's name.
            breaker: Its transition rules.
            ok: The attempt succeeded.
            now: Wall-clock time of the outcome.
            generation: ``Admission.generation`` of the attempt.
            last: The snapshot ``admit`` returned; tried first, saving a read when nobody wrote since.
        """

        def step(state: BreakerState) -> tuple[BreakerState, BreakerState]:
            new = breaker.record(state, ok, now, generation=generation)
            return new, new

        state, _ = await self._apply(tool, last, step)
        return state

    async def _apply(
        self, tool: str, snapshot: Snapshot, step: Callable[[BreakerState], tuple[R, BreakerState]]
    ) -> tuple[R, Snapshot]:
        for _ in range(self.max_conflicts):
            result, new = step(snapshot.state)
            if new == snapshot.state:
                return result, snapshot
            try:
                revision = await _cas(self.kv, kv_key(tool), codec.encode(new), snapshot.revision)
            except KeyWrongLastSequenceError:
                snapshot = await self.load(tool)  # another replica wrote first: re-apply on its state
                continue
            return result, Snapshot(new, revision)
        log.warning("breaker state kept changing under us; this change was not saved", extra={"tool": tool})
        return result, snapshot


def _admitted(admission: Admission) -> tuple[Admission, BreakerState]:
    return admission, admission.state


class _Record(BaseModel):
    """What ``rv_results`` holds under an idempotency key: a claim, then the final result."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: Literal["claimed", "done"]
    owner: str = ""
    #: Wall-clock time after which a claim counts as abandoned (its executor died mid-call).
    expires_at: float = 0.0
    result: ToolResult | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """This executor's right to run the call recorded under ``key``."""

    key: str
    revision: int


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A claim whose executor died mid-call (it expired with no result): the call may have taken effect."""

    key: str
    revision: int
    owner: str


class ResultStore:
    """Final tool results by idempotency key in KV ``rv_results``, with claims against double runs.

    Args:
        kv: The ``rv_results`` bucket.
        owner: This executor's name, written into its claims for operators.
        wall: Wall clock, comparable across processes (claims expire by it).
        clock: Monotonic clock for waiting on another executor's claim.
        sleep: Awaited between polls of a claimed key.
        poll_s: Interval between those polls.
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        owner: str,
        wall: Callable[[], float],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]],
        poll_s: float = 0.05,
    ) -> None:
        self.kv = kv
        self.owner = owner
        self._wall = wall
        self._clock = clock
        self._sleep = sleep
        self.poll_s = poll_s

    async def begin(
        self, idempotency_key: str, *, lease_s: float, wait_s: float, take_abandoned: bool = True
    ) -> Claim | Abandoned | ToolResult | None:
        """Claim the key, or get the result recorded under it.

        Args:
            idempotency_key: The request's key (hashed when not a valid KV key).
            lease_s: How long our claim holds before others may take it over.
            wait_s: How long to wait for another executor's claim to turn into a result.
            take_abandoned: Whether a claim left by an executor that died mid-call may be taken over
                (the call run again): only for a tool that is safe to run twice.

        Returns:
            A ``Claim`` (run the tool, then ``record``), the recorded ``ToolResult``, ``Abandoned``
            (a dead executor's claim, not to be taken: ``settle`` it), or ``None`` when another
            executor still holds the key after ``wait_s``.
        """
        key = kv_key(idempotency_key)
        claim = _Record(state="claimed", owner=self.owner, expires_at=self._wall() + lease_s)
        deadline = self._clock() + wait_s
        # Bounded even if an injected clock stands still: one poll per poll_s of waiting, plus races.
        for _ in range(math.ceil(wait_s / self.poll_s) + MAX_CONFLICTS):
            entry = await _get(self.kv, key)
            record = _read(entry.value if entry else None)
            if record is not None and record.state == "done" and record.result is not None:
                return record.result
            abandoned = record is not None and record.expires_at <= self._wall()
            if abandoned and not take_abandoned and record is not None and entry and entry.revision is not None:
                return Abandoned(key, entry.revision, record.owner)
            if entry is None or record is None or abandoned:
                # Free, unreadable, or abandoned by an executor that died: take it with a CAS.
                try:
                    revision = await _cas(self.kv, key, codec.encode(claim), entry.revision if entry else None)
                except KeyWrongLastSequenceError:
                    continue  # someone else claimed or finished it first: look again
                return Claim(key, revision)
            if self._clock() >= deadline:
                return None
            await self._sleep(self.poll_s)
        return None

    async def record(self, claim: Claim, result: ToolResult) -> None:
        """Store the final result, so a repeat of the request replays it."""
        await self.kv.put(claim.key, codec.encode(_Record(state="done", owner=self.owner, result=result)))

    async def settle(self, abandoned: Abandoned, result: ToolResult) -> None:
        """Record ``result`` as the final word on an abandoned call, so no executor ever runs it.

        Another executor settling it first (the same word, from the same tool policy) is fine.
        """
        done = codec.encode(_Record(state="done", owner=self.owner, result=result))
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.update(abandoned.key, done, last=abandoned.revision)

    async def release(self, claim: Claim) -> None:
        """Drop our claim without a result (the tool never ran), so the call may be made again."""
        with contextlib.suppress(KeyWrongLastSequenceError, nats.errors.Error, TimeoutError):
            await self.kv.delete(claim.key, last=claim.revision)


def _read(data: bytes | None) -> _Record | None:
    if not data:
        return None
    try:
        return codec.decode(_Record, data)
    except codec.DecodeError as exc:
        log.warning("unreadable record in the results bucket is treated as free: %s", exc)
        return None


async def _get(kv: KeyValue, key: str) -> KeyValue.Entry | None:
    try:
        return await kv.get(key)
    except KeyNotFoundError:
        return None


async def _cas(kv: KeyValue, key: str, value: bytes, revision: int | None) -> int:
    """Write ``value`` only if the key is still at ``revision`` (``None``: still missing)."""
    if revision is None:
        created: int = await kv.create(key, value)
        return created
    updated: int = await kv.update(key, value, last=revision)
    return updated


__all__ = ["Abandoned", "BreakerStore", "Claim", "ResultStore", "Snapshot"]
