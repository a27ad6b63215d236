"""Tool executors against a real nats-server, as the ``tool`` role; the test plays the agent side."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.errors import NoRespondersError

from runvisor.actors.connection import connect
from runvisor.actors.retry import BackoffPolicy, BreakerPolicy, BreakerState, BreakerStatus, BudgetPolicy, ToolPolicy
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.tools import ToolExecutor, ToolRegistry, kv_key
from runvisor.actors.tools._kv import Abandoned, Claim, ResultStore
from runvisor.errors import TransientError
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent, ToolRequest, ToolResult
from runvisor.protocols.reasons import StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

#: Ceiling of the first retry's delay in these tests; the second is twice that.
BASE_S = 0.5


class Sleeps:
    """An injected ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Wall:
    """An injected wall clock the test moves forward."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unique(name: str) -> str:
    """A tool name of its own per test: breakers in the session's server outlive a test."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def agent(server: EmbeddedServer) -> AsyncIterator[Client]:
    nc = await connect(server.endpoint("agent"), "t-agent")
    yield nc
    await nc.close()


@asynccontextmanager
async def serving(
    server: EmbeddedServer, tools: ToolRegistry, agent: Client, **options: Any
) -> AsyncIterator[ToolExecutor]:
    """A started executor with the tool role's credentials, answering requests when this yields."""
    options.setdefault("sleep", Sleeps())
    options.setdefault("rng", lambda: 1.0)  # full jitter at its maximum: each delay is its ceiling
    executor = ToolExecutor(tools, server.endpoint("tool"), **options)
    async with executor:
        for tool in tools:
            await eventually(functools.partial(answers, agent, tool.name), what=f"{tool.name} answering")
        yield executor


async def answers(agent: Client, tool: str) -> bool:
    """Whether the tool answers: an empty request gets a BadRequest and runs nothing.

    The executor flushes its subscriptions before it starts, yet another connection's
    request right after can still meet "no responders" now and then (seen about once in
    200 starts on nats-server 2.15.1), so tests wait for an answer rather than assume one.
    """
    try:
        await agent.request(subjects.tool(tool), b"", timeout=5)
    except NoRespondersError:
        return False
    return True


async def call(
    agent: Client, tool: str, run_id: str, args: dict[str, Any] | None = None, *, key: str = "", call_id: str = "c1",
    seq: int = 1, timeout_s: float = 10.0,
) -> ToolResult:  # fmt: skip
    request = ToolRequest(
        run_id=run_id, call_id=call_id, tool=tool, args=args, idempotency_key=key, seq=seq, timeout_s=timeout_s
    )
    reply = await agent.request(subjects.tool(tool), codec.encode(request), timeout=10)
    return codec.decode(ToolResult, reply.data)


async def test_flaky_tool_succeeds_within_retries_and_reports_each_retry(
    server: EmbeddedServer, agent: Client, admin: Client, run_id: str
) -> None:
    name, calls = unique("flaky"), 0
    tools = ToolRegistry()

    @tools.tool(name=name, policy=ToolPolicy(max_attempts=4, backoff=BackoffPolicy(base_s=BASE_S, multiplier=2)))
    async def flaky(q: str) -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise TransientError(f"backend hiccup {calls}")
        return f"found {q}"

    steps = await admin.subscribe(subjects.step(run_id))
    await admin.flush()
    sleeps = Sleeps()
    async with serving(server, tools, agent, sleep=sleeps):
        result = await call(agent, name, run_id, {"q": "json"}, call_id="c-7", seq=7)

    assert result.ok, result
    assert (result.observation, result.attempts, calls) == ("found json", 3, 3)
    assert sleeps.delays == [BASE_S, 2 * BASE_S]  # growing ceilings, reached because rng gives the max
    events = [codec.decode(StepEvent, (await steps.next_msg(timeout=5)).data) for _ in range(4)]
    assert [e.kind for e in events] == ["tool_result", "tool_call", "tool_result", "tool_call"]
    assert {(e.call_id, e.seq, e.tool) for e in events} == {("c-7", 7, name)}
    assert [e.ok for e in events[::2]] == [False, False]
    assert "backend hiccup 1" in (events[0].error or "")
    assert "backend hiccup 2" in (events[2].error or "")
    assert all(e.args == {"q": "json"} for e in events[1::2])


async def test_non_retryable_error_is_not_retried(server: EmbeddedServer, agent: Client, run_id: str) -> None:
    name, calls = unique("strict"), 0
    tools = ToolRegistry()

    @tools.tool(name=name)
    def strict(path: str) -> str:  # a sync tool: runs in a thread
        nonlocal calls
        calls += 1
        raise ValueError(f"{path} is not a valid path")

    sleeps = Sleeps()
    async with serving(server, tools, agent, sleep=sleeps):
        result = await call(agent, name, run_id, {"path": "::"})

    assert not result.ok
    assert (result.stop_reason, result.error_type, result.attempts, calls) == (
        StopReason.TOOL_FAILURE, "ValueError", 1, 1
    )  # fmt: skip
    assert ":: is not a valid path" in (result.error or "")
    assert sleeps.delays == []


async def test_wrong_arguments_fail_without_running_the_tool(
    server: EmbeddedServer, agent: Client, run_id: str
) -> None:
    name, calls = unique("typed"), 0
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def typed(q: str) -> str:
        nonlocal calls
        calls += 1
        return q

    async with serving(server, tools, agent):
        result = await call(agent, name, run_id, {"query": "x"})

    assert not result.ok
    assert (result.error_type, result.stop_reason, result.attempts, calls) == (
        "BadArguments", StopReason.TOOL_FAILURE, 0, 0
    )  # fmt: skip
    assert "missing a required argument: 'q'" in (result.error or "")


async def test_attempt_timeout_is_a_retryable_failure(server: EmbeddedServer, agent: Client, run_id: str) -> None:
    name = unique("hang")
    tools = ToolRegistry()
    never = asyncio.Event()

    @tools.tool(name=name, policy=ToolPolicy(timeout_s=0.01, max_attempts=2))
    async def hang() -> str:
        await never.wait()
        return "unreachable"

    async with serving(server, tools, agent):
        result = await call(agent, name, run_id)

    assert (result.ok, result.error_type, result.attempts) == (False, "TimeoutError", 2)
    assert result.stop_reason is StopReason.RETRY_LIMIT_REACHED


async def test_open_breaker_fails_fast_on_every_replica_and_recovers_after_a_probe(
    server: EmbeddedServer, agent: Client, admin: Client, run_id: str
) -> None:
    # Given: replica A serves a tool that always fails; replica B serves the same tool, healthy.
    name, wall = unique("shaky"), Wall()
    policy = ToolPolicy(max_attempts=1, breaker=BreakerPolicy(window=4, min_calls=4, failure_rate=0.5, open_s=30))
    broken, healthy = ToolRegistry(), ToolRegistry()
    healthy_calls = 0

    @broken.tool(name=name, policy=policy)
    async def fail() -> str:
        raise RuntimeError("backend down")

    @healthy.tool(name=name, policy=policy)
    async def succeed() -> str:
        nonlocal healthy_calls
        healthy_calls += 1
        return "fine"

    # When: enough failures go through replica A to open the breaker.
    async with serving(server, broken, agent, wall=wall, name="replica-a"):
        for i in range(4):
            failed = await call(agent, name, run_id, call_id=f"a{i}")
            assert (failed.ok, failed.error_type) == (False, "RuntimeError")

    # Then: replica B, another connection, refuses at once without calling the tool.
    async with serving(server, healthy, agent, wall=wall, name="replica-b"):
        refused = await call(agent, name, run_id, call_id="b1")
        assert (refused.ok, refused.stop_reason, refused.error_type) == (False, StopReason.TOOL_FAILURE, "CircuitOpen")
        assert refused.retry_after_s == pytest.approx(30.0)
        assert "circuit breaker open" in (refused.error or "")
        assert (refused.attempts, healthy_calls) == (0, 0)

        # After the open period, one probe goes through; its success closes the breaker.
        wall.now += 30.0
        probe = await call(agent, name, run_id, call_id="b2")
        assert (probe.ok, probe.observation, healthy_calls) == (True, "fine", 1)

    kv = await admin.jetstream().key_value(subjects.BREAKERS_BUCKET)
    entry = await kv.get(kv_key(name))
    assert codec.decode(BreakerState, entry.value or b"").status is BreakerStatus.CLOSED


@pytest.mark.parametrize("exhausted", ["tool", "run"])
async def test_exhausted_retry_budget_ends_the_call(
    server: EmbeddedServer, agent: Client, run_id: str, exhausted: str
) -> None:
    name, calls = unique("budget"), 0
    empty = BudgetPolicy(percent_can_retry=0, min_retries_per_s=0)  # not a single retry to spend
    tools = ToolRegistry()

    @tools.tool(name=name, policy=ToolPolicy(max_attempts=5, budget=empty if exhausted == "tool" else BudgetPolicy()))
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise TransientError("try later")

    run_budget = empty if exhausted == "run" else None
    async with serving(server, tools, agent, run_budget=run_budget):
        result = await call(agent, name, run_id)

    assert (result.ok, result.stop_reason, result.attempts, calls) == (
        False, StopReason.RETRY_LIMIT_REACHED, 1, 1
    )  # fmt: skip
    assert f"retry budget '{exhausted}:" in (result.error or "")


@pytest.mark.parametrize(
    ("value", "error_type"),
    [({"ok": False, "error": "quota"}, "ToolError"), ("Error: file not found", "ErrorMessage")],
)
async def test_hidden_failure_in_a_returned_value_is_a_failure(
    server: EmbeddedServer, agent: Client, run_id: str, value: object, error_type: str
) -> None:
    name = unique("hidden")
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def hidden() -> object:
        return value

    async with serving(server, tools, agent):
        result = await call(agent, name, run_id)

    assert (result.ok, result.error_type, result.stop_reason) == (False, error_type, StopReason.TOOL_FAILURE)
    assert result.attempts == 1  # hidden failures are not retryable by default
    assert result.observation  # what the tool said stays visible to the agent


async def test_same_idempotency_key_runs_the_tool_once_and_replays(
    server: EmbeddedServer, agent: Client, run_id: str
) -> None:
    name, calls = unique("charge"), 0
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def charge(amount: int) -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {"charged": amount, "receipt": calls}

    key = f"{run_id}:charge:1 (with characters a KV key cannot hold)"
    async with serving(server, tools, agent):
        first = await call(agent, name, run_id, {"amount": 5}, key=key, call_id="c1")
        second = await call(agent, name, run_id, {"amount": 5}, key=key, call_id="c2")

    assert (first.ok, first.replayed, first.observation) == (True, False, '{"charged":5,"receipt":1}')
    assert (second.ok, second.replayed, second.observation, second.call_id) == (True, True, first.observation, "c2")
    assert calls == 1


async def test_concurrent_requests_with_one_key_run_the_tool_once(
    server: EmbeddedServer, agent: Client, run_id: str
) -> None:
    name, calls = unique("once"), 0
    started, release = asyncio.Event(), asyncio.Event()
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def once() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "done once"

    async with (
        serving(server, tools, agent, name="replica-a", sleep=asyncio.sleep),
        serving(server, tools, agent, name="replica-b", sleep=asyncio.sleep),
    ):
        first = asyncio.create_task(call(agent, name, run_id, key=f"{run_id}-k", call_id="c1"))
        await asyncio.wait_for(started.wait(), 5)
        second = asyncio.create_task(call(agent, name, run_id, key=f"{run_id}-k", call_id="c2"))
        # The second request waits on the first one's claim, on whichever replica serves it.
        release.set()
        results = await asyncio.gather(first, second)

    assert calls == 1
    assert [r.observation for r in results] == ["done once", "done once"]
    assert sorted(r.replayed for r in results) == [False, True]


async def test_claimed_key_answers_in_progress_when_waiting_is_off(
    server: EmbeddedServer, agent: Client, run_id: str
) -> None:
    name = unique("slow")
    started, release = asyncio.Event(), asyncio.Event()
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def slow() -> str:
        started.set()
        await release.wait()
        return "late"

    async with serving(server, tools, agent, claim_wait_s=0.0):
        first = asyncio.create_task(call(agent, name, run_id, key=f"{run_id}-k", call_id="c1"))
        await asyncio.wait_for(started.wait(), 5)
        busy = await call(agent, name, run_id, key=f"{run_id}-k", call_id="c2")
        release.set()
        done = await first

    assert (busy.ok, busy.error_type, busy.attempts) == (False, "InProgress", 0)
    assert (done.ok, done.observation) == (True, "late")


async def test_undecodable_request_gets_bad_request_and_the_executor_keeps_serving(
    server: EmbeddedServer, agent: Client, run_id: str
) -> None:
    name = unique("echo")
    tools = ToolRegistry()

    @tools.tool(name=name)
    async def echo(text: str) -> str:
        return text

    async with serving(server, tools, agent):
        reply = await agent.request(subjects.tool(name), b"\xc1 not msgpack", timeout=10)
        bad = codec.decode(ToolResult, reply.data)
        good = await call(agent, name, run_id, {"text": "still here"})

    assert (bad.ok, bad.error_type, bad.stop_reason) == (False, "BadRequest", StopReason.TOOL_FAILURE)
    assert "ToolRequest" in (bad.error or "")
    assert (good.ok, good.observation) == (True, "still here")


async def test_claim_abandoned_by_a_dead_executor_is_taken_over_after_its_lease(
    server: EmbeddedServer, run_id: str
) -> None:
    nc = await connect(server.endpoint("tool"), "t-tool")
    try:
        kv = await nc.jetstream().key_value(subjects.RESULTS_BUCKET)
        wall, sleeps = Wall(), Sleeps()
        dead = ResultStore(kv, owner="dead", wall=wall, clock=lambda: 0.0, sleep=sleeps)
        alive = ResultStore(kv, owner="alive", wall=wall, clock=lambda: 0.0, sleep=sleeps)
        # Given: an executor claimed the key, then died without recording a result.
        assert isinstance(await dead.begin(f"{run_id}-k", lease_s=10, wait_s=0), Claim)
        # While the lease holds, another executor does not run the call.
        assert await alive.begin(f"{run_id}-k", lease_s=10, wait_s=0) is None
        # Once it has expired, the key is taken over and a result recorded for good.
        wall.now += 10.0
        claim = await alive.begin(f"{run_id}-k", lease_s=10, wait_s=0)
        assert isinstance(claim, Claim)
        await alive.record(claim, ToolResult(call_id="c1", ok=True, observation="done"))
        replay = await dead.begin(f"{run_id}-k", lease_s=10, wait_s=0)
        assert isinstance(replay, ToolResult)
        assert replay.observation == "done"
    finally:
        await nc.close()


async def test_claim_abandoned_by_a_dead_executor_is_never_taken_for_a_tool_not_safe_to_repeat(
    server: EmbeddedServer, run_id: str
) -> None:
    nc = await connect(server.endpoint("tool"), "t-tool")
    try:
        kv = await nc.jetstream().key_value(subjects.RESULTS_BUCKET)
        wall, sleeps = Wall(), Sleeps()
        dead = ResultStore(kv, owner="dead", wall=wall, clock=lambda: 0.0, sleep=sleeps)
        alive = ResultStore(kv, owner="alive", wall=wall, clock=lambda: 0.0, sleep=sleeps)
        # Given: an executor claimed the key of a charge, then died without recording a result,
        assert isinstance(await dead.begin(f"{run_id}-k", lease_s=10, wait_s=0), Claim)
        wall.now += 10.0
        # when its claim has expired, a tool that must not run twice does not take it over:
        abandoned = await alive.begin(f"{run_id}-k", lease_s=10, wait_s=0, take_abandoned=False)
        assert isinstance(abandoned, Abandoned)
        assert abandoned.owner == "dead"
        # the word recorded instead is final, for every later request under that key.
        in_doubt = ToolResult(call_id="c2", ok=False, error="in doubt", error_type="InDoubt")
        await alive.settle(abandoned, in_doubt)
        again = await alive.begin(f"{run_id}-k", lease_s=10, wait_s=0, take_abandoned=True)
        assert isinstance(again, ToolResult)
        assert again.error_type == "InDoubt"
    finally:
        await nc.close()
