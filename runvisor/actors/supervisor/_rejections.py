"""What a worker refuses (undecodable steps, malformed commands): counted, and said sparingly.

A flood of bad input once meant one WARNING line per message (14,037 lines for 14,037
undecodable steps), written again on every replay after a takeover. Now every rejection is
counted (``rv.stats``), the log has at most one line per ``every_s`` saying how many came
since the last one, and a run's operator is told on ``rv.event.<run>`` at most once per
``every_s`` per run. History replayed after a takeover was reported by the worker that
judged it first: it is only counted. Pure: the worker does the logging and publishing.
"""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.actors.connection import Sparing

#: Runs remembered for per-run reporting; past this the memory is cleared (a burst of new run ids
#: may then be reported again, never kept without bound).
MAX_REMEMBERED_RUNS = 10_000


@dataclass(frozen=True, slots=True)
class Said:
    """What to say about one rejection."""

    #: Rejections since the last log line, this one included; 0 when no line is due.
    log_count: int
    #: Whether to report it on the run's ``rv.event`` subject.
    report: bool


class Rejections:
    """Counts rejections and decides when they are worth a log line or an event."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self.total = 0
        #: Rejections by kind of message ("step", "command"), replayed ones included: for metrics.
        self.by_kind: dict[str, int] = {}
        self._unlogged = 0
        self._log = Sparing(every_s)
        self._reported_at: dict[str, float] = {}

    def add(self, run_id: str, now: float, *, replayed: bool = False, kind: str = "step") -> Said:
        """Count one rejection of a ``kind`` of message for ``run_id`` at ``now`` (monotonic seconds)."""
        self.total += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if replayed:
            return Said(0, report=False)
        self._unlogged += 1
        log_count = 0
        if self._log.due(now):
            log_count, self._unlogged = self._unlogged, 0
        last = self._reported_at.get(run_id)
        report = last is None or now - last >= self.every_s
        if report:
            if len(self._reported_at) >= MAX_REMEMBERED_RUNS:
                self._reported_at.clear()
            self._reported_at[run_id] = now
        return Said(log_count, report)


__all__ = ["MAX_REMEMBERED_RUNS", "Rejections", "Said"]
