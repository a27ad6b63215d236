"""What a run's control commands ask for right now: pure state, no I/O.

Commands reach an agent twice over: live on the core subscription, and from ``RV_CONTROL``
when the run starts, resumes or reconnects. Both feed :class:`Controls`, which treats the
latest command as the *desired state* (running, paused, or ended), so applying the same
command twice is harmless and the two paths never need to agree on who saw what first.
"""

from __future__ import annotations

from runvisor.protocols.commands import CommandState, fold
from runvisor.protocols.messages import Command
from runvisor.protocols.reasons import RunStatus


class Controls:
    """The desired state of one run, folded from its commands in arrival order (see ``protocols.commands``)."""

    def __init__(self) -> None:
        self.state = CommandState()
        #: The pause in force, or None while running.
        self.pause: Command | None = None
        #: The kill or stop that ends the run; once set, nothing changes it.
        self.terminal: Command | None = None
        #: The last command applied, for agents (and tests) that want to look.
        self.last: Command | None = None
        self._newest_ts = 0.0

    @property
    def killed(self) -> bool:
        return self.terminal is not None and self.terminal.cmd == "kill"

    def apply(self, command: Command) -> bool:
        """Fold a live command in; returns whether it changed the run's status."""
        before, self.state = self.state, fold(self.state, command)
        if before.ended:
            return False
        self.last = command
        self._newest_ts = max(self._newest_ts, command.ts)
        if self.state.status is RunStatus.PAUSED:
            self.pause = command
        elif self.state.status is RunStatus.RUNNING:
            self.pause = None
        else:
            self.terminal = command
        return self.state.status is not before.status

    def apply_stored(self, command: Command) -> bool:
        """Fold in the last command read back from the stream, unless a newer one was applied.

        A stored command older than one already applied live was overtaken; the live
        subscription delivers in stream order, so the newer one is the operator's last word.
        """
        if command.ts < self._newest_ts:
            return False
        return self.apply(command)
