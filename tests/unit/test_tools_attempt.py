"""One attempt of a tool: its outcome, the step events of a retry, early failures."""

from __future__ import annotations

import asyncio

from runvisor.actors.retry import DefaultClassifier, Failure, Outcome, ToolPolicy
from runvisor.actors.tools._attempt import failure, retry_events, run_once
from runvisor.actors.tools._registry import Tool
from runvisor.errors import TransientError
from runvisor.protocols.messages import ToolRequest
from runvisor.protocols.reasons import StopReason


def make_tool(fn: object, classifier: object = None) -> Tool:
    return Tool("t", fn, ToolPolicy(), classifier or DefaultClassifier())  # type: ignore[arg-type]


async def test_run_once_turns_values_and_errors_into_outcomes() -> None:
    async def ok() -> str:
        return "fine"

    async def hidden() -> dict[str, object]:
        return {"ok": False, "error": "quota"}

    async def raises() -> str:
        raise TransientError("flaky")

    assert await run_once(make_tool(ok), {}, 5) == Outcome.success("fine")
    found = await run_once(make_tool(hidden), {}, 5)
    assert (found.ok, found.hidden, found.error_type) == (False, True, "ToolError")
    failed = await run_once(make_tool(raises), {}, 5)
    assert (failed.ok, failed.error_type, failed.message) == (False, "TransientError", "flaky")
    assert "Exception" in failed.error_types


async def test_run_once_times_out_and_refuses_without_time_left() -> None:
    never = asyncio.Event()

    async def hang() -> str:
        await never.wait()
        return "never"

    timed_out = await run_once(make_tool(hang), {}, 0.001)
    assert (timed_out.error_type, timed_out.message) == ("TimeoutError", "the attempt took longer than 0.00s")
    assert (await run_once(make_tool(hang), {}, 0)).error_type == "TimeoutError"


async def test_a_broken_classifier_does_not_fail_the_tool() -> None:
    def broken(value: object, /) -> Failure | None:
        raise RuntimeError("bug in the classifier")

    async def ok() -> str:
        return "fine"

    assert (await run_once(make_tool(ok, broken), {}, 5)).ok


def test_retry_events_are_a_failed_result_then_the_next_call() -> None:
    request = ToolRequest(run_id="r1", call_id="c9", tool="search", args={"q": "x"}, idempotency_key="k", seq=4)
    outcome = Outcome.from_value("Error: no index", DefaultClassifier())
    failed, again = retry_events(request, outcome, 2, ts=100.0)
    assert (failed.kind, failed.ok, failed.call_id, failed.seq, failed.tool) == (
        "tool_result",
        False,
        "c9",
        4,
        "search",
    )
    assert failed.error == "ErrorMessage: Error: no index (attempt 2; retrying)"
    assert failed.observation == "Error: no index"
    assert (again.kind, again.args, again.call_id, again.seq, again.ts) == ("tool_call", {"q": "x"}, "c9", 4, 100.0)


def test_failure_is_a_tool_failure_with_its_type() -> None:
    result = failure("c1", "BadRequest", "ToolRequest: not valid msgpack", attempts=0)
    assert (result.ok, result.stop_reason, result.error_type, result.attempts) == (
        False, StopReason.TOOL_FAILURE, "BadRequest", 0
    )  # fmt: skip
