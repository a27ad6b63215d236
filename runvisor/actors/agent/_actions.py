"""A run's external actions: tool calls through executors and in the agent's own process (DESIGN §6).

Every one is checkpointed as an open ``Intent`` before it happens and closed after, with a
``tool_call`` and a ``tool_result`` step of the same ``call_id``. :class:`Actions` owns what
both kinds share; the executor's request is ``_calls``, the in-process call is ``_local``.

Calls may overlap (parallel tool calls): each has its own intent, and the checkpoint holds
them all. A call's ``tool_call`` step is published just before its intent is checkpointed
(never a reserved seq published later), so steps go out in seq order however calls interleave,
and the checkpoint covers the step's seq.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NoReturn

from nats.aio.client import Client

from runvisor.actors.agent import _limits as limits
from runvisor.actors.agent._calls import request_tool
from runvisor.actors.agent._checkpointing import Checkpointer
from runvisor.actors.agent._control import CommandFollower
from runvisor.actors.agent._steps import StepStream
from runvisor.errors import RunError
from runvisor.protocols.messages import MAX_ARGS_CHARS, MAX_OBSERVATION_CHARS, Intent, ToolRequest, ToolResult

#: What a call cancelled by a kill says in its ``tool_result``.
KILLED = "Cancelled: the run was killed while the call was pending"


class Actions:
    """Opens, reports and closes one run's tool calls; obeys a kill that comes while one is pending."""

    def __init__(
        self,
        run_id: str,
        checkpoints: Checkpointer,
        control: CommandFollower,
        *,
        heartbeat_s: float,
        clock: Callable[[], float],
    ) -> None:
        """Args:
        run_id: the run whose calls these are.
        checkpoints: the run's checkpoint, where each call's intent is opened and closed.
        control: the run's commands: a boundary before each call, a kill that ends it.
        heartbeat_s: interval of heartbeats while a call is pending.
        clock: the wall clock stamped on intents.
        """
        self.run_id = run_id
        self.checkpoints = checkpoints
        self.control = control
        self.heartbeat_s = heartbeat_s
        self._clock = clock

    @property
    def steps(self) -> StepStream:
        return self.checkpoints.steps

    def intent(self, tool: str, args: dict[str, Any] | None, call_id: str | None, *, in_process: bool) -> Intent:
        """A new call's intent; its idempotency key is ``<run>:<call_id>``."""
        call_id = call_id or uuid.uuid4().hex[:16]
        if self.checkpoints.open_call(call_id) is not None:
            raise RunError(f"run {self.run_id}: call {call_id!r} is already open; give each call its own call_id")
        return Intent(
            tool=tool, call_id=call_id, args_digest=limits.args_digest(args),
            idempotency_key=f"{self.run_id}:{call_id}", opened_at=self._clock(), in_process=in_process,
        )  # fmt: skip

    def again(self, intent: Intent) -> Intent:
        """``intent`` issued once more, under the same idempotency key."""
        return intent.model_copy(update={"attempt": intent.attempt + 1, "opened_at": self._clock()})

    async def open(self, intent: Intent, args: dict[str, Any] | None) -> int:
        """Publish the call's ``tool_call`` and checkpoint ``intent`` as in flight; returns the step's seq.

        The step goes first so that the checkpoint, written once it is stored, covers its seq.
        """
        seq = await self.steps.publish(
            "tool_call", tool=intent.tool, call_id=intent.call_id, args=limits.step_args(args)
        )
        await self.checkpoints.opened(intent, args)  # before the external action
        return seq

    async def close(
        self, intent: Intent, *, ok: bool, observation: str | None = None, error: str | None = None
    ) -> None:
        """Publish the call's ``tool_result``, then record its intent as done."""
        await self.result(intent, ok=ok, observation=observation, error=error)
        await self.checkpoints.closed(intent)

    async def result(
        self, intent: Intent, *, ok: bool, observation: str | None = None, error: str | None = None
    ) -> None:
        await self.steps.publish(
            "tool_result", tool=intent.tool, call_id=intent.call_id, ok=ok,
            observation=limits.clip(observation, MAX_OBSERVATION_CHARS),
            error=limits.clip(error, MAX_OBSERVATION_CHARS),
        )  # fmt: skip

    async def killed(self, intent: Intent) -> NoReturn:
        """The run was killed while ``intent`` was pending: say the call was cancelled, and end the run.

        The intent stays open in the checkpoint: a killed run never resumes, and the checkpoint
        still says what was in flight when it was killed.
        """
        await self.result(intent, ok=False, error=KILLED)
        terminal = self.control.controls.terminal
        assert terminal is not None  # the kill event is set only with a terminal command
        await self.control.end(terminal)

    async def heartbeat(self, intent: Intent) -> None:
        await self.steps.publish("heartbeat", tool=intent.tool, call_id=intent.call_id)

    async def via_executor(self, nc: Client, intent: Intent, args: dict[str, Any] | None, timeout: float) -> ToolResult:
        """Call the tool of ``intent`` through its executors (``rv.tool.<name>``)."""
        if not limits.fits(args):
            # Nothing external happens, so no intent: the supervisor still sees the attempt.
            await self.steps.publish("tool_call", tool=intent.tool, call_id=intent.call_id, args=limits.step_args(args))
            refused = ToolResult(
                call_id=intent.call_id, ok=False, attempts=0, error_type="ArgsTooLarge",
                error=f"arguments exceed {MAX_ARGS_CHARS} characters; pass a reference (a path, an id) instead",
            )  # fmt: skip
            await self.result(intent, ok=False, error=_error_text(refused))
            return refused
        seq = await self.open(intent, args)
        request = ToolRequest(
            run_id=self.run_id, call_id=intent.call_id, tool=intent.tool, args=args,
            idempotency_key=intent.idempotency_key, seq=seq, timeout_s=timeout,
        )  # fmt: skip
        result = await request_tool(
            nc, request, killed=self.control.killed, heartbeat_s=self.heartbeat_s,
            heartbeat=lambda: self.heartbeat(intent),
        )  # fmt: skip
        if result is None:  # killed while the call was pending: do not wait for the tool
            await self.killed(intent)
        await self.close(intent, ok=result.ok, observation=result.observation, error=_error_text(result))
        return result

    def inherited(self, call_id: str | None) -> Intent:
        """The call ``call_id`` in flight when the run's last process ended; the only one when None."""
        inherited = self.checkpoints.inherited
        if call_id is not None:
            for intent in inherited:
                if intent.call_id == call_id:
                    return intent
            raise RunError(f"run {self.run_id} has no open intent {call_id!r} from its last process")
        if not inherited:
            raise RunError(f"run {self.run_id} has no open intent to retry")
        if len(inherited) > 1:
            ids = ", ".join(intent.call_id for intent in inherited)
            raise RunError(f"run {self.run_id} has {len(inherited)} open intents ({ids}): name one with call_id=")
        return inherited[0]

    async def abandon(self, intent: Intent, note: str | None) -> None:
        """Close an open call without running it again, as failed: its outcome is unknown."""
        why = note or "in flight when the run's process ended; not run again"
        await self.close(intent, ok=False, error=f"Abandoned: {why}")


def _error_text(result: ToolResult) -> str | None:
    if result.error_type and not result.ok:
        return f"{result.error_type}: {result.error}" if result.error else result.error_type
    return result.error


__all__ = ["KILLED", "Actions"]
