"""In-process tool calls: a tool that runs in the agent's own process, supervised as an external action.

    async with run.tool("search", {"q": q}) as call:
        call.result = await search(q)

Entering the block is a step boundary (a pause holds there, a kill or stop raises); then the
``tool_call`` step is published and the open intent checkpointed, and only then does the body
run. Leaving it, the result is judged for hidden failures as executors judge theirs (``{"ok":
false}``, ``"Error: ..."``, an error field; ``runvisor.actors.retry.classify``), the
``tool_result`` step is published and the intent closed. An exception from the body is the
tool's failure: recorded, then raised on unchanged. The agent gets its value back as is: a
hidden failure is for supervisors to count, not for runvisor to hide.

A kill while the body runs cancels the task running it (as ``asyncio.timeout`` does) and
raises ``RunKilled`` out of the block. Pause and stop wait for the next boundary, so a call in
flight finishes and is recorded first, as with executor calls. While the body runs, a
heartbeat step names the call every ``heartbeat_s``.

``supervised`` wraps a function in such a block (for ``@supervised_tool``, in ``_supervised``):
an async function is awaited, a sync one runs in a thread (``asyncio.to_thread``), so a kill
cancels the wait and its result, when it comes, is discarded; the thread itself cannot be
stopped. The decorated function is a coroutine function either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Protocol, Self, TypeVar, overload

from runvisor.actors.agent import _limits as limits
from runvisor.actors.agent._actions import Actions
from runvisor.actors.retry import DefaultClassifier, FailureClassifier, Outcome
from runvisor.actors.tools import observation_text
from runvisor.errors import ConfigError, RunError
from runvisor.protocols.messages import MAX_TEXT_CHARS, Intent

log = logging.getLogger("runvisor.actors.agent")

P = ParamSpec("P")
R = TypeVar("R")

#: What to do with a call in flight at a crash that runvisor will not run again by itself.
RERUN = (
    "If running it twice is safe, run it again with run.tool(name, args, call_id=..., idempotent=True); "
    "else find out whether it took effect, then close it with run.abandon_open_intent(call_id)"
)
#: Hidden-failure rules of a call given none: the executors' defaults.
_DEFAULT_CLASSIFIER = DefaultClassifier()


class ToolCall:
    """One in-process tool call, used as ``async with run.tool(name, args) as call``.

    Set ``call.result`` in the block to have it recorded and judged. After the block, ``ok``
    says whether the call succeeded (a hidden failure is not a success) and ``error`` why not.

    Attributes:
        intent: the call's checkpointed intent (``call_id``, ``idempotency_key``, ``attempt``).
        args: the arguments as recorded (JSON values; a preview when too large).
        ok: None until the call ends.
        error: the failure, as ``"<type>: <message>"``.
    """

    def __init__(
        self, actions: Actions, intent: Intent, args: dict[str, Any] | None, classifier: FailureClassifier
    ) -> None:
        self.intent = intent
        self.args = args
        self.ok: bool | None = None
        self.error: str | None = None
        self._actions = actions
        self._classifier = classifier
        self._result: object = None
        self._has_result = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cancelled_by_kill = False

    @property
    def call_id(self) -> str:
        return self.intent.call_id

    @property
    def idempotency_key(self) -> str:
        """``<run>:<call_id>``, the same when the call is run again after a crash: pass it on to
        an API that de-duplicates by key, and running the call twice does no harm."""
        return self.intent.idempotency_key

    @property
    def result(self) -> object:
        """What the tool returned (set it in the block)."""
        return self._result

    @result.setter
    def result(self, value: object) -> None:
        self._result, self._has_result = value, True

    async def __aenter__(self) -> Self:
        await self._actions.control.boundary()
        await self._actions.open(self.intent, self.args)
        if self._actions.control.killed.is_set():  # killed while the intent was written: do not start
            await self._actions.killed(self.intent)
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(), name=f"runvisor-call-{self.intent.call_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stop_watching():
            await self._actions.killed(self.intent)  # raises RunKilled in place of the cancellation
        if exc is not None:
            self.ok, self.error = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._actions.close(self.intent, ok=False, error=self.error)
            return  # the tool's own error goes on to the agent's code unchanged
        self.ok, observation, self.error = self._judge()
        await self._actions.close(self.intent, ok=self.ok, observation=observation, error=self.error)

    def _judge(self) -> tuple[bool, str | None, str | None]:
        if not self._has_result:
            return True, None, None
        try:
            outcome = Outcome.from_value(self._result, self._classifier)
        except Exception as exc:  # a broken classifier says nothing about the tool
            log.warning("classifier failed, taking the value as a success: %s", exc, extra={"tool": self.intent.tool})
            outcome = Outcome.success(self._result)
        observation = observation_text(self._result)
        if outcome.ok:
            return True, observation, None
        return False, observation, f"{outcome.error_type}: {outcome.message}" if outcome.message else outcome.error_type

    async def _watch(self) -> None:
        """Heartbeats while the body runs; on a kill, cancel the task running it."""
        killed = self._actions.control.killed
        while not killed.is_set():
            try:
                async with asyncio.timeout(self._actions.heartbeat_s):
                    await killed.wait()
            except TimeoutError:
                await self._actions.heartbeat(self.intent)
        if self._task is not None:
            self._cancelled_by_kill = True
            self._task.cancel(f"run {self._actions.run_id} was killed")

    def _stop_watching(self) -> bool:
        """Stop the watcher; returns whether it cancelled the body for a kill (that cancellation is undone)."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._cancelled_by_kill and self._task is not None:
            self._task.uncancel()
        return self._cancelled_by_kill


def new_call(
    actions: Actions,
    name: str,
    args: dict[str, Any] | None,
    *,
    call_id: str | None,
    idempotent: bool,
    classifier: FailureClassifier | None,
) -> ToolCall:
    """A new in-process call (``Run.tool``), or, for the ``call_id`` of a call in flight at a crash,
    that call run again under its idempotency key when it is ``idempotent``."""
    if not name or len(name) > MAX_TEXT_CHARS:
        raise ConfigError(f"a tool name must be 1-{MAX_TEXT_CHARS} characters, got {len(name)}")
    full = limits.jsonable(args)
    inherited = next((i for i in actions.checkpoints.inherited if i.call_id == call_id), None)
    if inherited is None:
        intent = actions.intent(name, full, call_id, in_process=True)
    elif not idempotent:
        raise RunError(f"{in_flight(inherited)}: it may have taken effect, so it is not run again. {RERUN}")
    elif inherited.tool != name or inherited.args_digest != limits.args_digest(full):
        raise RunError(f"{in_flight(inherited)}, with another tool or arguments: give this call its own call_id")
    else:
        intent = actions.again(inherited)
    return ToolCall(actions, intent, limits.step_args(full), classifier or _DEFAULT_CLASSIFIER)


def in_flight(intent: Intent) -> str:
    return f"call {intent.call_id} of tool {intent.tool!r} was in flight when the run's last process ended"


class _Opens(Protocol):
    """Opens an in-process call of the tool ``name`` with ``args``; None where no run supervises it."""

    def __call__(self, name: str, args: dict[str, Any], classifier: FailureClassifier | None, /) -> ToolCall | None: ...


class ToolDecorator(Protocol):
    """What ``@run.tool_fn(...)`` and ``@supervised_tool(...)`` return: a decorator of sync or async functions."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


def decorator(opens: _Opens, name: str | None, classifier: FailureClassifier | None) -> ToolDecorator:
    """A decorator making each call of a function an in-process tool call opened by ``opens``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
        return supervised(fn, opens, name=name, classifier=classifier)

    return decorate


def supervised(
    fn: Callable[..., Any], opens: _Opens, *, name: str | None, classifier: FailureClassifier | None
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``fn`` as a coroutine function whose every call is an in-process tool call (see the module doc)."""
    tool = name or str(getattr(fn, "__name__", "tool"))
    signature = _signature(fn)
    is_async = inspect.iscoroutinefunction(fn)

    async def invoke(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = await fn(*args, **kwargs) if is_async else await asyncio.to_thread(fn, *args, **kwargs)
        if inspect.isawaitable(value):  # a sync wrapper of a coroutine (functools.partial of an async function)
            value = await value
        return value

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = opens(tool, named_args(signature, args, kwargs), classifier)
        if call is None:  # no run supervises it here: the function as it is
            return await invoke(args, kwargs)
        async with call:
            call.result = await invoke(args, kwargs)
        return call.result

    return wrapper


def named_args(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults included, so equal calls digest the same."""
    if signature is None:
        return {"args": list(args), **kwargs} if args else dict(kwargs)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {"args": list(args), **kwargs}  # the call itself will raise, and be recorded
    bound.apply_defaults()
    return dict(bound.arguments)


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    with contextlib.suppress(TypeError, ValueError):
        return inspect.signature(fn)
    return None


__all__ = ["RERUN", "ToolCall", "ToolDecorator", "decorator", "in_flight", "named_args", "new_call", "supervised"]
