"""The in-process tool decorator's pure parts: arguments by name, and a function outside any run (no server)."""

from __future__ import annotations

import inspect
import threading

from runvisor import supervised_tool
from runvisor.actors.agent._local import named_args


def test_arguments_are_named_with_their_defaults_so_equal_calls_look_equal() -> None:
    def search(q: str, limit: int = 5, *rest: str, **options: bool) -> None: ...

    signature = inspect.signature(search)
    assert named_args(signature, ("x",), {}) == {"q": "x", "limit": 5, "rest": (), "options": {}}
    assert named_args(signature, (), {"q": "x", "limit": 5}) == named_args(signature, ("x",), {})
    assert named_args(signature, ("x", 1, "a"), {"fuzzy": True}) == {
        "q": "x",
        "limit": 1,
        "rest": ("a",),
        "options": {"fuzzy": True},
    }


def test_arguments_that_do_not_bind_are_kept_as_given() -> None:
    def one(a: int) -> None: ...

    assert named_args(inspect.signature(one), (1, 2), {"b": 3}) == {"args": [1, 2], "b": 3}
    assert named_args(None, (1,), {"b": 3}) == {"args": [1], "b": 3}


async def test_outside_any_run_a_decorated_function_just_runs() -> None:
    @supervised_tool
    async def add(a: int, b: int = 1) -> int:
        return a + b

    @supervised_tool(name="thread-name")
    def where() -> str:
        return threading.current_thread().name

    assert await add(2) == 3
    assert await where() != threading.current_thread().name, "a sync tool runs in a thread"


def test_a_decorated_function_keeps_its_name_doc_and_signature_and_is_a_coroutine_function() -> None:
    def lookup(key: str, default: str = "") -> str:
        """Look a key up."""
        return default

    wrapped = supervised_tool(lookup)
    assert inspect.iscoroutinefunction(wrapped)
    assert (wrapped.__name__, wrapped.__doc__) == ("lookup", "Look a key up.")
    assert inspect.signature(wrapped) == inspect.signature(lookup)
