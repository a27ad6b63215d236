"""What a run's control commands ask for right now: pure state, no I/O.

Commands reach an agent twice over: live on the core subscription, and from ``RV_CONTROL``
when the run starts, resumes or reconnects. Both feed :class:`Controls`, which treats the
latest command as the *desired state* (running, paused, or ended), so applying the same
command twice is harmless and the two paths never need to agree on who saw what first.
"""

from __future__ import annotations

from runvisor.protocols.messages import Command
from runvisor.protocols.reasons import StopReason


class Controls:
    """The desired state of one run, folded from its commands in arrival order."""

    def __init__(self) -> None:
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
        """Fold a live command in; returns whether it changed anything."""
        if self.terminal is not None:
            return False  # a killed or stopped run stays so, whatever comes after
        self.last = command
        self._newest_ts = max(self._newest_ts, command.ts)
        if command.cmd == "pause":
            changed = self.pause is None
            self.pause = command
            return changed
        if command.cmd == "resume":
            changed = self.pause is not None
            self.pause = None
            return changed
        self.terminal = command
        return True

    def apply_stored(self, command: Command) -> bool:
        """Fold in the last command read back from the stream, unless a newer one was applied.

        A stored command older than one already applied live was overtaken; the live
        subscription delivers in stream order, so the newer one is the operator's last word.
        """
        if command.ts < self._newest_ts:
            return False
        return self.apply(command)


def stop_reason(command: Command) -> StopReason:
    """The reason a terminal command ends the run with."""
    if command.reason is not None:
        return command.reason
    return StopReason.USER_KILLED if command.cmd == "kill" else StopReason.USER_PAUSED
