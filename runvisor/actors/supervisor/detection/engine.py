"""`Engine`: every run's window, the detectors, and the grading of their findings (DESIGN §4, §5).

Grading, per run and per reason, from the run's :class:`Policy`:

* with ``warn_first`` a "warn" verdict comes first: when a pattern is one step short of its
  threshold (detectors asked with ``slack=1``), or else at the first finding; the finding
  at the threshold after a warning (one more repeat, or the same finding again later)
  gets the policy's action severity ("pause" or "stop"). Thresholds in the policy are
  therefore where the engine acts, as their descriptions say;
* a reason acts once per pause: a paused run is not paused again for the same reason,
  because the operator decides what happens next. When the run is resumed, the detectors
  watch afresh from there (``RunWindow.rearm``), and a reason that paused it before acts
  without a new warning and with the stronger action: a pause becomes a stop;
* after a "stop" the run is finished for the engine: never two stops for one run, and a
  later ``start`` for it changes nothing (nor does one loosen a running run's policy);
* a ``final`` event completes the run.

The engine does no I/O and reads no clock: callers pass ``now`` (the supervisor's
clock), so the NATS worker, the offline bench and the tests drive it the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from runvisor.actors.supervisor.detection.detectors import ACTION_DETECTORS, Budget, Detector, finding
from runvisor.actors.supervisor.detection.fingerprint import short
from runvisor.actors.supervisor.detection.stall import StallTimers, check_stall, next_deadline
from runvisor.actors.supervisor.detection.window import RunWindow
from runvisor.protocols.commands import CommandState, fold
from runvisor.protocols.conventions import final_reason, heartbeat_status
from runvisor.protocols.messages import MAX_COUNT, MAX_MONEY, Command, Counters, RunState, StepEvent, Verdict
from runvisor.protocols.policy import Policy, Severity
from runvisor.protocols.reasons import RunStatus, StopReason

log = logging.getLogger(__name__)

_BUDGET = Budget()
#: One bit per reason: a window's ``warned`` and ``acted`` are masks of these (a set costs 216 bytes a run).
_BIT: dict[str, int] = {reason: 1 << k for k, reason in enumerate(StopReason)}


def action_severity(policy: Policy, reason: StopReason) -> Severity:
    """The severity the policy assigns to a confirmed finding of ``reason``."""
    if reason is StopReason.LOOP_DETECTED:
        return policy.loop_action
    if reason is StopReason.NO_PROGRESS:
        return policy.progress_action
    if reason is StopReason.TIMEOUT:
        return policy.stall_action
    if reason is StopReason.BUDGET_EXCEEDED:
        return policy.budget_action
    return policy.failure_action


class Engine:
    """Pure supervision logic for many runs: feed events and clock ticks, get verdicts."""

    def __init__(self, policy: Policy | None = None, detectors: tuple[Detector, ...] = ACTION_DETECTORS) -> None:
        """Create an engine.

        Args:
            policy: the default policy for runs whose ``start`` event carries none.
            detectors: the action detectors, in priority order.
        """
        self.policy = policy or Policy()
        self.detectors = detectors
        self.windows: dict[str, RunWindow] = {}
        self.timers = StallTimers()

    def observe(self, event: StepEvent, now: float) -> list[Verdict]:
        """Fold one step event into its run's window and return the graded verdicts it causes.

        Args:
            event: the next event of a run (runs may begin mid-way, without ``start``).
            now: the supervisor's clock at arrival.

        Returns:
            Zero or more verdicts: warnings, and at most one action per reason.
        """
        kind = event.kind
        window = self.windows.get(event.run_id)
        if window is None:
            window = RunWindow(event.run_id, event.policy or self.policy)
            self.windows[event.run_id] = window
        elif kind == "start":
            # A run that has ended stays as it ended, and a run's policy is the one it started with:
            # a later start (a retry of the agent's, or anyone's) neither reopens nor loosens it.
            if window.finished:
                return []
            if window.events and event.seq <= window.last_seq:
                # Folded already: the start recalled for a command that came before it (a pause
                # taken as activity after itself would resume the run), or a repeat of it.
                return []
            if event.policy is not None and window.events == 0:
                window.set_policy(event.policy)  # the window exists for a command that came first
        if kind == "heartbeat":
            said = heartbeat_status(event)
            if said is not None:
                self._agent_says(window, *said)
        elif window.paused:
            # Activity after a pause: the run was resumed (its resume command may come after its
            # steps), or (from our SDK) a step still in flight when the pause was sent; the SDK's
            # PAUSED heartbeat then says so again.
            self._resumed(window)
        acted = window.observe(event, now)
        if kind == "final" and final_reason(event) is StopReason.AGENT_CRASHED and not window.stopped:
            return self._crashed(window, event, now)
        if window.finished:
            self.timers.schedule(event.run_id, None)
            return []
        policy = window.policy
        verdicts: list[Verdict] = []
        if acted or window.budgeted:
            # Findings by reason, in the order graded; a confirmed finding replaces (and moves
            # behind) an early one of the same reason.
            findings: dict[str, tuple[Verdict, bool]] = {}
            # A budget is a hard figure with no early stage (slack changes nothing): asked once, when any is set.
            if window.budgeted:
                self._run(_BUDGET, window, policy, findings, early=False)
            if acted:
                run, signals = self._run, window.signals
                for detector in self.detectors:
                    needs = detector.needs
                    if needs & signals == needs:
                        run(detector, window, policy, findings)
            if findings:
                verdicts = self._grade(window, findings.values(), now)
        self.timers.schedule(event.run_id, next_deadline(window, policy))
        return verdicts

    def recall(self, run_id: str, start: StepEvent | None, stored: RunState | None, now: float) -> None:
        """Rebuild what a run first seen mid-way no longer shows, before its next event is observed.

        A takeover whose replay began after the run's start, or a run back after its eviction,
        would otherwise be judged from zero under the default policy: its budgets would start
        again, and a stopped run heard from again would be judged anew.

        Args:
            run_id: the run, not yet in a window.
            start: its first stored event; when it is the ``start`` event, it gives the policy.
            stored: its state in ``rv_runs`` (see ``RunWindow.restore``).
            now: the supervisor's clock.
        """
        if run_id in self.windows:
            return
        if start is not None and start.kind == "start" and start.run_id == run_id:
            self.observe(start, now)
        if stored is None:
            return
        window = self.windows.get(run_id)
        if window is None:
            window = self.windows[run_id] = RunWindow(run_id, self.policy)
            window.last_seen = now
        window.restore(stored)
        self.timers.schedule(run_id, None if window.finished else next_deadline(window, window.policy))

    def _crashed(self, window: RunWindow, event: StepEvent, now: float) -> list[Verdict]:
        """The agent's own code raised: the run is STOPPED as AGENT_CRASHED, with the error as evidence."""
        window.stopped = True
        window.stop_reason = StopReason.AGENT_CRASHED
        summary = f"seq {event.seq}: the agent's code raised {short(event.error, 200) or 'an error'}"
        window.last_verdict = finding(window, "agent", StopReason.AGENT_CRASHED, summary, (event.seq,), spent=False)
        window.last_verdict = window.last_verdict.model_copy(update={"severity": "stop", "ts": now})
        self.timers.schedule(window.run_id, None)
        log.info("run_id=%s ended: %s", window.run_id, summary)
        return []  # the run has ended already: nothing to command, only the state to tell

    @staticmethod
    def _agent_says(window: RunWindow, status: RunStatus, reason: StopReason | None) -> None:
        """Take the state an agent reports in a heartbeat (see ``heartbeat_args``); a stop stays a stop."""
        if window.stopped:
            return
        if status is RunStatus.PAUSED:
            window.paused = True
            window.stop_reason = reason or window.stop_reason or StopReason.USER_PAUSED
        elif status is RunStatus.RUNNING and window.paused:
            Engine._resumed(window)

    @staticmethod
    def _resumed(window: RunWindow) -> None:
        """A paused run goes on: watch it afresh, and escalate what paused it (see the module doc)."""
        window.paused = False
        window.stop_reason = None
        window.escalate |= window.acted
        window.warned |= window.acted
        window.acted = 0
        window.rearm()

    @staticmethod
    def _run(
        detector: Detector,
        window: RunWindow,
        policy: Policy,
        findings: dict[str, tuple[Verdict, bool]],
        early: bool = True,
    ) -> None:
        """Ask one detector, at its threshold and, when a warning is still due, one step before it.

        Detectors are monotone in ``slack``: a finding at the threshold is also one a step
        before it. So when a warning is due the early question goes first, and its usual
        answer (nothing) settles both: one call per detector on most actions, not two.
        """
        reason = detector.reason
        bit = _BIT[reason]
        if window.acted & bit:
            return
        found = findings.get(reason)
        if found is not None and found[1]:
            return
        if early and policy.warn_first and not window.warned & bit and found is None:
            warning = detector.check(window, policy, slack=1)
            if warning is None:
                return
            verdict = detector.check(window, policy)
            findings[reason] = (warning, False) if verdict is None else (verdict, True)
            return
        verdict = detector.check(window, policy)
        if verdict is not None:
            findings.pop(reason, None)
            findings[reason] = (verdict, True)

    def grade(self, verdict: Verdict, now: float) -> list[Verdict]:
        """Grade a confirmed finding made outside the run's window as its own findings are graded.

        For a parent's budget spent with its sub-agents (``supervisor/_family.py``): with
        ``warn_first`` a warning comes first and the next finding acts, once per reason.

        Returns:
            The graded verdict, or nothing for a run unknown or finished, or already acted on for it.
        """
        window = self.windows.get(verdict.run_id)
        if window is None or window.finished:
            return []
        verdicts = self._grade(window, [(verdict, True)], now)
        self.timers.schedule(window.run_id, next_deadline(window, window.policy))
        return verdicts

    def tick(self, now: float) -> list[Verdict]:
        """Check the runs whose stall deadline has passed; call it periodically.

        Args:
            now: the supervisor's clock.

        Returns:
            Graded TIMEOUT verdicts.
        """
        out: list[Verdict] = []
        for run_id in self.timers.due(now):
            window = self.windows.get(run_id)
            if window is None or window.finished:
                continue
            policy = window.policy
            verdict = check_stall(window, policy, now)
            if verdict is not None:
                out.extend(self._grade(window, [(verdict, True)], now))
                # Confirmation needs another full period of silence, not the next tick.
                window.snooze_until = now + min(policy.stall_timeout_s, policy.tool_timeout_s)
            self.timers.schedule(run_id, next_deadline(window, policy))
        return out

    def evict_idle(
        self, now: float, idle_s: float, finished_s: float | None = None, keep: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Forget runs with no event for ``idle_s`` seconds, and finished ones (stopped or
        completed) after ``finished_s`` (default ``idle_s``); never one that ``keep`` names (its
        state not written yet). A forgotten run that goes on is recalled (see :meth:`recall`).

        Returns:
            The evicted run ids.
        """
        done_s = idle_s if finished_s is None else finished_s
        gone = [
            run_id
            for run_id, w in self.windows.items()
            if now - w.last_seen >= (done_s if w.finished else idle_s) and (keep is None or not keep(run_id))
        ]
        for run_id in gone:
            del self.windows[run_id]
            self.timers.schedule(run_id, None)
        return gone

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop runs this worker no longer owns (a lost partition); their timers go too."""
        for run_id in list(run_ids):
            self.windows.pop(run_id, None)
            self.timers.schedule(run_id, None)

    def apply_command(self, run_id: str, command: Command, now: float) -> None:
        """Reflect a control command (from an operator or a supervisor) in the run's state.

        The rules are the agent's own (``protocols.commands.fold``): ``pause`` marks the run
        paused (stall checks hold off), ``resume`` lets a paused run go on, ``kill``/``stop``
        end it, and an ended run (stopped or completed) stays as it ended.
        """
        window = self.windows.get(run_id)
        if window is None:
            window = RunWindow(run_id, self.policy)
            window.last_seen = now
            self.windows[run_id] = window
        before = CommandState(_status(window), StopReason(window.stop_reason) if window.stop_reason else None)
        after = fold(before, command)
        if after is before:
            return
        if before.status is RunStatus.PAUSED and after.status is RunStatus.RUNNING:
            self._resumed(window)
        if command.evidence is not None and after.status is not before.status and after.status is not RunStatus.RUNNING:
            # Another run's supervisor held or ended this one and said why (a sub-agent ended with its
            # parent: ``supervisor/_family.py``): that is the run's last verdict, for ``runvisor why``.
            window.last_verdict = Verdict(
                run_id=run_id, reason=after.reason or StopReason.USER_KILLED, evidence=command.evidence,
                severity="pause" if after.status is RunStatus.PAUSED else "stop", detector=command.issuer,
                at_seq=command.at_seq or window.last_seq, ts=now, hint=command.note or "",
            )  # fmt: skip
        window.paused = after.status is RunStatus.PAUSED
        window.stopped = after.status is RunStatus.STOPPED
        window.stop_reason = after.reason
        if after.status is RunStatus.RUNNING:
            window.last_seen = now  # the silence clock restarts with the resumed run
        self.timers.schedule(run_id, next_deadline(window, window.policy))

    def state(self, run_id: str) -> RunState:
        """The run's live state with counters; a bare RUNNING state for an unknown run."""
        w = self.windows.get(run_id)
        if w is None:
            return RunState(run_id=run_id)
        return RunState(
            run_id=run_id,
            status=_status(w),
            stop_reason=StopReason(w.stop_reason) if w.stop_reason else None,
            task=w.task,
            agent=w.agent,
            last_seq=w.last_seq,
            last_kind=w.last_kind,
            current_tool=w.current_tool,
            counters=Counters(  # saturated: a run's sums must never make its state unwritable
                steps=min(w.steps, MAX_COUNT),
                tokens=min(w.tokens, MAX_COUNT),
                cost_usd=min(w.cost_usd, MAX_MONEY),
                tool_calls=min(w.tool_calls, MAX_COUNT),
                retries=min(w.retries, MAX_COUNT),
                errors=min(w.errors, MAX_COUNT),
            ),
            progress=w.progress,
            started_at=w.first_ts or 0.0,
            updated_at=w.last_ts,
            last_verdict=w.last_verdict,
            signal=w.signal() if w.n else None,
            parent_run_id=w.parent_run_id,
        )

    def _grade(self, window: RunWindow, findings: Iterable[tuple[Verdict, bool]], now: float) -> list[Verdict]:
        out: list[Verdict] = []
        policy = window.policy
        for verdict, confirmed in findings:
            reason = verdict.reason
            bit = _BIT[reason]
            if window.acted & bit:
                continue
            if not confirmed or (policy.warn_first and not window.warned & bit):
                if window.warned & bit:
                    continue  # one early warning per reason is enough
                window.warned |= bit
                severity: Severity = "warn"
            else:
                severity = action_severity(policy, reason)
                if window.escalate & bit and severity == "pause":
                    severity = "stop"  # the operator resumed it once; the same pattern again ends it
                window.acted |= bit
            graded = verdict.model_copy(update={"severity": severity, "ts": now})
            out.append(graded)
            window.last_verdict = graded
            log.info(
                "verdict run_id=%s reason=%s severity=%s seq=%s %s",
                window.run_id,
                reason,
                severity,
                graded.at_seq,
                graded.evidence.summary,
            )
            if severity == "stop":
                window.stopped = True
                window.stop_reason = reason
                self.timers.schedule(window.run_id, None)
                break
            if severity == "pause":
                window.paused = True
                window.stop_reason = reason
        return out


def _status(window: RunWindow) -> RunStatus:
    if window.stopped:
        return RunStatus.STOPPED
    if window.completed:
        return RunStatus.COMPLETED
    return RunStatus.PAUSED if window.paused else RunStatus.RUNNING


__all__ = ["Engine", "action_severity"]
