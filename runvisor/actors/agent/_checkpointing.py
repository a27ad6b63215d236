"""A run's checkpoint: what it records, and how it is created, restored and saved (DESIGN §6).

:class:`Checkpointer` owns what the checkpoint holds (goal, policy, the agent's state, the
calls in flight); ``Run`` exposes those as its public attributes and calls it at each
checkpoint. The compare-and-set store itself is :class:`runvisor.actors.agent._store.CheckpointStore`,
handed over with the run's step stream once the run is connected.

Several calls may be open at once (parallel tool calls), so writes are serialized here: each
is a compare-and-set on the revision the previous one returned, and each is built under the
lock so that it holds every change made so far. Writers that waited meanwhile have nothing left
to write and return at once (a group commit): parallel calls share writes instead of queueing
for one each. The status and reason last saved (PAUSED while one task holds at a boundary) stay
in force when another task opens or closes a call.
"""

from __future__ import annotations

import asyncio
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

    def __init__(
        self,
        run_id: str,
        clock: Callable[[], float],
        *,
        goal: str | None,
        policy: Policy | None,
        parent_run_id: str | None = None,
    ) -> None:
        """Args:
        run_id: the run whose checkpoint this is.
        clock: the wall clock stamped on checkpoints.
        goal: the run's task (replaced by the stored one on resume).
        policy: the run's supervision policy (replaced by the stored one on resume).
        parent_run_id: the run that started this one as a sub-agent (replaced by the stored one on resume).
        """
        self.run_id = run_id
        self.goal = goal
        self.policy = policy
        self.parent_run_id = parent_run_id
        #: The agent's own resumable state: JSON-able values, saved with every checkpoint.
        self.state: dict[str, Any] = {}
        self._open: dict[str, tuple[Intent, dict[str, Any] | None]] = {}  # by call id, in the order opened
        self._last: Intent | None = None  # the last call opened, open or done
        self._inherited: set[str] = set()  # call ids in flight when the run's last process ended
        # What the last save said; kept when calls open and close (another task may hold paused).
        self._status: RunStatus = RunStatus.RUNNING
        self._reason: StopReason | None = None
        self._writing = asyncio.Lock()
        self._changes = self._written = 0  # changes made, and those a stored checkpoint holds
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
        await self._kv.create(self._checkpoint())

    async def load(self, stored: Command | None, controls: Controls) -> None:
        """Continue from the stored checkpoint, taking its revision; raise if it may not go on.

        Args:
            stored: the last command stored for the run, if any.
            controls: the commands applied so far (a kill may arrive while the checkpoint loads).
        """
        cp = await self._kv.load()
        self.goal, self.policy, self.parent_run_id = cp.goal, cp.policy, cp.parent_run_id
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
        one_intent = cp.intent.call_id if cp.intent is not None and not cp.intents else None  # the older format
        self.state, args = store.unpack_state(cp.state, one_intent)
        self.steps.seq = cp.seq
        self._last = cp.intent
        self._open = {intent.call_id: (intent, args.get(intent.call_id)) for intent in cp.open_intents}
        self._inherited = set(self._open)

    @property
    def open_intents(self) -> tuple[Intent, ...]:
        """The calls in flight, in the order they were opened (on resume: at the last checkpoint)."""
        return tuple(intent for intent, _ in self._open.values())

    @property
    def open_intent(self) -> Intent | None:
        """The last call opened that is still in flight, or None."""
        return next(reversed(self._open.values()))[0] if self._open else None

    def open_call(self, call_id: str) -> tuple[Intent, dict[str, Any] | None] | None:
        """The open call ``call_id`` and its arguments (an ``Intent`` holds only their digest), or None."""
        return self._open.get(call_id)

    @property
    def inherited(self) -> tuple[Intent, ...]:
        """The calls in flight when the run's last process ended, not yet run again or abandoned."""
        return tuple(intent for call_id, (intent, _) in self._open.items() if call_id in self._inherited)

    async def save(self, status: RunStatus = RunStatus.RUNNING, reason: StopReason | None = None) -> None:
        """Write the checkpoint, with ``status`` and ``reason``, once the steps it follows are stored."""
        self._status, self._reason = status, reason
        await self._write()

    async def opened(self, intent: Intent, args: dict[str, Any] | None) -> None:
        """Record ``intent`` as in flight, before the external action: after a crash it says what was."""
        self._open[intent.call_id] = (intent, args)
        self._inherited.discard(intent.call_id)  # run again by this process: its own now
        self._last = intent
        await self._write()

    async def closed(self, intent: Intent) -> None:
        """Record the call of ``intent`` as done."""
        self._open.pop(intent.call_id, None)
        self._inherited.discard(intent.call_id)
        self._last = intent.model_copy(update={"state": "done"})
        await self._write()

    async def _write(self) -> None:
        self._changes += 1
        mine = self._changes
        async with self._writing:
            if self._written >= mine:
                return  # a write made while this one waited held its change already
            await self.steps.flush()
            changes, checkpoint = self._changes, self._checkpoint()
            await self._kv.save(checkpoint)
            self._written = changes

    def _checkpoint(self) -> Checkpoint:
        intents = self.open_intents
        args = {call_id: call_args for call_id, (_, call_args) in self._open.items()}
        return Checkpoint(
            run_id=self.run_id, seq=self.steps.seq, status=self._status, stop_reason=self._reason, goal=self.goal,
            policy=self.policy, state=store.pack_state(self.state, args), intent=intents[-1] if intents else self._last,
            intents=intents, parent_run_id=self.parent_run_id, ts=self._clock(),
        )  # fmt: skip

    @property
    def _kv(self) -> store.CheckpointStore:
        if self._store is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._store


__all__ = ["Checkpointer"]
