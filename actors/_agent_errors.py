"""What a run raises into the agent's code.

Public through ``actors.agent``; kept here so the ``Run`` module stays about the run.
"""

from __future__ import annotations

from actors._agent_commands import describe
from protocols import subjects
from protocols.messages import Command, Evidence
from protocols.reasons import RECOVERY_HINTS, RunStatus, StopReason


class RunError(RuntimeError):
    """Base of every error a run raises into the agent's code."""


class RunKilled(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """An operator killed the run; it can never continue."""

    def __init__(self, run_id: str, command: Command) -> None:
        self.run_id = run_id
        self.command = command
        super().__init__(f"run {run_id} was killed ({describe(command)}); it cannot be resumed")


class RunStopped(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """A supervisor (or operator) stopped the run, with the reason and the evidence for it."""

    def __init__(self, reason: StopReason, evidence: Evidence | None = None, *, run_id: str = "") -> None:
        self.reason = reason
        self.evidence = evidence
        self.run_id = run_id
        why = f": {evidence.summary}" if evidence else ""
        super().__init__(f"run {run_id} was stopped: {reason.value}{why} (next: {RECOVERY_HINTS[reason]})")


class RunNotResumable(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """``Run.resume`` of a run that ended for good (killed, stopped or completed)."""

    def __init__(self, run_id: str, status: RunStatus, reason: StopReason | None) -> None:
        self.run_id = run_id
        self.status = status
        self.reason = reason
        because = f" ({reason.value})" if reason else ""
        super().__init__(f"run {run_id} cannot be resumed: it is {status.value}{because}")


class RunNotFound(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """``Run.resume`` of a run that has no checkpoint."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} has no checkpoint in KV {subjects.CHECKPOINTS_BUCKET}: nothing to resume")
