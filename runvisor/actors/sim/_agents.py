"""Scripted agents, one per failure mode, written against the public SDK as a user would write them.

Only their decisions are scripted: each calls ``run.llm`` for its model calls and
``run.call_tool`` for the tools of ``_tools`` (through a real tool executor), and knows nothing
of the supervisor that watches it.
"""

from __future__ import annotations

import asyncio
import uuid

from runvisor import Run
from runvisor.actors.sim._tools import SOURCE

#: Think time between steps, like an LLM call; gives supervisors time to act before the next step.
THINK_S = 0.05
#: How long the stalled agent hangs (a socket with no timeout) before it tries its next step.
HANG_S = 6.0
#: How long the job that an operator kills would run.
SLOW_JOB_S = 30.0

_FILES = list(SOURCE)


async def _think(run: Run, tokens_in: int = 1500) -> None:
    await run.llm(tokens_in=tokens_in, tokens_out=60, cost_usd=0.002)
    await asyncio.sleep(THINK_S)


async def healthy(run: Run) -> None:
    """Reads through the files, finds what it looks for, makes progress, finishes."""
    for i, path in enumerate(_FILES):
        await _think(run, 1200 + 300 * i)
        await run.call_tool("read_file", {"path": path, "start": 1, "end": 20})
        await run.call_tool("search", {"term": f"parse_{i}_7"})
        await run.progress((i + 1) / len(_FILES))


async def exact_loop(run: Run) -> None:
    """Searches again and again for a function that does not exist, getting the same answer each time."""
    for _ in range(30):
        await _think(run, 2000)
        await run.call_tool("search", {"term": "JsonParser"})


async def cycle(run: Run) -> None:
    """Goes round the same three steps: read one file, search, read another, and again."""
    for _ in range(20):
        await _think(run)
        await run.call_tool("read_file", {"path": _FILES[1], "start": 1, "end": 10})
        await run.call_tool("search", {"term": "parse_1_7"})
        await run.call_tool("read_file", {"path": _FILES[2], "start": 1, "end": 10})


async def near_duplicate(run: Run) -> None:
    """Re-applies the same patch under a fresh id each time while the file grows: no two steps are equal."""
    for _ in range(20):
        await _think(run)
        await run.call_tool("apply_patch", {"path": _FILES[3], "patch_id": str(uuid.uuid4())})


async def drift(run: Run) -> None:
    """Wanders from page to page, each one new, while its own progress estimate never rises."""
    await run.progress(0.4, "found the parser module")
    for page in range(40):
        await _think(run)
        path = _FILES[page % len(_FILES)]
        start = 1 + 5 * (page // len(_FILES))
        await run.call_tool("read_file", {"path": path, "start": start, "end": start + 4})
        await run.progress(max(0.1, 0.4 - 0.02 * page), f"still looking at {path}")


async def stall(run: Run) -> None:
    """Does a little work, then hangs silently (a call with no timeout) before trying its next step."""
    await _think(run)
    await run.call_tool("read_file", {"path": _FILES[0]})
    await asyncio.sleep(HANG_S)  # silent: no step, no heartbeat
    await _think(run)


async def retry_storm(run: Run) -> None:
    """Looks up stock item after item from a flaky upstream that the executor retries again and again."""
    for i in range(20):
        await _think(run, 900)
        await run.call_tool("inventory_api", {"sku": f"SKU-{1000 + i}"})


#: What the hidden-failure agent asks its API: each question new, so only the failures repeat.
_QUERIES = (
    "active customers in Berlin", "open invoices over 90 days", "refunds issued last quarter",
    "churned accounts by plan", "top sellers this week", "orders awaiting shipment",
    "support tickets tagged billing", "trial users who never logged in",
)  # fmt: skip


async def hidden_failure(run: Run) -> None:
    """Keeps calling an API whose 'successful' answers carry an error."""
    for query in _QUERIES:
        await _think(run, 900)
        await run.call_tool("quota_api", {"query": query})


async def budget(run: Run) -> None:
    """Drafts section after section with ever longer prompts, spending past its cost budget."""
    for i in range(60):
        await run.llm(tokens_in=20_000 + 1000 * i, tokens_out=500, cost_usd=0.01)
        await run.message(f"drafting section {i}")
        await asyncio.sleep(THINK_S)


async def paused(run: Run) -> None:
    """Healthy work for long enough that an operator pauses it, looks, and resumes it; it finishes."""
    for page in range(24):
        await _think(run)
        path = _FILES[page % len(_FILES)]
        start = 1 + 10 * (page // len(_FILES))
        await run.call_tool("read_file", {"path": path, "start": start, "end": start + 9})
        await run.progress((page + 1) / 24)


async def killed(run: Run) -> None:
    """Starts a long external job; an operator kills the run while the call is pending."""
    await _think(run)
    await run.call_tool("search", {"term": "parse_0_1"})
    await run.call_tool("slow_job", {"seconds": SLOW_JOB_S}, timeout=SLOW_JOB_S + 30)


async def crash(run: Run) -> None:
    """Misreads a tool's output and raises in its own code: ``int('60 src/parser_0.py')``."""
    await _think(run)
    result = await run.call_tool("wc", {"path": _FILES[0]})
    lines = int(result.observation or "")  # the bug: wc prints the count *and* the path
    await run.call_tool("read_file", {"path": _FILES[0], "start": lines - 10, "end": lines})


__all__ = [
    "HANG_S",
    "SLOW_JOB_S",
    "THINK_S",
    "budget",
    "crash",
    "cycle",
    "drift",
    "exact_loop",
    "healthy",
    "hidden_failure",
    "killed",
    "near_duplicate",
    "paused",
    "retry_storm",
    "stall",
]
