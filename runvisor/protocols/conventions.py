"""Agreements between actors that the message models alone do not show (DESIGN §6, §7).

- **Retry events.** A tool executor that retries a call publishes, for each failed attempt,
  a failed ``tool_result`` and then the next ``tool_call``, both with the *agent's* ``seq``
  and ``call_id`` (from the ``ToolRequest``). The agent SDK publishes the first ``tool_call``
  and the final ``tool_result`` itself. A supervisor therefore sees one call with its
  retries, not new calls: retries count as ``retries``, not as tool calls or repeats.
- **Heartbeat status.** While it holds at a boundary, and when it goes on, the agent SDK
  says so in its heartbeats' ``args`` (:func:`heartbeat_args`); a supervisor reads them back
  with :func:`heartbeat_status`.
- **How a run ended.** The agent SDK's ``final`` event says why in its ``args``
  (:func:`final_args`): ``COMPLETED`` when the agent's code returned, ``AGENT_CRASHED`` (with the
  error's type and message in ``error``) when it raised; a supervisor reads it with :func:`final_reason`.
"""

from __future__ import annotations

from runvisor.protocols.messages import StepEvent, ToolRequest
from runvisor.protocols.reasons import RunStatus, StopReason


def retry_events(
    request: ToolRequest, *, error: str, observation: str | None, ts: float
) -> tuple[StepEvent, StepEvent]:
    """The two step events of a failed attempt that will be retried (see "Retry events" above)."""
    same = {"run_id": request.run_id, "seq": request.seq, "tool": request.tool, "call_id": request.call_id, "ts": ts}
    failed = StepEvent(**same, kind="tool_result", ok=False, error=error, observation=observation)
    return failed, StepEvent(**same, kind="tool_call", args=request.args)


def heartbeat_args(status: RunStatus, reason: StopReason | None = None) -> dict[str, str]:
    """The ``args`` of a heartbeat in which an agent says it holds at a boundary (PAUSED) or goes on (RUNNING).

    The SDK sends them when it pauses, every heartbeat while paused, and when it resumes, so
    a supervisor shows the state the agent is really in (a step still in flight when the pause
    was sent can arrive after it), and a new owner replaying the stream learns it too.
    """
    args = {"status": status.value}
    if reason is not None:
        args["reason"] = reason.value
    return args


def heartbeat_status(event: StepEvent) -> tuple[RunStatus, StopReason | None] | None:
    """What a heartbeat's ``args`` say (see :func:`heartbeat_args`); None for any other event or args."""
    args = event.args
    if event.kind != "heartbeat" or not args:
        return None
    try:
        status = RunStatus(str(args.get("status")))
        reason = StopReason(str(args["reason"])) if args.get("reason") is not None else None
    except ValueError:
        return None  # another agent's own heartbeat args: not ours to read
    return status, reason


def final_args(reason: StopReason) -> dict[str, str]:
    """The ``args`` of a ``final`` event that says how the run ended (see "How a run ended" above)."""
    return {"stop_reason": reason.value}


def final_reason(event: StepEvent) -> StopReason | None:
    """How a run ended, from its ``final`` event's ``args`` (see :func:`final_args`); None when they do not say."""
    args = event.args
    if event.kind != "final" or not args:
        return None
    try:
        return StopReason(str(args.get("stop_reason")))
    except ValueError:
        return None  # another agent's own final args: not ours to read


__all__ = ["final_args", "final_reason", "heartbeat_args", "heartbeat_status", "retry_events"]
