"""Scripted agents that reproduce each failure mode, and the tools they call (DESIGN §1).

Used by ``runvisor demo``, the end-to-end tests and the bench. Each scenario is an ordinary
agent written against the public SDK (``Run``), the way a user would write one; only its
decisions are scripted. ``demo_tools`` is a registry a ``ToolExecutor`` serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runvisor.actors.agent import Run
from runvisor.actors.retry import BackoffPolicy, ToolPolicy
from runvisor.actors.tools import ToolRegistry
from runvisor.protocols.policy import Policy

demo_tools = ToolRegistry()

_SOURCE = {
    f"src/parser_{i}.py": [f"def parse_{i}_{j}(text): return text.split({j})" for j in range(60)] for i in range(4)
}
_flaky_calls: dict[str, int] = {}


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def search(term: str) -> str:
    """grep the demo repository for ``term``."""
    hits = [
        f"{path}:{n + 1}: {line}" for path, lines in _SOURCE.items() for n, line in enumerate(lines) if term in line
    ]
    return "\n".join(hits[:20]) if hits else f'No matches found for "{term}" in /repo/src'


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def read_file(path: str, start: int = 1, end: int = 20) -> str:
    """Page through a file of the demo repository."""
    if path not in _SOURCE:
        return f"Error: {path}: No such file or directory"
    return "\n".join(f"{n}: {line}" for n, line in enumerate(_SOURCE[path][start - 1 : end], start=start))


@demo_tools.tool(policy=ToolPolicy(timeout_s=5, max_attempts=4, backoff=BackoffPolicy(base_s=0.05, cap_s=0.5)))
async def flaky_api(order: str) -> str:
    """Fails twice per order with a connection error, then answers (retried with backoff)."""
    _flaky_calls[order] = _flaky_calls.get(order, 0) + 1
    if _flaky_calls[order] <= 2:
        raise ConnectionError("connection reset by peer")
    return f"order {order}: shipped"


@demo_tools.tool(policy=ToolPolicy(timeout_s=5))
async def quota_api(query: str) -> dict[str, object]:
    """Answers 'successfully' with an error inside: a hidden failure."""
    return {"ok": False, "error": f"quota exceeded for {query!r}", "data": None}


@demo_tools.tool(policy=ToolPolicy(timeout_s=60, max_attempts=1))
async def slow_job(seconds: float) -> str:
    """A long external action (an operator may kill the run meanwhile)."""
    await asyncio.sleep(seconds)
    return f"job finished after {seconds}s"


#: Think time between steps, like an LLM call; gives supervisors time to act before the next step.
THINK_S = 0.05


async def healthy(run: Run) -> None:
    """Reads through files, finds what it looks for, makes progress, finishes."""
    for i, path in enumerate(_SOURCE):
        await run.llm(tokens_in=1200 + 300 * i, tokens_out=80, cost_usd=0.002)
        await run.call_tool("read_file", {"path": path, "start": 1, "end": 20})
        await run.call_tool("search", {"term": f"parse_{i}_7"})
        await run.progress((i + 1) / len(_SOURCE))
        await asyncio.sleep(THINK_S)


async def looping(run: Run) -> None:
    """Searches again and again for a function that does not exist: LOOP_DETECTED."""
    for _ in range(30):
        await run.llm(tokens_in=2000, tokens_out=40, cost_usd=0.003)
        await run.call_tool("search", {"term": "JsonParser"})
        await asyncio.sleep(THINK_S)


async def spender(run: Run) -> None:
    """Burns tokens past its cost budget: BUDGET_EXCEEDED."""
    for i in range(60):
        await run.llm(tokens_in=20_000 + 1000 * i, tokens_out=500, cost_usd=0.01)
        await run.message(f"drafting section {i}")
        await asyncio.sleep(THINK_S)


async def flaky(run: Run) -> None:
    """Calls a tool that fails twice then works: retried with backoff, the run succeeds."""
    for order in ("A-1", "A-2"):
        await run.llm(tokens_in=900, tokens_out=30, cost_usd=0.001)
        await run.call_tool("flaky_api", {"order": f"{run.run_id}-{order}"})
        await asyncio.sleep(THINK_S)


async def hidden_failure(run: Run) -> None:
    """Keeps calling an API whose 'successful' answers carry an error: TOOL_FAILURE."""
    for i in range(30):
        await run.llm(tokens_in=900, tokens_out=30, cost_usd=0.001)
        await run.call_tool("quota_api", {"query": f"customers page {i}"})
        await asyncio.sleep(THINK_S)


async def long_job(run: Run) -> None:
    """Starts a long external action; the demo's operator pauses, resumes or kills it."""
    await run.llm(tokens_in=900, tokens_out=30, cost_usd=0.001)
    for i in range(40):
        await run.message(f"working on step {i}")
        await asyncio.sleep(THINK_S)
    await run.call_tool("slow_job", {"seconds": 30}, timeout=60)


@dataclass(frozen=True)
class Scenario:
    """A scripted agent, its policy, and how its run should end (as the agent sees it)."""

    name: str
    agent: Callable[[Run], Awaitable[None]]
    policy: Policy
    expect: str
    story: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("healthy", healthy, Policy(), "COMPLETED", "reads, finds, progresses: left alone"),
    Scenario("looping", looping, Policy(), "STOPPED: LOOP_DETECTED", "searches for what is not there"),
    Scenario(
        "spender", spender, Policy(max_cost_usd=0.15), "STOPPED: BUDGET_EXCEEDED", "spends past max_cost_usd=0.15"
    ),
    Scenario("flaky", flaky, Policy(), "COMPLETED", "a flaky tool, retried with backoff by the executor"),
    Scenario("hidden_failure", hidden_failure, Policy(), "STOPPED: TOOL_FAILURE", "'successful' errors"),
    Scenario("paused", long_job, Policy(), "KILLED", "paused and resumed by an operator, killed mid tool call"),
)
