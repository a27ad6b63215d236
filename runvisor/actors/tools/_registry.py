"""Tool registration and the pure helpers around one call: argument checks, observation text, KV keys.

Nothing here does I/O; the executor in ``runvisor.actors.tools`` wires these to NATS.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from runvisor.actors.retry import DefaultClassifier, FailureClassifier, ToolPolicy
from runvisor.protocols.messages import MAX_OBSERVATION_CHARS
from runvisor.protocols.subjects import check_token

F = TypeVar("F", bound=Callable[..., Any])

#: What a KV key may be, as nats-py checks it, minus '.' so a plain key never looks like a hashed one.
_PLAIN_KEY = re.compile(r"[-/_=a-zA-Z0-9]{1,200}")
_HASHED_PREFIX = "sha256."


@dataclass(frozen=True, slots=True)
class Tool:
    """One registered tool: the function and how it is called, retried and judged.

    Attributes:
        name: The tool's name, one subject token (``rv.tool.<name>``).
        fn: The function; called with the request's ``args`` as keyword arguments.
        policy: Timeouts, retries, breaker and budget.
        classifier: Finds failures hidden in returned values.
    """

    name: str
    fn: Callable[..., Any]
    policy: ToolPolicy
    classifier: FailureClassifier

    def check_args(self, args: Mapping[str, Any]) -> str | None:
        """Say why ``args`` cannot be passed to the function, or ``None`` when they fit.

        Checked before the first attempt, so a wrong call is a clear non-retryable error
        rather than a ``TypeError`` from somewhere inside the tool.
        """
        signature = _signature(self.fn)
        if signature is None:
            return None  # builtins without a signature: let the call itself complain
        try:
            signature.bind(**args)
        except TypeError as exc:
            shown = signature.replace(return_annotation=inspect.Signature.empty)
            return f"bad arguments for tool {self.name!r}: {exc} (expected {self.name}{shown})"
        return None

    async def call(self, args: Mapping[str, Any]) -> object:
        """Run the function once; a sync function runs in a thread so it cannot block the loop."""
        if _is_async(self.fn):
            return await self.fn(**args)
        value = await asyncio.to_thread(self.fn, **args)
        if inspect.isawaitable(value):
            # A sync wrapper that returns a coroutine (functools.partial of an async function).
            value = await value
        return value


@functools.lru_cache(maxsize=1024)  # checked on every request; tools are few and long-lived
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        # Resolved annotations read as `q: str` rather than `q: 'str'` in error messages.
        return inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError, AttributeError):
        pass  # annotations naming what is not importable here: show them as written
    except (TypeError, ValueError):
        return None
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _is_async(fn: Callable[..., Any]) -> bool:
    # Also an instance whose __call__ is async (B004 is about callable checks; this reads the method).
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class ToolRegistry:
    """The tools an executor serves, registered with ``@tools.tool`` or ``@tools.tool(policy=...)``."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        policy: ToolPolicy | None = None,
        classifier: FailureClassifier | None = None,
    ) -> Tool:
        """Register ``fn`` and return its ``Tool``.

        Args:
            fn: A sync or async function.
            name: The tool's name; the function's name when ``None``.
            policy: The tool's policy; ``ToolPolicy()`` when ``None``.
            classifier: Hidden-failure rules; the policy's ``DefaultClassifier`` when ``None``.

        Raises:
            ValueError: The name is not one subject token, or is already registered.
        """
        tool_name = check_token(name or str(getattr(fn, "__name__", "")), "tool name")
        if tool_name in self._tools:
            raise ValueError(f"tool {tool_name!r} is already registered")
        tool_policy = policy or ToolPolicy()
        entry = Tool(tool_name, fn, tool_policy, classifier or DefaultClassifier.from_policy(tool_policy))
        self._tools[tool_name] = entry
        return entry

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        policy: ToolPolicy | None = None,
        classifier: FailureClassifier | None = None,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        policy: ToolPolicy | None = None,
        classifier: FailureClassifier | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator registering a function as a tool (``@tools.tool`` or ``@tools.tool(...)``).

        The function is returned unchanged, so it can still be called directly.
        """

        def register(func: F) -> F:
            self.add(func, name=name, policy=policy, classifier=classifier)
            return func

        return register if fn is None else register(fn)

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)


def clip(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so at the end when it was cut."""
    if len(text) <= limit:
        return text
    marker = f"\n[truncated: {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker[:limit]


def observation_text(value: object) -> str:
    """A tool's return value as the text an agent reads.

    ``str`` as is, ``bytes`` decoded, dicts, lists and pydantic models as compact JSON,
    ``None`` as empty text, anything else with ``str()``; cut to ``MAX_OBSERVATION_CHARS``.
    """
    if isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    elif isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, BaseModel):
        text = value.model_dump_json()
    elif isinstance(value, Mapping | list | tuple):
        text = _compact_json(value)
    else:
        text = str(value)
    return clip(text)


def _compact_json(value: Mapping[Any, Any] | list[Any] | tuple[Any, ...]) -> str:
    data = dict(value) if isinstance(value, Mapping) else value
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)  # keys JSON cannot hold (tuples) or circular data: still readable


def kv_key(raw: str) -> str:
    """A valid KV key for ``raw``: itself when plain, else ``sha256.<hex>``.

    Plain keys never contain '.', hashed ones always do, so the two never collide.
    """
    if _PLAIN_KEY.fullmatch(raw):
        return raw
    return _HASHED_PREFIX + hashlib.sha256(raw.encode()).hexdigest()


__all__ = ["Tool", "ToolRegistry", "clip", "kv_key", "observation_text"]
