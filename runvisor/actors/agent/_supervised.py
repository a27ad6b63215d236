"""``@supervised_tool``: every call of a tool function is an in-process tool call of a run.

    @supervised_tool
    async def search(q: str) -> str: ...

Framework tools are defined where the framework wants them, often at import time, before any
run exists; so by default the run is found when the function is *called*: the one whose
``async with`` block the call runs in (``Run.current()``, tasks started in the block
included). Called outside any run, the function just runs, so the agent does the same with or
without runvisor. ``@supervised_tool(run=run)`` binds it to one run instead.

Arguments are recorded by parameter name, defaults included; see ``_local`` for the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from runvisor.actors.agent._local import ToolCall, ToolDecorator, decorator
from runvisor.actors.agent._run import Run
from runvisor.actors.retry import FailureClassifier

P = ParamSpec("P")
R = TypeVar("R")


@overload
def supervised_tool(fn: Callable[P, Awaitable[R]], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def supervised_tool(fn: Callable[P, R], /) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def supervised_tool(
    fn: None = None, /, *, run: Run | None = None, name: str | None = None, classifier: FailureClassifier | None = None
) -> ToolDecorator: ...


def supervised_tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    run: Run | None = None,
    name: str | None = None,
    classifier: FailureClassifier | None = None,
) -> Callable[..., Coroutine[Any, Any, Any]] | ToolDecorator:
    """Decorator: each call of the function is an in-process tool call (``Run.tool``).

    A sync function runs in a thread (a kill discards its result); the decorated function is a
    coroutine function either way, with the same signature.

    Args:
        fn: the tool function, sync or async.
        run: the run that supervises it; the run current where it is called when None.
        name: the tool's name; the function's name when None.
        classifier: finds failures hidden in results; the executors' default rules when None.
    """

    def opens(tool: str, args: dict[str, Any], rules: FailureClassifier | None) -> ToolCall | None:
        supervisor = run if run is not None else Run.current()
        return None if supervisor is None else supervisor.tool(tool, args, classifier=rules)

    make = decorator(opens, name, classifier)
    return make if fn is None else make(fn)


__all__ = ["supervised_tool"]
