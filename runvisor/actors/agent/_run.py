"""The ``Run`` handle an agent developer adds to an agent (DESIGN §6).

    async with Run.start(goal="fix the parser", policy=Policy(max_steps=200), agent="my-agent") as run:
        await run.llm(model="gpt-4o", tokens_in=1200, tokens_out=80)  # cost from the price table
        result = await run.call_tool("search", {"q": "JsonParser"}, timeout=30)  # through an executor
        async with run.tool("grep", {"pattern": "JsonParser"}) as call:  # in this process
            call.result = await grep("JsonParser")
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
  comes first, and an in-process call's task is cancelled. Pause and stop take effect at the
  next boundary, so a call in flight finishes and its result is recorded before the run holds or ends.
- Checkpoints are compare-and-set updates of the KV revision this process last wrote: if a
  second process resumes the same run, the first is fenced off with a :class:`RunError` at its
  next checkpoint instead of both acting as the run.
- Tool calls may run in parallel (``asyncio.gather``, a framework's parallel tool calls): a
  ``Checkpoint`` holds every open ``Intent`` (``_actions``, ``_local``).
- After a crash, ``open_intents`` says what was in flight. runvisor never runs an in-process
  call again by itself: only the agent knows whether running it twice is safe.
- An exception in the agent's own code marks the run STOPPED/AGENT_CRASHED, which (as the
  recovery hint of DESIGN §5 says) may be resumed; killed, otherwise stopped and completed
  runs may not.
- A framework that saves its own state at a pause (LangGraph's ``interrupt``) lets its process
  leave the block with the run ``suspended``: the run stays PAUSED, with no ``final`` event,
  until ``Run.resume`` continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Self

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from runvisor.actors.agent import _limits as limits
from runvisor.actors.agent import _store as store
from runvisor.actors.agent._actions import Actions
from runvisor.actors.agent._checkpointing import Checkpointer
from runvisor.actors.agent._control import CommandFollower
from runvisor.actors.agent._local import RERUN, ToolCall, in_flight, new_call
from runvisor.actors.agent._pricing import Prices, Pricing
from runvisor.actors.agent._steps import StepStream
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.retry import FailureClassifier
from runvisor.actors.runtime import Actor
from runvisor.errors import RunError, RunKilled, RunStopped
from runvisor.protocols import subjects
from runvisor.protocols.conventions import final_args, heartbeat_args
from runvisor.protocols.messages import (
    MAX_OBSERVATION_CHARS,
    Command,
    Intent,
    Policy,
    ToolResult,
    check_run_id,
)
from runvisor.protocols.reasons import RunStatus, StopReason

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 5.0
Clock = Callable[[], float]

#: The run whose ``async with`` block the current code runs in (see ``Run.current``).
_CURRENT: ContextVar[Run | None] = ContextVar("runvisor_current_run", default=None)


class Run(Actor):
    """One run of an agent: publishes its steps, keeps its checkpoint, calls tools, obeys commands.

    Create it with :meth:`start` or :meth:`resume` and use it as ``async with``. It is built
    from parts that each own their state: a ``StepStream`` (``_steps``), a ``Checkpointer``
    (``_checkpointing``: goal, policy, ``state`` and the calls in flight), a
    ``CommandFollower`` (``_control``: the commands and the end they ask for), ``Actions``
    (``_actions``: tool calls) and ``Pricing`` (``_pricing``: costs from tokens).
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
        prices: Prices | None = None,
        parent: Run | str | None = None,
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
        prices: ``{model: ($ per million input tokens, $ per million output tokens)}``, used by
            ``llm(model=...)`` before the genai-prices table.
        parent: the run (or its id) that starts this one as a sub-agent, named in the ``start`` event.
        """
        super().__init__(endpoint, nc=nc, name=f"runvisor-agent-{check_run_id(run_id)}")
        self.run_id = run_id
        self.agent = limits.clip_text(agent)
        self.heartbeat_s = heartbeat_s
        self._resuming = resuming
        self._clock = clock
        parent_id = check_run_id(parent.run_id if isinstance(parent, Run) else parent) if parent is not None else None
        self._checkpoints = Checkpointer(
            run_id, clock, goal=limits.clip(goal, MAX_OBSERVATION_CHARS), policy=policy, parent_run_id=parent_id
        )
        self._control = CommandFollower(run_id, self._checkpoints, heartbeat_s=heartbeat_s)
        self._actions = Actions(run_id, self._checkpoints, self._control, heartbeat_s=heartbeat_s, clock=clock)
        self._pricing = Pricing(prices)
        self._current: Token[Run | None] | None = None
        self._finished = False
        self._suspended = False
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
        prices: Prices | None = None,
        parent: Run | str | None = None,
    ) -> Self:
        """A new run, to be entered with ``async with``; ``run_id`` is a uuid4 hex when None.

        A sub-agent names the run that starts it with ``parent`` (see ``__init__``).
        """
        return cls(
            run_id or uuid.uuid4().hex, goal=goal, policy=policy, agent=agent, endpoint=endpoint, nc=nc,
            heartbeat_s=heartbeat_s, clock=clock, prices=prices, parent=parent,
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
        prices: Prices | None = None,
    ) -> Self:
        """An existing run continued from its checkpoint (e.g. in a new process after a crash).

        Entering it raises :class:`RunNotFound` without a checkpoint and
        :class:`RunNotResumable` for a killed, stopped or completed run.
        """
        return cls(
            run_id, agent=agent, resuming=True, endpoint=endpoint, nc=nc, heartbeat_s=heartbeat_s, clock=clock,
            prices=prices,
        )  # fmt: skip

    @classmethod
    def current(cls) -> Run | None:
        """The run whose ``async with`` block this code runs in (tasks started there too), or None
        (also in a task that outlived its run)."""
        run = _CURRENT.get()
        return run if run is not None and not run._finished else None

    @property
    def goal(self) -> str | None:
        """The run's task (on resume, the one stored in its checkpoint)."""
        return self._checkpoints.goal

    @property
    def parent_run_id(self) -> str | None:
        """The run that started this one as a sub-agent (on resume, the one stored in its checkpoint)."""
        return self._checkpoints.parent_run_id

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
        """The last call opened that is still in flight, or None (all of them: ``open_intents``)."""
        return self._checkpoints.open_intent

    @property
    def open_intents(self) -> tuple[Intent, ...]:
        """The calls in flight, in the order they were opened.

        Right after ``Run.resume``: those in flight when the run's last process ended, until each
        is retried (``retry_open_intent``), run again (``tool(..., call_id=...)``) or abandoned
        (``abandon_open_intent``); then also the calls this process has open.
        """
        return self._checkpoints.open_intents

    def open_args(self, call_id: str) -> dict[str, Any] | None:
        """The arguments of the open call ``call_id`` (an ``Intent`` holds only their digest), or None."""
        found = self._checkpoints.open_call(call_id)
        return found[1] if found is not None else None

    @property
    def last_command(self) -> Command | None:
        """The last command this run applied (pause, resume, kill or stop), if any."""
        return self._control.controls.last

    @property
    def paused(self) -> bool:
        """Whether a pause is in force (the run holds at its next step boundary)."""
        return self._control.controls.pause is not None

    @property
    def killed(self) -> asyncio.Event:
        """Set once a kill arrives: work in flight (a model request, a tool call) should be abandoned
        at once, not at the next step boundary. For framework adapters; read-only by convention."""
        return self._control.killed

    @property
    def suspended(self) -> bool:
        """Whether leaving the ``async with`` block leaves the run PAUSED, for ``Run.resume``, instead of completing it.

        For a framework that stops at a pause and saves its own state, so that its process may
        end there (LangGraph's ``interrupt``: ``runvisor.adapters.langgraph`` sets this when it
        interrupts a graph for a pause and clears it when the graph runs to its end). Leaving the
        block then saves a PAUSED checkpoint (with the pause's reason, else USER_PAUSED) and says so
        in a heartbeat, with no ``final`` event: supervisors show the run paused and, as for any
        paused run, do not time it out. A kill or stop received first ends the run as usual, and an
        exception out of the block is a crash as usual.
        """
        return self._suspended

    @suspended.setter
    def suspended(self, suspended: bool) -> None:
        self._suspended = suspended

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
        *,
        model: str | None = None,
    ) -> int:
        """Report one model call and what it cost; returns the step's seq.

        With ``model`` and no ``cost_usd``, the cost is computed from the tokens with the run's
        ``prices`` or the genai-prices table (``runvisor[prices]``); it stays None for a model
        neither knows (see ``_pricing``).
        """
        await self._control.boundary()
        if cost_usd is None and model is not None:
            cost_usd = await self._pricing.cost(model, tokens_in, tokens_out)
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

    async def obey(self) -> None:
        """Obey the commands that arrived, without reporting a step: hold here while the run is
        paused, raise :class:`RunKilled` or :class:`RunStopped` once it has ended.

        Every reporting call does this first; a framework adapter calls it where the framework is
        about to act (a model request, a tool call) before it has anything to report.
        """
        await self._control.boundary()

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
        await self._control.boundary()
        intent = self._actions.intent(name, args, call_id, in_process=False)
        return await self._actions.via_executor(self.nc, intent, args, timeout)

    def tool(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        call_id: str | None = None,
        idempotent: bool = False,
        classifier: FailureClassifier | None = None,
    ) -> ToolCall:
        """An in-process tool call, supervised as an external action: ``async with run.tool(...) as call``.

        See ``_local`` for what entering and leaving the block do. Arguments are recorded as JSON
        (what JSON cannot hold, by its ``str``).

        Args:
            name: the tool's name, as supervisors see it.
            args: the call's arguments.
            call_id: the call's id (a framework's tool call id); a new one when None. The id of a
                call in flight when the run's last process ended runs that call again under the
                same idempotency key, and only if ``idempotent``.
            idempotent: whether running the call twice is safe.
            classifier: finds failures hidden in the result; the executors' default rules when None.

        Raises:
            RunError: ``call_id`` is already open here, or names a call in flight at a crash that
                is not ``idempotent`` (it may have taken effect) or had other arguments.
        """
        return new_call(self._actions, name, args, call_id=call_id, idempotent=idempotent, classifier=classifier)

    async def retry_open_intent(self, timeout: float = 30.0, *, call_id: str | None = None) -> ToolResult:
        """Re-issue a call that was in flight at the crash, with the same idempotency key,
        so an executor that already ran it returns the recorded result instead of running it again.

        Args:
            timeout: the call's timeout.
            call_id: which call, when several were in flight.
        """
        intent = self._actions.inherited(call_id)
        if intent.in_process:
            raise RunError(f"{in_flight(intent)}, in the agent's own process: no executor holds its result. {RERUN}")
        args = self.open_args(intent.call_id)
        if limits.args_digest(args) != intent.args_digest:
            raise RunError(f"run {self.run_id}: the checkpoint lost the arguments of call {intent.call_id}")
        await self._control.boundary()
        return await self._actions.via_executor(self.nc, self._actions.again(intent), args, timeout)

    async def abandon_open_intent(self, call_id: str, note: str | None = None) -> None:
        """Close a call that was in flight at the crash without running it again: its ``tool_result``
        says it was abandoned (``ok=False``, ``note`` as the reason) and its intent is marked done."""
        intent = self._actions.inherited(call_id)
        await self._control.boundary()
        await self._actions.abandon(intent, limits.clip(note, MAX_OBSERVATION_CHARS))

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
            await self._steps.publish(
                "start", seq=self.seq, task=self.goal, policy=self.policy, agent=self.agent,
                parent_run_id=self.parent_run_id,
            )  # fmt: skip
        except BaseException:
            await self._sub.unsubscribe()
            raise
        self._current = _CURRENT.set(self)

    async def on_stop(self) -> None:
        """The agent's code returned: the run completed, unless it was killed or stopped first (or is ``suspended``)."""
        terminal = self._control.controls.terminal
        if self._suspended and self._control.ended is None and terminal is not None:
            with contextlib.suppress(RunError):  # killed or stopped while suspended: it ends as commanded
                await self._control.end(terminal)
        if self._control.ended is not None:
            await self._finish(ok=False, error=str(self._control.ended))
        elif self._suspended:
            pause = self._control.controls.pause
            reason = (pause.reason if pause is not None else None) or StopReason.USER_PAUSED
            await self._finish(ok=True, status=RunStatus.PAUSED, reason=reason)
        else:
            await self._finish(ok=True, status=RunStatus.COMPLETED, reason=StopReason.COMPLETED)

    async def on_failure(self, exc: BaseException) -> None:
        terminal = self._control.controls.terminal
        if self._control.ended is None and terminal is not None:
            # A kill or stop of this run had arrived and not yet been obeyed when something else
            # ended the block (a sub-agent's stop for the same budget): the run ends as commanded.
            with contextlib.suppress(RunError):
                await self._control.end(terminal)
        if self._control.ended is not None:
            # Killed or stopped (already recorded by CommandFollower.end): what escaped is that end,
            # or a framework's own wrapping of it (an ExceptionGroup, its cancellation), never a crash.
            await self._finish(ok=False, error=str(self._control.ended))
            return
        if isinstance(exc, RunKilled | RunStopped) and exc.run_id and exc.run_id != self.run_id:
            # Another run's end (a parent's, raised by its call inside this sub-agent's block) ends
            # this one for the same reason: not a crash of its code, and not resumable if killed.
            reason = StopReason.USER_KILLED if isinstance(exc, RunKilled) else exc.reason
            log.warning("run ending with run %s: %s", exc.run_id, exc, extra={"run_id": self.run_id})
            text = f"ended with run {exc.run_id}: {exc}"
            await self._finish(ok=False, error=text, status=RunStatus.STOPPED, reason=reason)
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
            if status is RunStatus.PAUSED:  # suspended: not an end, the run goes on after Run.resume
                paused = heartbeat_args(status, reason)
                await self._steps.publish("heartbeat", observation="suspended until Run.resume", args=paused)
            else:
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
            self._finished = True
            if self._current is not None:
                with contextlib.suppress(ValueError):  # left in another context than it was entered in
                    _CURRENT.reset(self._current)
                self._current = None
            if self._stream is not None:
                await self._stream.stop()
            for task in self._tasks:
                task.cancel()
            if self._sub is not None and not self.nc.is_closed:
                await self._sub.unsubscribe()


def _obs(text: str | None) -> str | None:
    return limits.clip(text, MAX_OBSERVATION_CHARS)


__all__ = ["DEFAULT_HEARTBEAT_S", "Run"]
