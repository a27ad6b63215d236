"""The replay harness's pure logic: run-id namespacing, pacing, latency and decision records.

Kept apart from I/O so it is unit-tested without a server.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runvisor.protocols.messages import Command, StepEvent

MAX_RUN_ID = 128


@dataclass
class Namespace:
    """Gives every replayed run a fresh id, so a replay never mixes with earlier ones.

    Decisions from an earlier replay of the same file (or the recorded run itself) live under
    other run ids, so their idempotency keys (``<run>:stop``) and states cannot be confused.
    """

    nonce: str
    _back: dict[str, str] = field(default_factory=dict)

    def forward(self, run_id: str) -> str:
        name = f"{self.nonce}-{run_id}"
        if len(name) > MAX_RUN_ID:
            digest = hashlib.sha1(run_id.encode()).hexdigest()[:12]
            name = f"{self.nonce}-{digest}-{run_id[: MAX_RUN_ID - len(self.nonce) - 14]}"
        self._back[name] = run_id
        return name

    def back(self, replayed: str) -> str | None:
        """The original run id, or None for a run that is not part of this replay."""
        return self._back.get(replayed)


def renamed(event: StepEvent, ns: Namespace) -> StepEvent:
    return event.model_copy(update={"run_id": ns.forward(event.run_id)})


def paced(events: Iterable[StepEvent], speed: float) -> Iterator[tuple[float, StepEvent]]:
    """(offset in seconds, event) in time order, the recorded gaps divided by ``speed``.

    Each run's order is preserved even where its timestamps go backwards (clock skew in a
    recording): an event is never scheduled before the run's previous one. Runs are merged
    by time, so runs recorded one after another but concurrent in time interleave as they
    did live.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    heap: list[tuple[float, int, StepEvent]] = []
    last_in_run: dict[str, float] = {}
    for order, event in enumerate(events):
        ts = max(event.ts, last_in_run.get(event.run_id, event.ts))
        last_in_run[event.run_id] = ts
        heapq.heappush(heap, (ts, order, event))
    if not heap:
        return
    start = heap[0][0]
    while heap:
        ts, _, event = heapq.heappop(heap)
        yield (ts - start) / speed, event


def at_rate(events: Iterable[StepEvent], rate: float) -> Iterator[tuple[float, StepEvent]]:
    """(offset, event) in file order at a constant ``rate`` events per second."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    for i, event in enumerate(events):
        yield i / rate, event


def percentiles(values: list[float], qs: tuple[float, ...] = (50.0, 99.0)) -> list[float | None]:
    if not values:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values), qs)]


def decision_record(command: Command, original_run_id: str) -> dict[str, Any]:
    """A decision as ``bench.score`` reads it."""
    evidence = command.evidence
    return {
        "run_id": original_run_id,
        "reason": command.reason.value if command.reason else None,
        "at_seq": command.at_seq,
        "severity": command.cmd,
        "evidence": evidence.summary if evidence else "",
        "seqs": list(evidence.seqs) if evidence else [],
    }


@dataclass
class Latencies:
    """Publish time of each (run, seq), and the delay until the command it caused arrived."""

    published: dict[tuple[str, int], float] = field(default_factory=dict)
    delays_ms: list[float] = field(default_factory=list)

    def sent(self, run_id: str, seq: int, at: float) -> None:
        self.published[(run_id, seq)] = at

    def arrived(self, run_id: str, at_seq: int | None, at: float) -> None:
        if at_seq is None:
            return
        sent = self.published.get((run_id, at_seq))
        if sent is not None:
            self.delays_ms.append((at - sent) * 1000.0)
