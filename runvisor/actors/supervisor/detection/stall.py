"""Silent stalls, judged on the supervisor's own clock (DESIGN §4, "Silent stalls").

A worker watches thousands of runs; one timer task per run would not scale. Instead
:class:`StallTimers` keeps one heap per worker with *lazy deletion*: each run has at
most one live deadline, entries whose deadline no longer matches are skipped when they
surface, and a deadline that moved *later* is not pushed at all (it is re-pushed only
when its stale entry surfaces), so the heap stays near one entry per run however many
events arrive.
"""

from __future__ import annotations

import heapq

from runvisor.actors.supervisor.detection.detectors import finding
from runvisor.actors.supervisor.detection.window import RunWindow
from runvisor.protocols.messages import Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import StopReason


def next_deadline(window: RunWindow, policy: Policy) -> float | None:
    """When the run next needs a stall check; ``None`` once it is finished, or while it is paused.

    A paused run is silent on purpose and :func:`check_stall` never judges it; giving it a
    deadline anyway would put it back in the heap at every tick for as long as it stays paused.
    Resuming (an event or a command) schedules it again.
    """
    if window.finished or window.paused:
        return None
    deadline = window.last_seen + policy.stall_timeout_s
    if window.pending:
        oldest = next(iter(window.pending.values()))
        deadline = min(deadline, oldest.seen_at + policy.tool_timeout_s)
    return max(deadline, window.snooze_until)


def check_stall(window: RunWindow, policy: Policy, now: float) -> Verdict | None:
    """TIMEOUT when a running run went silent, or a tool call has no result past its timeout.

    Args:
        window: the run's window.
        policy: the run's policy.
        now: the supervisor's clock.

    Returns:
        A warn-severity verdict naming the silence or the open call, or ``None``.
    """
    if window.finished or window.paused:
        return None
    for call in window.pending.values():
        waited = now - call.seen_at
        if waited >= policy.tool_timeout_s:
            summary = (
                f"seq {call.seq}: tool call `{call.label}` has had no result for {waited:.0f}s "
                f"(tool_timeout_s {policy.tool_timeout_s:g})"
            )
            return finding(window, "stall", StopReason.TIMEOUT, summary, (call.seq,))
    silent = now - window.last_seen
    if silent >= policy.stall_timeout_s:
        summary = (
            f"seq {window.last_seq}: no event for {silent:.0f}s since the last {window.last_kind} "
            f"(stall_timeout_s {policy.stall_timeout_s:g})"
        )
        return finding(window, "stall", StopReason.TIMEOUT, summary, (window.last_seq,))
    return None


class StallTimers:
    """Per-worker deadlines: ``run_id -> deadline`` with a lazily cleaned heap."""

    def __init__(self) -> None:
        """Start with no deadlines."""
        self._heap: list[tuple[float, str]] = []
        self._deadline: dict[str, float] = {}
        # The earliest heap entry of each run: later entries of the same run are stale and
        # skipped, so a run that alternates early and late deadlines adds no entries.
        self._queued: dict[str, float] = {}

    def schedule(self, run_id: str, deadline: float | None) -> None:
        """Set (or with ``None`` clear) the run's deadline; O(log n) at most."""
        if deadline is None:
            self._deadline.pop(run_id, None)
            return
        self._deadline[run_id] = deadline
        queued = self._queued.get(run_id)
        if queued is None or deadline < queued:
            heapq.heappush(self._heap, (deadline, run_id))
            self._queued[run_id] = deadline
        # A later deadline reuses the queued entry: when that surfaces, it is re-pushed.

    def due(self, now: float) -> list[str]:
        """Pop the runs whose deadline is at or before ``now`` (each at most once)."""
        out: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, run_id = heapq.heappop(heap)
            if self._queued.get(run_id) != when:
                continue  # a stale entry: the run's earliest entry speaks for it
            deadline = self._deadline.get(run_id)
            if deadline is None:
                del self._queued[run_id]  # cleared
                continue
            if deadline > now:
                heapq.heappush(heap, (deadline, run_id))  # it moved later: re-arm at the true deadline
                self._queued[run_id] = deadline
                continue
            del self._deadline[run_id]
            del self._queued[run_id]
            out.append(run_id)
        return out

    def next_due(self) -> float | None:
        """The earliest deadline held (possibly stale, never later than the true one)."""
        return self._heap[0][0] if self._heap else None

    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (stays near one per run)."""
        return len(self._heap)

    def __len__(self) -> int:
        """How many runs have a deadline."""
        return len(self._deadline)


__all__ = ["StallTimers", "check_stall", "next_deadline"]
