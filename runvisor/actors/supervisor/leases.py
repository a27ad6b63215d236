"""Partition leases in KV ``rv_leases`` (DESIGN §3): who watches which runs.

Each worker heartbeats a membership key ``m.<worker>`` and holds partitions by key
``p<N>``: ``create()`` takes a free one, ``update(last=rev)`` renews it (compare-and-set),
the bucket's TTL expires a dead worker's keys, and every round a worker keeps at most
``ceil(P / members)`` partitions, releasing extras so newcomers can take them. A lease
counts as held only while its last renewal is younger than the TTL (minus a margin):
a worker that cannot renew stops acting on the partition at once, before anyone else
can have taken it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runvisor.actors.streams._bucket import latest_values
from runvisor.protocols import subjects

log = logging.getLogger(__name__)

#: A lease is trusted for this fraction of the TTL after its last renewal.
VALIDITY = 0.8

PartitionHook = Callable[[int], Awaitable[None]]

#: JetStream's error codes for a write whose expected last revision did not match.
_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass
class _Held:
    revision: int
    renewed_at: float


def fair_share(partitions: int, members: int) -> int:
    """How many partitions one worker should hold."""
    return math.ceil(partitions / max(1, members))


def preference(worker_id: str, partitions: int) -> list[int]:
    """The order in which a worker tries partitions: rotated by its id, so workers rarely race."""
    start = zlib.crc32(worker_id.encode()) % partitions
    return [(start + i) % partitions for i in range(partitions)]


class Leases:
    """One worker's partition leases. Call :meth:`round` every ``ttl_s / 3`` seconds.

    ``on_lose`` runs after a lost lease is dropped (the worker may no longer act on the
    partition), and before a lease given back is (it still may, one last time).
    """

    def __init__(
        self, js: JetStreamContext, kv: KeyValue, worker_id: str, partitions: int, ttl_s: float,
        on_gain: PartitionHook, on_lose: PartitionHook, clock: Callable[[], float] = time.monotonic,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:  # fmt: skip
        self.js = js
        self.kv = kv
        self.worker_id = worker_id
        self.partitions = partitions
        self.ttl_s = ttl_s
        self.on_gain = on_gain
        self.on_lose = on_lose
        self.clock = clock
        self.connected = connected
        self._held: dict[int, _Held] = {}
        self._value = worker_id.encode()
        #: Leases taken, given back and lost (not renewed in time, or taken over) since start: for metrics.
        self.changes = {"gained": 0, "released": 0, "lost": 0}

    @property
    def owned(self) -> list[int]:
        return sorted(self._held)

    def holds(self, partition: int) -> bool:
        """True while this worker may act on ``partition`` (its lease is fresh)."""
        held = self._held.get(partition)
        return held is not None and self.clock() - held.renewed_at < self.ttl_s * VALIDITY

    async def round(self) -> None:
        """Heartbeat, renew what is held, give back extras, take free partitions up to the fair share."""
        await self.kv.put(subjects.member_key(self.worker_id), self._value)
        await self._renew()
        target = fair_share(self.partitions, await self._members())
        before = set(self._held)
        for partition in self.owned[target:]:
            await self._release(partition)
        if len(self._held) < target:
            await self._acquire(target)
        if set(self._held) != before:
            log.info("holding %d partitions %s (fair share %d)", len(self._held), self.owned, target,
                     extra={"worker": self.worker_id})  # fmt: skip

    async def release_all(self) -> None:
        """Give every lease back (graceful stop), so others take over without waiting for the TTL.

        One partition whose hand-over fails does not keep the others: each failure is logged, and
        a lease not given back expires with the TTL. With the server out of reach, none is tried:
        each would wait for its timeout (32 leases took 160 s to stop a worker).
        """
        for partition in self.owned:
            if not self.connected():
                log.warning("%d lease(s) not given back: NATS is out of reach; they expire in %.0fs",
                            len(self._held), self.ttl_s, extra={"worker": self.worker_id})  # fmt: skip
                return
            try:
                await self._release(partition)
            except Exception as exc:
                log.warning("lease not given back cleanly: %s", exc,
                            extra={"partition": partition, "worker": self.worker_id})  # fmt: skip
        try:
            await self.kv.delete(subjects.member_key(self.worker_id))
        except Exception as exc:  # best effort: the TTL expires it anyway
            log.warning("could not remove membership: %s", exc, extra={"worker": self.worker_id})

    async def _members(self) -> int:
        # Not ``kv.keys()``: under load it can find no keys at all (see ``latest_values``), and
        # a worker counting itself alone would keep every partition it holds.
        return max(1, len(await latest_values(self.js, subjects.LEASES_BUCKET, "m.>")))

    async def _renew(self) -> None:
        # All at once: one round trip for every lease, however busy the connection is.
        await asyncio.gather(*(self._renew_one(partition) for partition in self.owned))

    async def _renew_one(self, partition: int) -> None:
        held = self._held[partition]
        started = self.clock()
        try:
            revision = await self.kv.update(subjects.lease_key(partition), self._value, last=held.revision)
        except KeyWrongLastSequenceError:
            if self._held.get(partition) is held and (lost := await self._still_ours(partition, held, started)):
                log.warning("lease lost: %s", lost, extra={"partition": partition, "worker": self.worker_id})
                await self._drop(partition)
        except Exception as exc:
            # Keep trying until the lease goes stale; holds() already refuses to act on it then.
            log.warning("lease renewal failed: %s", exc, extra={"partition": partition, "worker": self.worker_id})
            if self._held.get(partition) is held and not self.holds(partition):
                await self._drop(partition)
        else:
            held.revision = revision
            held.renewed_at = started

    async def _still_ours(self, partition: int, held: _Held, started: float) -> str | None:
        """After a failed compare-and-set: None if the lease still names this worker (renewed now),
        else how it was lost.

        A renewal whose write landed but whose reply was lost (a failover, a slow server) leaves the
        revision held one behind; the lease is still this worker's, and dropping it would hand every
        partition round for nothing. Its value names its owner, so reading it settles the question.
        """
        key = subjects.lease_key(partition)
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return "it expired (the server was unreachable, or this worker stalled, for longer than its TTL)"
        except Exception as exc:
            return f"it cannot be read ({exc or type(exc).__name__})"
        if entry.value != self._value:
            return f"taken by {(entry.value or b'?').decode(errors='replace')}"
        try:
            revision = await self.kv.update(key, self._value, last=entry.revision)
        except Exception as exc:  # taken meanwhile, or unreachable
            return f"it could not be renewed ({exc or type(exc).__name__})"
        held.revision = revision
        held.renewed_at = started
        return None

    async def _acquire(self, target: int) -> None:
        """Take free partitions up to ``target``, trying as many at once as are missing.

        One at a time, taking 32 partitions under load took seconds, and the first ones taken
        expired before the round that renews them came.
        """
        candidates = [p for p in preference(self.worker_id, self.partitions) if p not in self._held]
        while candidates and (missing := target - len(self._held)) > 0:
            batch, candidates = candidates[:missing], candidates[missing:]
            for partition in await asyncio.gather(*(self._take(partition) for partition in batch)):
                if partition is not None:
                    await self.on_gain(partition)

    async def _take(self, partition: int) -> int | None:
        """Create the lease on ``partition``; None when a live worker holds it."""
        started = self.clock()
        try:
            revision = await self.kv.create(subjects.lease_key(partition), self._value)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None  # held by a live worker (or given back and expired while nats-py retried)
        self._held[partition] = _Held(revision, started)
        self.changes["gained"] += 1
        log.debug("lease taken", extra={"partition": partition, "worker": self.worker_id})
        return partition

    async def _release(self, partition: int) -> None:
        held = self._held.get(partition)
        if held is None:
            return
        # Given back, not lost: the lease is still held while ``on_lose`` runs, so the worker
        # can write its last word on the partition's runs before anyone else can take it.
        try:
            await self.on_lose(partition)
        finally:
            self._held.pop(partition, None)
            self.changes["released"] += 1
        try:
            await self.kv.delete(subjects.lease_key(partition), last=held.revision)
        except (KeyNotFoundError, KeyDeletedError, KeyWrongLastSequenceError):
            pass  # already expired or taken: nothing to give back
        except APIError as exc:
            # nats-py turns a failed compare-and-set into KeyWrongLastSequenceError for update() and
            # create() but not for delete(): the lease is someone else's now, nothing to give back.
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise
        log.debug("lease released", extra={"partition": partition, "worker": self.worker_id})

    async def _drop(self, partition: int) -> None:
        if self._held.pop(partition, None) is not None:
            self.changes["lost"] += 1
            await self.on_lose(partition)
