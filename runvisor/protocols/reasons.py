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


#: What an operator should do next, per reason; shown by `runvisor why` and carried in stops.
RECOVERY_HINTS: dict[StopReason, str] = {
    StopReason.LOOP_DETECTED: "inspect the repeated steps, fix prompt or tool output; resume if paused, else restart",
    StopReason.NO_PROGRESS: "nothing new for a while; check the goal is reachable; resume if paused, else restart",
    StopReason.BUDGET_EXCEEDED: "raise the named budget in the run's policy; resume if paused, else restart",
    StopReason.RETRY_LIMIT_REACHED: "the tool keeps failing; fix the tool or its input before the run goes on",
    StopReason.TOOL_FAILURE: "the tool is failing (possibly behind a successful-looking response); check the tool",
    StopReason.TIMEOUT: "the run or its tool call went silent; check the agent process and the tool executor",
    StopReason.USER_PAUSED: "paused by an operator; `runvisor resume RUN` continues from the checkpoint",
    StopReason.USER_KILLED: "killed by an operator; a killed run cannot be resumed",
    StopReason.AGENT_CRASHED: "the agent process died; `Run.resume(run_id)` continues from the last checkpoint",
    StopReason.COMPLETED: "the run finished normally",
}
