"""`Measures`: what a supervisor worker measures for its Prometheus metrics (``runvisor.actors.metrics``).

Most of what it reports the worker counts anyway (steps judged, rejections, commands, leases);
this adds the time to judge each step, the verdicts published, and the consumer lag, and turns
all of it into a :class:`WorkerSnapshot` when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from runvisor.actors.metrics import DecisionTally, Timings, WorkerSnapshot
from runvisor.actors.supervisor._follow import StepHandler
from runvisor.protocols.reasons import RunStatus

if TYPE_CHECKING:
    from runvisor.actors.supervisor._follow import Followers
    from runvisor.actors.supervisor.detection.window import RunWindow

#: How often the consumer lag is measured (a request per partition), in seconds.
LAG_EVERY_S = 5.0


class Measures:
    """A worker's processing times, published verdicts and consumer lag."""

    def __init__(self) -> None:
        self.timings = Timings()
        self.decisions = DecisionTally()
        self.lag: dict[int, int] = {}

    def timed(self, handle: StepHandler) -> StepHandler:
        """``handle``, timing each step it judges (two clock reads and a bisect: no lock, no label lookup)."""
        observe, clock = self.timings.observe, time.perf_counter

        async def timed(partition: int, msg: Msg, stored_at: float | None) -> None:
            started = clock()
            await handle(partition, msg, stored_at)
            observe(clock() - started)

        return timed

    async def measure_lag(self, followers: Followers) -> None:
        self.lag = await followers.lag()

    def snapshot(
        self, worker: str, *, processed: int, rejected: Mapping[str, int], commands: int,
        windows: Iterable[RunWindow], partitions: int, lease_changes: Mapping[str, int],
    ) -> WorkerSnapshot:  # fmt: skip
        return WorkerSnapshot(
            worker=worker, processed=processed, rejected={"step": 0, "command": 0, **rejected}, commands=commands,
            runs=run_statuses(windows), partitions=partitions, lease_changes=dict(lease_changes), lag=dict(self.lag),
            processing=self.timings, decisions=self.decisions,
        )  # fmt: skip


def run_statuses(windows: Iterable[RunWindow]) -> dict[str, int]:
    """Runs by status, every status present (0 when none), by the engine's rule: a stop outranks
    completion, which outranks a pause (``Engine.state``)."""
    counts = dict.fromkeys(RunStatus, 0)
    for w in windows:
        status = (
            RunStatus.STOPPED if w.stopped else RunStatus.COMPLETED if w.completed
            else RunStatus.PAUSED if w.paused else RunStatus.RUNNING
        )  # fmt: skip
        counts[status] += 1
    return {status.value: n for status, n in counts.items()}


__all__ = ["LAG_EVERY_S", "Measures", "run_statuses"]
