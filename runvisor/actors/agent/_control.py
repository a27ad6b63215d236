"""How a run obeys its commands at step boundaries: hold while paused, end on a kill or stop.

:class:`CommandFollower` owns the run's ``Controls`` (the desired state folded from its
commands), the events that wake a paused run or interrupt a pending call, and the error
that ended the run; it saves through the run's :class:`Checkpointer`. Commands arrive live
on the core subscription (``on_command``) and from ``RV_CONTROL`` on start, resume and
reconnect (``catch_up``); both are folded by ``apply``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

from nats.aio.msg import Msg

from runvisor.actors.agent import _store as store
from runvisor.actors.agent._checkpointing import Checkpointer
from runvisor.actors.agent._commands import Controls
from runvisor.errors import RunError, RunKilled, RunStopped
from runvisor.protocols import codec
from runvisor.protocols.commands import end_reason
from runvisor.protocols.conventions import heartbeat_args
from runvisor.protocols.messages import Command
from runvisor.protocols.reasons import RunStatus, StopReason

# The run's log lines keep the public module's name, so operators filter them as before.
log = logging.getLogger("runvisor.actors.agent")


class CommandFollower:
    """Obeys one run's commands at its step boundaries."""

    def __init__(self, run_id: str, checkpoints: Checkpointer, *, heartbeat_s: float) -> None:
        """Args:
        run_id: the run whose commands these are.
        checkpoints: the run's checkpoint, saved on a pause, a resume and the run's end; its step
            stream carries the heartbeats of a pause.
        heartbeat_s: interval of heartbeats while the run is paused.
        """
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.controls = Controls()
        #: Set with a kill, so a pending tool call is abandoned at once.
        self.killed = asyncio.Event()
        #: The kill or stop raised into the agent's code, once the run has ended.
        self.ended: RunError | None = None
        self._changed = asyncio.Event()
        self._checkpoints = checkpoints
        self._holding: asyncio.Future[None] | None = None  # done when the task holding the run goes on

    async def boundary(self) -> None:
        """Obey the commands that arrived since the last step: end, or hold while paused.

        Several tasks of one run (parallel tool calls) may reach a boundary during one pause: the
        first holds the run (checkpoint, heartbeats), the others wait for it, then look again.
        """
        if self.ended is not None:
            raise self.ended
        if self.controls.terminal is not None:
            await self.end(self.controls.terminal)
        if self.controls.pause is None:
            return
        if self._holding is not None:
            await asyncio.shield(self._holding)
            await self.boundary()
            return
        self._holding = asyncio.get_running_loop().create_future()
        try:
            await self._hold()
        finally:
            self._holding.set_result(None)
            self._holding = None

    async def _hold(self) -> None:
        pause = self.controls.pause
        assert pause is not None
        reason = pause.reason or StopReason.USER_PAUSED
        steps = self._checkpoints.steps
        await self._checkpoints.save(RunStatus.PAUSED, reason)
        paused = heartbeat_args(RunStatus.PAUSED, reason)
        await steps.publish("heartbeat", observation=f"paused: {pause.describe()}", args=paused)
        log.info("run paused: %s", pause.describe(), extra={"run_id": self.run_id, "reason": pause.reason})
        while self.controls.pause is not None and self.controls.terminal is None:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.heartbeat_s)
            except TimeoutError:
                # Paused is not dead: keep telling supervisors the process is there.
                await steps.publish("heartbeat", observation="paused", args=paused)
        if self.controls.terminal is not None:
            await self.end(self.controls.terminal)
        await self._checkpoints.save()
        await steps.publish("heartbeat", observation="resumed", args=heartbeat_args(RunStatus.RUNNING))
        log.info("run resumed", extra={"run_id": self.run_id})

    async def end(self, command: Command) -> NoReturn:
        """Record a kill or stop in the checkpoint and raise it into the agent's code.

        Once the run has ended (another task of it got there first), raise that end again.
        """
        if self.ended is not None:
            raise self.ended
        reason = end_reason(command)
        if command.cmd == "kill":
            error: RunError = RunKilled(self.run_id, command)
        else:
            error = RunStopped(reason, command.evidence, run_id=self.run_id)
        self.ended = error
        log.warning("run ending: %s", command.describe(), extra={"run_id": self.run_id, "reason": reason})
        try:
            await self._checkpoints.save(RunStatus.STOPPED, reason)
        except Exception as exc:
            # The run ends regardless; a supervisor still sees the final event and the command.
            log.error("could not record the end in the checkpoint: %s", exc, extra={"run_id": self.run_id})
        raise error

    async def on_command(self, msg: Msg) -> None:
        """Fold in a command that arrived live on ``rv.ctl.<run>``."""
        try:
            command = codec.decode_command(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
        except ValueError as exc:
            # An operator's typo must never take a run down (DESIGN §8).
            log.warning("ignoring an undecodable command: %s", exc, extra={"run_id": self.run_id})
            return
        self.apply(command, stored=False)

    def apply(self, command: Command, *, stored: bool) -> None:
        """Fold in ``command`` (``stored``: read back from ``RV_CONTROL``) and wake what waits on it."""
        changed = self.controls.apply_stored(command) if stored else self.controls.apply(command)
        if not changed:
            return
        log.info("command: %s", command.describe(), extra={"run_id": self.run_id, "reason": command.reason})
        if self.controls.killed:
            self.killed.set()
        self._changed.set()

    async def catch_up(self) -> None:
        """Fold in the last command stored in ``RV_CONTROL``."""
        command = await store.last_command(self._checkpoints.steps.js, self.run_id)
        if command is not None:
            self.apply(command, stored=True)


__all__ = ["CommandFollower"]
