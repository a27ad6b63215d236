"""The ``Run`` handle an agent developer adds to an agent (DESIGN §6).

    async with Run.start(goal="fix the parser", policy=Policy(max_steps=200), agent="my-agent") as run:
        await run.llm(tokens_in=1200, tokens_out=80, cost_usd=0.004)
        result = await run.call_tool("search", {"q": "JsonParser"}, timeout=30)
        run.state["notes"] = [result.observation]

Every method is a *step boundary*: it first obeys the commands that arrived (waits out a
pause, raises :class:`RunKilled` or :class:`RunStopped`), then publishes one ``StepEvent``.
Step events go out with ``publish_async``; their acks are awaited at checkpoints and at the
end, so a step costs one encode and one publish.

Decisions worth knowing:

- Commands arrive on a core subscription, and the last one stored in ``RV_CONTROL`` is read
  back on start, resume and reconnect. The latest command is the run's *desired state*
  (``_commands.Controls``), so seeing one command both ways is harmless.
- Kill interrupts at once: a pending tool call waits on its reply *or* the kill, whichever
  comes first. Pause and stop take effect at the next boundary, so a call in flight finishes
  and its result is recorded before the run holds or ends.
- Checkpoints are compare-and-set updates of the KV revision this process last wrote: if a
  second process resumes the same run, the first is fenced off with a :class:`RunError` at its
  next checkpoint instead of both acting as the run.
- One external action at a time: a ``Checkpoint`` holds one ``Intent``, so concurrent
  ``call_tool`` calls on one run are serialized.
- An exception in the agent's own code marks the run STOPPED/AGENT_CRASHED, which (as the
  recovery hint of DESIGN §5 says) may be resumed; killed, otherwise stopped and completed
  runs may not.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Self

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from runvisor.actors.agent import _limits as limits
from runvisor.actors.agent import _store as store
from runvisor.actors.agent._calls import request_tool
from runvisor.actors.agent._checkpointing import Checkpointer
from runvisor.actors.agent._control import CommandFollower
from runvisor.actors.agent._steps import StepStream
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.runtime import Actor
from runvisor.errors import RunError
from runvisor.protocols import subjects
from runvisor.protocols.conventions import final_args
from runvisor.protocols.messages import (
    MAX_ARGS_CHARS,
    MAX_OBSERVATION_CHARS,
    Command,
    Intent,
    Policy,
    ToolRequest,
    ToolResult,
    check_run_id,
)
from runvisor.protocols.reasons import RunStatus, StopReason

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 5.0
Clock = Callable[[], float]


class Run(Actor):
    """One run of an agent: publishes its steps, keeps its checkpoint, calls tools, obeys commands.

    Create it with :meth:`start` or :meth:`resume` and use it as ``async with``. It is built
    from parts that each own their state: a ``StepStream`` (``_steps``), a ``Checkpointer``
    (``_checkpointing``: goal, policy, ``state`` and the call in flight) and a
    ``CommandFollower`` (``_control``: the commands and the end they ask for).
    """

    role = "agent"
    # A cancelled agent did not complete its run: cancellation is a failure, not a clean stop.
    cancel_is_failure = True
    # An agent whose server is down gets a clear ConnectError after this long, not a silent hang;
    # one whose server is not provisioned gets a NotProvisionedError at once.
    connect_for_s = 30.0

    def __init__(
        self,
        run_id: str,
        *,
        goal: str | None = None,
        policy: Policy | None = None,
        agent: str | None = None,
        resuming: bool = False,
        endpoint: Endpoint | None = None,
        nc: Client | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        clock: Clock = time.time,
    ) -> None:
        """Args:
        run_id: the run's id, one subject token.
        goal: the task, published in the ``start`` event (read from the checkpoint on resume).
        policy: the run's supervision policy, published in the ``start`` event.
        agent: the agent's name, shown to operators.
        resuming: continue an existing run from its checkpoint instead of starting one.
        endpoint: where to connect as the agent role; discovered when None.
        nc: an existing connection to use instead (left open on exit).
        heartbeat_s: interval of heartbeats while a tool call is pending or the run is paused.
        clock: the wall clock stamped on events and checkpoints.
        """
        super().__init__(endpoint, nc=nc, name=f"runvisor-agent-{check_run_id(run_id)}")
        self.run_id = run_id
        self.agent = limits.clip_text(agent)
        self.heartbeat_s = heartbeat_s
        self._resuming = resuming
        self._clock = clock
        self._checkpoints = Checkpointer(run_id, clock, goal=limits.clip(goal, MAX_OBSERVATION_CHARS), policy=policy)
        self._control = CommandFollower(run_id, self._checkpoints, heartbeat_s=heartbeat_s)
        self._call_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self._stream: StepStream | None = None  # the connection's, so made in on_start

    @classmethod
    def start(
        cls,
        goal: str,
        policy: Policy | None = None,
        run_id: str | None = None,
        *,
        agent: str | None = None,
        endpoint: Endpoint | None = None,
        nc: Client | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        clock: Clock = time.time,
    ) -> Self:
        """A new run, to be entered with ``async with``; ``run_id`` is a uuid4 hex when None."""
        return cls(
            run_id or uuid.uuid4().hex, goal=goal, policy=policy, agent=agent, endpoint=endpoint, nc=nc,
            heartbeat_s=heartbeat_s, clock=clock,
        )  # fmt: skip

    @classmethod
    def resume(
        cls,
        run_id: str,
        *,
        agent: str | None = None,
        endpoint: Endpoint | None = None,
        nc: Client | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        clock: Clock = time.time,
    ) -> Self:
        """An existing run continued from its checkpoint (e.g. in a new process after a crash).

        Entering it raises :class:`RunNotFound` without a checkpoint and
        :class:`RunNotResumable` for a killed, stopped or completed run.
        """
        return cls(run_id, agent=agent, resuming=True, endpoint=endpoint, nc=nc, heartbeat_s=heartbeat_s, clock=clock)

    @property
    def goal(self) -> str | None:
        """The run's task (on resume, the one stored in its checkpoint)."""
        return self._checkpoints.goal

    @property
    def policy(self) -> Policy | None:
        """The run's supervision policy (on resume, the one stored in its checkpoint)."""
        return self._checkpoints.policy

    @property
    def state(self) -> dict[str, Any]:
        """The agent's own resumable state: JSON-able values, saved with every checkpoint."""
        return self._checkpoints.state

    @state.setter
    def state(self, state: dict[str, Any]) -> None:
        self._checkpoints.state = state

    @property
    def open_intent(self) -> Intent | None:
        """The call that was in flight when the run was last checkpointed, or None."""
        return self._checkpoints.open_intent

    @property
    def last_command(self) -> Command | None:
        """The last command this run applied (pause, resume, kill or stop), if any."""
        return self._control.controls.last

    @property
    def paused(self) -> bool:
        """Whether a pause is in force (the run holds at its next step boundary)."""
        return self._control.controls.pause is not None

    @property
    def seq(self) -> int:
        """The seq of the last step event this run published (or reserved)."""
        return self._stream.seq if self._stream is not None else 0

    @property
    def _steps(self) -> StepStream:
        if self._stream is None:
            raise RuntimeError(f"run {self.run_id} is not started: use `async with`")
        return self._stream

    # -- what the agent calls ----------------------------------------------------------

    async def llm(
        self,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cost_usd: float | None = None,
        text: str | None = None,
    ) -> int:
        """Report one model call and what it cost; returns the step's seq."""
        await self._control.boundary()
        return await self._steps.publish(
            "llm", tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost_usd, observation=_obs(text)
        )

    async def message(self, text: str) -> int:
        """Report a message (a thought, a reply to the user); returns the step's seq."""
        await self._control.boundary()
        return await self._steps.publish("message", observation=_obs(text))

    async def progress(self, value: float, note: str | None = None) -> int:
        """Report progress towards the goal (0..1 by convention); returns the step's seq."""
        await self._control.boundary()
        return await self._steps.publish("message", progress=value, observation=_obs(note))

    async def heartbeat(self) -> int:
        """Say the agent is alive during long work that reports nothing else."""
        await self._control.boundary()
        return await self._steps.publish("heartbeat")

    async def checkpoint(self) -> None:
        """Save ``run.state`` now (it is also saved before every tool call)."""
        await self._control.boundary()
        await self._checkpoints.save()

    async def call_tool(
        self, name: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0, call_id: str | None = None
    ) -> ToolResult:
        """Call a tool through its executors, checkpointing the intent first (DESIGN §6).

        Failures of the call itself (no executor, timeout, a bad reply, arguments too large)
        come back as a ``ToolResult`` with ``ok=False``; only the run's own end raises.
        """
        subjects.check_token(name, "tool name")
        call_id = call_id or uuid.uuid4().hex[:16]
        async with self._call_lock:
            await self._control.boundary()
            intent = Intent(
                tool=name, call_id=call_id, args_digest=limits.args_digest(args),
                idempotency_key=f"{self.run_id}:{call_id}", opened_at=self._clock(),
            )  # fmt: skip
            return await self._call(intent, args, timeout)

    async def retry_open_intent(self, timeout: float = 30.0) -> ToolResult:
        """Re-issue the call that was in flight at the crash, with the same idempotency key,
        so an executor that already ran it returns the recorded result instead of running it again.
        """
        async with self._call_lock:
            intent = self._checkpoints.open_intent
            if intent is None:
                raise RunError(f"run {self.run_id} has no open intent to retry")
            if limits.args_digest(self._checkpoints.open_args) != intent.args_digest:
                raise RunError(f"run {self.run_id}: the checkpoint lost the arguments of call {intent.call_id}")
            await self._control.boundary()
            again = intent.model_copy(update={"attempt": intent.attempt + 1, "opened_at": self._clock()})
            return await self._call(again, self._checkpoints.open_args, timeout)

    # -- tool calls --------------------------------------------------------------------

    async def _call(self, intent: Intent, args: dict[str, Any] | None, timeout: float) -> ToolResult:
        seq = self._steps.reserve()
        call: dict[str, Any] = {"tool": intent.tool, "call_id": intent.call_id}
        if not limits.fits(args):
            # Nothing external happens, so no intent: the supervisor still sees the attempt.
            await self._steps.publish("tool_call", seq=seq, args=limits.step_args(args), **call)
            refused = ToolResult(
                call_id=intent.call_id, ok=False, attempts=0, error_type="ArgsTooLarge",
                error=f"arguments exceed {MAX_ARGS_CHARS} characters; pass a reference (a path, an id) instead",
            )  # fmt: skip
            await self._publish_result(intent, refused)
            return refused
        await self._checkpoints.open_call(intent, args)  # before the external action
        await self._steps.publish("tool_call", seq=seq, args=args, **call)
        request = ToolRequest(
            run_id=self.run_id, call_id=intent.call_id, tool=intent.tool, args=args,
            idempotency_key=intent.idempotency_key, seq=seq, timeout_s=timeout,
        )  # fmt: skip
        result = await request_tool(
            self.nc, request, killed=self._control.killed, heartbeat_s=self.heartbeat_s,
            heartbeat=lambda: self._steps.publish("heartbeat", **call),
        )  # fmt: skip
        if result is None:  # killed while the call was pending: do not wait for the tool
            terminal = self._control.controls.terminal
            assert terminal is not None  # the kill event is set only with a terminal command
            cancelled = "Cancelled: the run was killed while the call was pending"
            await self._steps.publish("tool_result", ok=False, error=cancelled, **call)
            await self._control.end(terminal)
        await self._publish_result(intent, result)
        await self._checkpoints.close_call(intent)
        return result

    async def _publish_result(self, intent: Intent, result: ToolResult) -> None:
        error = result.error
        if result.error_type and not result.ok:
            error = f"{result.error_type}: {error}" if error else result.error_type
        await self._steps.publish(
            "tool_result", tool=intent.tool, call_id=intent.call_id, ok=result.ok, observation=result.observation,
            error=limits.clip(error, MAX_OBSERVATION_CHARS),
        )  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------

    async def _on_reconnect(self) -> None:
        await super()._on_reconnect()
        # Core delivery drops what was sent while we were away; the stream kept it.
        task = asyncio.create_task(self._control.catch_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_start(self) -> None:
        js = self.nc.jetstream()
        self._stream = StepStream(js, self.run_id, self._clock)
        kv = store.CheckpointStore(await js.key_value(subjects.CHECKPOINTS_BUCKET), self.run_id)
        self._checkpoints.attach(kv, self._stream)
        # Subscribe before reading the stored command so none falls between the two.
        self._sub = await self.nc.subscribe(subjects.ctl(self.run_id), cb=self._control.on_command)
        try:
            stored = await store.last_command(js, self.run_id)
            if self._resuming:
                await self._checkpoints.load(stored, self._control.controls)
            else:
                await self._checkpoints.create()
            if stored is not None:
                self._control.apply(stored, stored=True)
            await self._steps.publish("start", seq=self.seq, task=self.goal, policy=self.policy, agent=self.agent)
        except BaseException:
            await self._sub.unsubscribe()
            raise

    async def on_stop(self) -> None:
        """The agent's code returned: the run completed, unless it was killed or stopped first."""
        if self._control.ended is not None:
            await self._finish(ok=False, error=str(self._control.ended))
        else:
            await self._finish(ok=True, status=RunStatus.COMPLETED, reason=StopReason.COMPLETED)

    async def on_failure(self, exc: BaseException) -> None:
        if exc is self._control.ended:
            await self._finish(ok=False, error=str(exc))  # already recorded by CommandFollower.end
            return
        log.error("agent failed: %r", exc, extra={"run_id": self.run_id})
        text = f"{type(exc).__name__}: {exc}"
        await self._finish(ok=False, error=text, status=RunStatus.STOPPED, reason=StopReason.AGENT_CRASHED)

    async def _finish(
        self, ok: bool, error: str | None = None, status: RunStatus | None = None, reason: StopReason | None = None
    ) -> None:
        try:
            if not self._checkpoints.in_charge:
                return  # another process holds the run now: it speaks for it
            if status is not None:
                await self._checkpoints.save(status, reason)
            await self._steps.publish(
                "final",
                ok=ok,
                error=limits.clip(error, MAX_OBSERVATION_CHARS),
                agent=self.agent,
                args=final_args(reason) if reason is not None else None,
            )
            await self._steps.close()
        except Exception as exc:
            log.error("could not record the end of the run: %s", exc, extra={"run_id": self.run_id})
        finally:
            if self._stream is not None:
                await self._stream.stop()
            for task in self._tasks:
                task.cancel()
            if self._sub is not None and not self.nc.is_closed:
                await self._sub.unsubscribe()


def _obs(text: str | None) -> str | None:
    return limits.clip(text, MAX_OBSERVATION_CHARS)


__all__ = ["DEFAULT_HEARTBEAT_S", "Run"]
