"""How a run creates, restores and saves its checkpoint (DESIGN §6).

Mixed into :class:`runvisor.actors.agent.Run`, which owns the attributes these methods read and write;
the compare-and-set store itself is :class:`runvisor.actors.agent._store.CheckpointStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runvisor.actors.agent import _store as store
from runvisor.actors.agent._commands import Controls
from runvisor.actors.agent._steps import StepStream
from runvisor.errors import RunNotResumable
from runvisor.protocols.messages import Checkpoint, Command, Intent, Policy
from runvisor.protocols.reasons import RunStatus, StopReason


class CheckpointMixin:
    """The checkpoint logic of :class:`runvisor.actors.agent.Run`; the attributes are set by ``Run``."""

    run_id: str
    goal: str | None
    policy: Policy | None
    state: dict[str, Any]
    open_intent: Intent | None
    _clock: Callable[[], float]
    _controls: Controls
    _intent: Intent | None
    _open_args: dict[str, Any] | None
    _store: store.CheckpointStore | None
    _stream: StepStream | None

    async def _create(self) -> None:
        self._steps.seq = 1  # the start event's
        await self._checkpoints.create(self._checkpoint(RunStatus.RUNNING, None))

    async def _load(self, stored: Command | None) -> None:
        cp = await self._checkpoints.load()
        self.goal, self.policy = cp.goal, cp.policy
        self._restore(cp)
        if cp.status == RunStatus.COMPLETED or (
            cp.status == RunStatus.STOPPED and cp.stop_reason != StopReason.AGENT_CRASHED
        ):
            raise RunNotResumable(self.run_id, cp.status, cp.stop_reason)
        # A kill in RV_CONTROL counts even if the killed process never recorded it: record it now.
        if (stored is not None and stored.cmd == "kill") or self._controls.killed:
            await self._save(RunStatus.STOPPED, StopReason.USER_KILLED)
            raise RunNotResumable(self.run_id, RunStatus.STOPPED, StopReason.USER_KILLED)
        self._steps.seq = max(cp.seq, await store.last_step_seq(self._steps.js, self.run_id)) + 1  # the start event's
        await self._save()  # takes the revision: a stale process still running is fenced off

    def _restore(self, cp: Checkpoint) -> None:
        self.state, self._open_args = store.unpack_state(cp.state)
        self._steps.seq = cp.seq
        self._intent = cp.intent
        self.open_intent = cp.intent if cp.intent is not None and cp.intent.state == "open" else None

    async def _save(self, status: RunStatus = RunStatus.RUNNING, reason: StopReason | None = None) -> None:
        """Write the checkpoint once the steps it follows are stored."""
        await self._steps.flush()
        await self._checkpoints.save(self._checkpoint(status, reason))

    def _checkpoint(self, status: RunStatus, reason: StopReason | None) -> Checkpoint:
        call_open = self._intent is not None and self._intent.state == "open"
        return Checkpoint(
            run_id=self.run_id, seq=self._steps.seq, status=status, stop_reason=reason, goal=self.goal,
            policy=self.policy, state=store.pack_state(self.state, self._open_args, call_open), intent=self._intent,
            ts=self._clock(),
        )  # fmt: skip

    @property
    def _steps(self) -> StepStream:
        if self._stream is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._stream

    @property
    def _checkpoints(self) -> store.CheckpointStore:
        if self._store is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._store


__all__ = ["CheckpointMixin"]
