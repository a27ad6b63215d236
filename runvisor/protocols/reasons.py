"""Run statuses and stop reasons (DESIGN §5). A run is never just "failed": it says why it stopped."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"


class StopReason(StrEnum):
    LOOP_DETECTED = "LOOP_DETECTED"
    NO_PROGRESS = "NO_PROGRESS"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RETRY_LIMIT_REACHED = "RETRY_LIMIT_REACHED"
    TOOL_FAILURE = "TOOL_FAILURE"
    TIMEOUT = "TIMEOUT"
    USER_PAUSED = "USER_PAUSED"
    USER_KILLED = "USER_KILLED"
    AGENT_CRASHED = "AGENT_CRASHED"
    COMPLETED = "COMPLETED"


#: What each reason asks an operator to look at, whatever the run's status.
CAUSES: dict[StopReason, str] = {
    StopReason.LOOP_DETECTED: "inspect the repeated steps, fix prompt or tool output",
    StopReason.NO_PROGRESS: "nothing new for a while; check the goal is reachable",
    StopReason.BUDGET_EXCEEDED: "raise the named budget in the run's policy",
    StopReason.RETRY_LIMIT_REACHED: "the tool keeps failing; fix the tool or its input before the run goes on",
    StopReason.TOOL_FAILURE: "the tool is failing (possibly behind a successful-looking response); check the tool",
    StopReason.TIMEOUT: "the run or its tool call went silent; check the agent process and the tool executor",
    StopReason.USER_PAUSED: "paused by an operator",
    StopReason.USER_KILLED: "killed by an operator",
    StopReason.AGENT_CRASHED: "the agent process died",
    StopReason.COMPLETED: "the run finished normally",
}

_EITHER = "; resume if paused, else restart"

#: What to do next, per reason, when the run's status is not known (a verdict's hint, an agent's
#: exception); :func:`next_step` says it for a known status.
RECOVERY_HINTS: dict[StopReason, str] = {
    **CAUSES,
    StopReason.LOOP_DETECTED: CAUSES[StopReason.LOOP_DETECTED] + _EITHER,
    StopReason.NO_PROGRESS: CAUSES[StopReason.NO_PROGRESS] + _EITHER,
    StopReason.BUDGET_EXCEEDED: CAUSES[StopReason.BUDGET_EXCEEDED] + _EITHER,
    StopReason.USER_PAUSED: "paused by an operator; `runvisor resume RUN` continues from the checkpoint",
    StopReason.USER_KILLED: "killed by an operator; a killed run cannot be resumed",
    StopReason.AGENT_CRASHED: "the agent process died; `Run.resume(run_id)` continues from the last checkpoint",
}


def next_step(status: RunStatus, reason: StopReason | None, run_id: str = "RUN") -> str | None:
    """What an operator should do next with a run in ``status``, held or ended for ``reason``.

    A paused run may be resumed; a stopped one never (``runvisor resume`` refuses it), except
    that the agent itself may go on from its checkpoint after a crash (``Run.resume``).
    None for a running or completed run: there is nothing to do.
    """
    if reason is None or status in (RunStatus.RUNNING, RunStatus.COMPLETED):
        return None
    if status is RunStatus.PAUSED:
        what = CAUSES[reason] if reason is not StopReason.USER_PAUSED else "paused by an operator"
        return f"{what}; then `runvisor resume {run_id}` goes on from the checkpoint, `runvisor kill {run_id}` ends it"
    if reason is StopReason.USER_KILLED:
        return RECOVERY_HINTS[reason]
    if reason is StopReason.AGENT_CRASHED:
        return (
            "the agent's own code failed (see its error); once fixed, `Run.resume(run_id)` in the agent goes on "
            "from the last checkpoint"
        )
    return f"{CAUSES[reason]}; the run has ended and cannot be resumed: start it again once fixed"
