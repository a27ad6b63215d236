"""A run's checkpoint: what it records, and how it is created, restored and saved (DESIGN §6).

:class:`Checkpointer` owns what the checkpoint holds (goal, policy, the agent's state, the
call in flight); ``Run`` exposes those as its public attributes and calls it at each
checkpoint. The compare-and-set store itself is :class:`runvisor.actors.agent._store.CheckpointStore`,
handed over with the run's step stream once the run is connected.
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


class Checkpointer:
    """One run's checkpoint: its contents, kept here, and its writes to ``rv_checkpoints``."""

    def __init__(self, run_id: str, clock: Callable[[], float], *, goal: str | None, policy: Policy | None) -> None:
        """Args:
        run_id: the run whose checkpoint this is.
        clock: the wall clock stamped on checkpoints.
        goal: the run's task (replaced by the stored one on resume).
        policy: the run's supervision policy (replaced by the stored one on resume).
        """
        self.run_id = run_id
        self.goal = goal
        self.policy = policy
        #: The agent's own resumable state: JSON-able values, saved with every checkpoint.
        self.state: dict[str, Any] = {}
        #: The call that was in flight when the run was last checkpointed, or None.
        self.open_intent: Intent | None = None
        #: The arguments of the open call: an ``Intent`` holds only their digest.
        self.open_args: dict[str, Any] | None = None
        self._intent: Intent | None = None  # the last call, open or done
        self._clock = clock
        # Both need the connection, so they come with ``attach`` when the run starts.
        self._store: store.CheckpointStore | None = None
        self._stream: StepStream | None = None

    def attach(self, kv: store.CheckpointStore, steps: StepStream) -> None:
        """Give the checkpoint its store, and the steps that it follows (it names their seq)."""
        self._store, self._stream = kv, steps

    @property
    def steps(self) -> StepStream:
        """The run's step stream, which the checkpoint follows."""
        if self._stream is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._stream

    @property
    def in_charge(self) -> bool:
        """Whether this process speaks for the run: started, and not fenced off by another."""
        return self._store is not None and not self._store.fenced

    async def create(self) -> None:
        """Write the first checkpoint of a new run (its ``start`` event is seq 1)."""
        self.steps.seq = 1
        await self._kv.create(self._checkpoint(RunStatus.RUNNING, None))

    async def load(self, stored: Command | None, controls: Controls) -> None:
        """Continue from the stored checkpoint, taking its revision; raise if it may not go on.

        Args:
            stored: the last command stored for the run, if any.
            controls: the commands applied so far (a kill may arrive while the checkpoint loads).
        """
        cp = await self._kv.load()
        self.goal, self.policy = cp.goal, cp.policy
        self._restore(cp)
        if cp.status == RunStatus.COMPLETED or (
            cp.status == RunStatus.STOPPED and cp.stop_reason != StopReason.AGENT_CRASHED
        ):
            raise RunNotResumable(self.run_id, cp.status, cp.stop_reason)
        # A kill in RV_CONTROL counts even if the killed process never recorded it: record it now.
        if (stored is not None and stored.cmd == "kill") or controls.killed:
            await self.save(RunStatus.STOPPED, StopReason.USER_KILLED)
            raise RunNotResumable(self.run_id, RunStatus.STOPPED, StopReason.USER_KILLED)
        self.steps.seq = max(cp.seq, await store.last_step_seq(self.steps.js, self.run_id)) + 1  # the start event's
        await self.save()  # takes the revision: a stale process still running is fenced off

    def _restore(self, cp: Checkpoint) -> None:
        self.state, self.open_args = store.unpack_state(cp.state)
        self.steps.seq = cp.seq
        self._intent = cp.intent
        self.open_intent = cp.intent if cp.intent is not None and cp.intent.state == "open" else None

    async def save(self, status: RunStatus = RunStatus.RUNNING, reason: StopReason | None = None) -> None:
        """Write the checkpoint once the steps it follows are stored."""
        await self.steps.flush()
        await self._kv.save(self._checkpoint(status, reason))

    async def open_call(self, intent: Intent, args: dict[str, Any] | None) -> None:
        """Record ``intent`` as in flight, before the external action: after a crash it says what was."""
        self._intent, self.open_args, self.open_intent = intent, args, intent
        # Written out rather than through save(): a tool call should not pay another coroutine.
        await self.steps.flush()
        await self._kv.save(self._checkpoint(RunStatus.RUNNING, None))

    async def close_call(self, intent: Intent) -> None:
        """Record the call of ``intent`` as done."""
        self._intent, self.open_args, self.open_intent = intent.model_copy(update={"state": "done"}), None, None
        await self.steps.flush()
        await self._kv.save(self._checkpoint(RunStatus.RUNNING, None))

    def _checkpoint(self, status: RunStatus, reason: StopReason | None) -> Checkpoint:
        call_open = self._intent is not None and self._intent.state == "open"
        return Checkpoint(
            run_id=self.run_id, seq=self.steps.seq, status=status, stop_reason=reason, goal=self.goal,
            policy=self.policy, state=store.pack_state(self.state, self.open_args, call_open), intent=self._intent,
            ts=self._clock(),
        )  # fmt: skip

    @property
    def _kv(self) -> store.CheckpointStore:
        if self._store is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._store


__all__ = ["Checkpointer"]
