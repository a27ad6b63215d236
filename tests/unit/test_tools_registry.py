"""The pure parts of tool executors: registration, argument checks, observation text, KV keys."""

from __future__ import annotations

import re

import pytest

from runvisor.actors.retry import DefaultClassifier, Failure, ToolPolicy
from runvisor.actors.tools._registry import Tool, ToolRegistry, clip, kv_key, observation_text
from runvisor.protocols.messages import MAX_OBSERVATION_CHARS, ToolResult

_VALID_KV_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")  # nats-py's rule


def test_decorator_registers_with_and_without_options_and_returns_the_function() -> None:
    tools = ToolRegistry()

    @tools.tool
    async def plain(q: str) -> str:
        return q

    @tools.tool(name="renamed", policy=ToolPolicy(max_attempts=7))
    def other() -> str:
        return "x"

    assert {t.name for t in tools} == {"plain", "renamed"}
    assert tools["renamed"].policy.max_attempts == 7
    assert isinstance(tools["plain"].classifier, DefaultClassifier)
    assert other() == "x"  # still callable directly
    assert "plain" in tools
    assert len(tools) == 2


def test_custom_classifier_is_kept() -> None:
    def never_fails(value: object, /) -> Failure | None:
        return None

    tools = ToolRegistry()
    tool = tools.add(lambda: "x", name="lam", classifier=never_fails)
    assert tool.classifier is never_fails


@pytest.mark.parametrize("name", ["a.b", "has space", "star*", ""])
def test_names_that_are_not_one_subject_token_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="tool name"):
        ToolRegistry().add(lambda: None, name=name)


def test_a_name_registers_once() -> None:
    tools = ToolRegistry()
    tools.add(lambda: None, name="t")
    with pytest.raises(ValueError, match="already registered"):
        tools.add(lambda: None, name="t")


def test_check_args_explains_a_wrong_call() -> None:
    def search(q: str, limit: int = 10) -> str:
        return q

    tool = Tool("search", search, ToolPolicy(), DefaultClassifier())
    assert tool.check_args({"q": "x"}) is None
    assert tool.check_args({"q": "x", "limit": 3}) is None
    problem = tool.check_args({"query": "x"})
    assert problem is not None
    assert "unexpected keyword argument 'query'" in problem or "missing a required argument: 'q'" in problem
    assert "search(q: str, limit: int = 10)" in problem


async def test_call_runs_sync_and_async_functions() -> None:
    async def aio(x: int) -> int:
        return x + 1

    def sync(x: int) -> int:
        return x * 2

    assert await Tool("a", aio, ToolPolicy(), DefaultClassifier()).call({"x": 1}) == 2
    assert await Tool("s", sync, ToolPolicy(), DefaultClassifier()).call({"x": 4}) == 8


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("as is", "as is"),
        ({"a": [1, 2], "b": "é"}, '{"a":[1,2],"b":"é"}'),
        ([1, "x"], '[1,"x"]'),
        (None, ""),
        (b"bytes", "bytes"),
        (42, "42"),
        ({(1, 2): "tuple key"}, "{(1, 2): 'tuple key'}"),
    ],
)
def test_observation_text(value: object, text: str) -> None:
    assert observation_text(value) == text


def test_observation_text_of_a_model_is_json() -> None:
    assert observation_text(ToolResult(call_id="c", ok=True)).startswith('{"call_id":"c","ok":true')


def test_long_text_is_clipped_within_the_limit_and_says_so() -> None:
    text = observation_text("x" * (MAX_OBSERVATION_CHARS + 10))
    assert len(text) == MAX_OBSERVATION_CHARS
    assert text.endswith(f"[truncated: {MAX_OBSERVATION_CHARS + 10} characters in all]")
    assert clip("short", 10) == "short"
    assert len(clip("y" * 50, 10)) == 10


@pytest.mark.parametrize("raw", ["search", "run-1_a=b/c"])
def test_plain_keys_are_kept(raw: str) -> None:
    assert kv_key(raw) == raw


@pytest.mark.parametrize("raw", ["run:1", "a.b", "with space", "é", "x" * 300, ""])
def test_other_keys_are_hashed_into_valid_distinct_keys(raw: str) -> None:
    key = kv_key(raw)
    assert key.startswith("sha256.")
    assert _VALID_KV_KEY.match(key)
    assert key != kv_key(raw + "!")
