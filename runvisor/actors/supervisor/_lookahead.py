"""`LookAhead`: what a worker must read about a run it has no window for, read as its step arrives.

A step of a run not in memory makes the worker read the run's first step in ``RV_STEPS`` (was
this run seen before? what policy did it start with?) and its state in ``rv_runs`` (how did it
end, what did it spend). Steps are judged one at a time, in order, so those round trips used to
add up: a burst of 10,000 new run ids cost 10,000 round trips in turn, and every valid step
queued behind them waited seconds. Now the reads start when the step is delivered, up to
``MAX_IN_FLIGHT`` at once, and judging the step awaits an answer that is usually there already.

Reading early is safe: the first step of a run does not change once stored (only its deletion
with the stream's age limit), and ``rv_runs`` holds what this worker, the partition's owner,
last wrote there, which it has not changed for a run it had no window for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from runvisor.protocols.messages import RunState

#: Reads in flight or answered but not yet used, over all partitions; past it, a run is read
#: when its step is judged, as before.
MAX_IN_FLIGHT = 256

#: What is read about a run: its first stored step (None: none) and its state in ``rv_runs``.
Found = tuple[Msg | None, RunState | None]
Read = Callable[[int, str], Awaitable[Found]]


class LookAhead:
    """Reads about runs without a window, started on delivery and taken when their step is judged."""

    def __init__(self, read: Read, known: Callable[[str], bool]) -> None:
        """Args:
        read: reads a run's first step and stored state, given its partition and id.
        known: whether the worker has a window for a run (nothing to read then).
        """
        self._read = read
        self._known = known
        self._reads: dict[str, tuple[int, asyncio.Task[Found]]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def delivered(self, partition: int, msg: Msg) -> None:
        """A step was delivered: start reading about its run if the worker has no window for it."""
        run_id = msg.subject.rpartition(".")[2]
        if run_id in self._reads or self._known(run_id):
            return
        if len(self._reads) >= MAX_IN_FLIGHT:
            self._sweep()
            if len(self._reads) >= MAX_IN_FLIGHT:
                return
        task = asyncio.ensure_future(self._read(partition, run_id))
        task.add_done_callback(_retrieve)
        self._reads[run_id] = (partition, task)

    async def found(self, partition: int, run_id: str) -> Found:
        """What is known of ``run_id``: the read started on delivery, else a read now.

        Raises what the read raised (the caller judges the run as new then).
        """
        started = self._reads.pop(run_id, None)
        if started is None:
            return await self._read(partition, run_id)
        return await started[1]

    def forget(self, run_id: str) -> None:
        """The run has a window now: a read started since is not needed, and would be stale by the
        time the run next has none (evicted, its state written since)."""
        started = self._reads.pop(run_id, None)
        if started is not None:
            started[1].cancel()

    def _sweep(self) -> None:
        """Drop the reads for runs that have a window by now (their start was queued before them)."""
        for run_id in [r for r in self._reads if self._known(r)]:
            self._reads.pop(run_id)[1].cancel()

    def drop(self, partition: int) -> None:
        """The partition is not this worker's any more: its reads are not needed."""
        for run_id in [r for r, (p, _) in self._reads.items() if p == partition]:
            self._reads.pop(run_id)[1].cancel()


def _retrieve(task: asyncio.Task[Found]) -> None:
    """Mark a read's failure as seen: it is raised again to whoever takes it, or was not needed."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()


__all__ = ["MAX_IN_FLIGHT", "Found", "LookAhead"]
