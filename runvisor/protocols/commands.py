"""A run's command state, folded from its control commands: pure, and the one copy of the rules.

The agent SDK folds the commands it receives to know whether to go on, hold or end; a
supervisor folds the same commands to report the run's status. Both call :func:`fold`, so
they cannot disagree on what a sequence of commands means:

- ``pause`` holds a running run (reason ``USER_PAUSED`` unless the command says otherwise);
- ``resume`` lets a paused run go on;
- ``kill`` and ``stop`` end it, with the command's reason;
- an ended run (stopped, killed or completed) stays as it ended, whatever comes after.
"""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.protocols.messages import Command
from runvisor.protocols.reasons import RunStatus, StopReason

ENDED = frozenset({RunStatus.STOPPED, RunStatus.COMPLETED})


@dataclass(frozen=True, slots=True)
class CommandState:
    """Where a run's commands have put it: its status, and the reason for a pause or an end."""

    status: RunStatus = RunStatus.RUNNING
    reason: StopReason | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def fold(state: CommandState, command: Command) -> CommandState:
    """The state after ``command``; ``state`` itself when the command changes nothing."""
    if state.ended:
        return state  # killed stays killed, completed stays completed
    if command.cmd == "pause":
        return CommandState(RunStatus.PAUSED, command.reason or StopReason.USER_PAUSED)
    if command.cmd == "resume":
        return CommandState() if state.status is RunStatus.PAUSED else state
    return CommandState(RunStatus.STOPPED, end_reason(command))


def end_reason(command: Command) -> StopReason:
    """The reason a ``kill`` or ``stop`` ends the run with."""
    if command.reason is not None:
        return command.reason
    return StopReason.USER_KILLED if command.cmd == "kill" else StopReason.USER_PAUSED


__all__ = ["ENDED", "CommandState", "end_reason", "fold"]
