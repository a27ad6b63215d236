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

from runvisor.protocols.messages import Command, RunState
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


def refusal(run_id: str, state: RunState | None, command: Command) -> str | None:
    """Why ``command`` must not be applied to the run in ``state`` (None: apply it).

    The ``runvisor`` CLI refuses to send such a command and supervisors ignore one sent anyway
    (the ``nats`` CLI): a command for a run nobody knows would create a phantom run in
    ``rv_runs``, and one that changes nothing (see :func:`fold`) would only mislead: a stopped
    run cannot be resumed, and a finished one is not killed after the fact.
    """
    if state is None:
        return f"no run {run_id!r} is known (not in rv_runs, and no supervisor answered)"
    before = CommandState(state.status, state.stop_reason)
    if fold(before, command) != before:
        return None
    if before.ended:
        how = f"{state.status}" + (f", {state.stop_reason}" if state.stop_reason else "")
        return f"run {run_id} has ended ({how}): a {command.cmd} would change nothing"
    return f"run {run_id} is {state.status}: a {command.cmd} would change nothing"


__all__ = ["ENDED", "CommandState", "end_reason", "fold", "refusal"]
