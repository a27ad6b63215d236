"""How a run obeys its commands at step boundaries: hold while paused, end on a kill or stop.

Mixed into :class:`runvisor.actors.agent.Run`, which owns the state these methods use (its ``Controls``
and the events that wake a paused run or interrupt a pending call). Commands arrive live on
the core subscription (``_on_command``) and from ``RV_CONTROL`` on start, resume and
reconnect (``_catch_up``); both are folded by ``_apply``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

from nats.aio.msg import Msg

from runvisor.actors.agent import _store as store
from runvisor.actors.agent._checkpointing import CheckpointMixin
from runvisor.errors import RunError, RunKilled, RunStopped
from runvisor.protocols import codec
from runvisor.protocols.commands import end_reason
from runvisor.protocols.conventions import heartbeat_args
from runvisor.protocols.messages import Command
from runvisor.protocols.reasons import RunStatus, StopReason

# The run's log lines keep the public module's name, so operators filter them as before.
log = logging.getLogger("runvisor.actors.agent")


class ControlMixin(CheckpointMixin):
    """The command handling of :class:`runvisor.actors.agent.Run`; the attributes are set by ``Run``."""

    heartbeat_s: float
    _ended: RunError | None
    _changed: asyncio.Event
    _killed: asyncio.Event

    async def _boundary(self) -> None:
        """Obey the commands that arrived since the last step: end, or hold while paused."""
        if self._ended is not None:
            raise self._ended
        if self._controls.terminal is not None:
            await self._end(self._controls.terminal)
        if self._controls.pause is not None:
            await self._hold()

    async def _hold(self) -> None:
        pause = self._controls.pause
        assert pause is not None
        reason = pause.reason or StopReason.USER_PAUSED
        await self._save(RunStatus.PAUSED, reason)
        paused = heartbeat_args(RunStatus.PAUSED, reason)
        await self._steps.publish("heartbeat", observation=f"paused: {pause.describe()}", args=paused)
        log.info("run paused: %s", pause.describe(), extra={"run_id": self.run_id, "reason": pause.reason})
        while self._controls.pause is not None and self._controls.terminal is None:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.heartbeat_s)
            except TimeoutError:
                # Paused is not dead: keep telling supervisors the process is there.
                await self._steps.publish("heartbeat", observation="paused", args=paused)
        if self._controls.terminal is not None:
            await self._end(self._controls.terminal)
        await self._save()
        await self._steps.publish("heartbeat", observation="resumed", args=heartbeat_args(RunStatus.RUNNING))
        log.info("run resumed", extra={"run_id": self.run_id})

    async def _end(self, command: Command) -> NoReturn:
        """Record a kill or stop in the checkpoint and raise it into the agent's code."""
        reason = end_reason(command)
        if command.cmd == "kill":
            error: RunError = RunKilled(self.run_id, command)
        else:
            error = RunStopped(reason, command.evidence, run_id=self.run_id)
        self._ended = error
        log.warning("run ending: %s", command.describe(), extra={"run_id": self.run_id, "reason": reason})
        try:
            await self._save(RunStatus.STOPPED, reason)
        except Exception as exc:
            # The run ends regardless; a supervisor still sees the final event and the command.
            log.error("could not record the end in the checkpoint: %s", exc, extra={"run_id": self.run_id})
        raise error

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = codec.decode_command(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
        except ValueError as exc:
            # An operator's typo must never take a run down (DESIGN §8).
            log.warning("ignoring an undecodable command: %s", exc, extra={"run_id": self.run_id})
            return
        self._apply(command, stored=False)

    def _apply(self, command: Command, *, stored: bool) -> None:
        changed = self._controls.apply_stored(command) if stored else self._controls.apply(command)
        if not changed:
            return
        log.info("command: %s", command.describe(), extra={"run_id": self.run_id, "reason": command.reason})
        if self._controls.killed:
            self._killed.set()
        self._changed.set()

    async def _catch_up(self) -> None:
        command = await store.last_command(self._steps.js, self.run_id)
        if command is not None:
            self._apply(command, stored=True)


__all__ = ["ControlMixin"]
