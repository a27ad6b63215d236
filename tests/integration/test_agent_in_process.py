"""In-process tool calls (``run.tool``, ``@supervised_tool``), parallel calls and costs from tokens,
against a real nats-server with the agent role's credentials."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from test_agent import all_stored_steps as stored_steps
from test_agent import checkpoint

from runvisor import Run, RunError, RunKilled, supervised_tool
from runvisor.actors.agent._limits import args_digest
from runvisor.actors.connection import connect
from runvisor.actors.operator import send_command
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.protocols.messages import Checkpoint, Command, StepEvent
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


def calls(events: list[StepEvent]) -> list[StepEvent]:
    return [e for e in events if e.kind in ("tool_call", "tool_result")]


async def test_an_in_process_call_is_checkpointed_first_and_reported_as_call_and_result(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async with Run.start(goal="grep", run_id=run_id, nc=agent_nc) as run:
        async with run.tool("grep", {"pattern": "JsonParser"}) as call:
            # Given the body runs, the intent is already stored as open
            stored = await checkpoint(admin, run_id)
            call.result = ["json.py:12"]
        assert (call.ok, call.error) == (True, None)
        assert run.open_intents == ()

    assert stored is not None
    [open_intent] = stored.open_intents
    assert (open_intent.tool, open_intent.call_id, open_intent.in_process) == ("grep", call.call_id, True)
    assert open_intent.idempotency_key == f"{run_id}:{call.call_id}"
    assert stored.state == {"__runvisor_open_calls__": {call.call_id: {"pattern": "JsonParser"}}}
    sent, done = calls(await stored_steps(admin, run_id))
    assert (sent.kind, sent.tool, sent.call_id, sent.args) == (
        "tool_call",
        "grep",
        call.call_id,
        {"pattern": "JsonParser"},
    )
    assert (done.kind, done.call_id, done.ok, done.observation) == ("tool_result", call.call_id, True, '["json.py:12"]')
    after = await checkpoint(admin, run_id)
    assert after is not None
    assert after.open_intents == ()
    assert after.intent is not None
    assert (after.intent.call_id, after.intent.state) == (call.call_id, "done")


async def test_decorated_sync_and_async_tools_record_their_arguments_by_name(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    @supervised_tool
    async def search(q: str, limit: int = 5) -> str:
        return f"{limit} hits for {q}"

    @supervised_tool(name="read-file")
    def read(path: str) -> str:  # sync: runs in a thread
        return f"contents of {path}"

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
        assert await search("parser") == "5 hits for parser"
        assert await read(path="a.py") == "contents of a.py"
    # Outside any run, the same functions just run.
    assert await search("x", limit=1) == "1 hits for x"

    recorded = [(e.kind, e.tool, e.args, e.observation) for e in calls(await stored_steps(admin, run_id))]
    assert recorded == [
        ("tool_call", "search", {"q": "parser", "limit": 5}, None),
        ("tool_result", "search", None, "5 hits for parser"),
        ("tool_call", "read-file", {"path": "a.py"}, None),
        ("tool_result", "read-file", None, "contents of a.py"),
    ]


async def test_two_parallel_in_process_calls_are_both_checkpointed_before_they_run(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    seen: dict[str, Checkpoint | None] = {}
    both_in = asyncio.Event()

    @supervised_tool
    async def fetch(url: str) -> str:
        seen[url] = await checkpoint(admin, run_id)  # what was stored when this call began
        if len(seen) == 2:
            both_in.set()
        await both_in.wait()
        return f"page {url}"

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        pages = await asyncio.gather(fetch("a"), fetch("b"))
        assert run.open_intents == ()

    assert list(pages) == ["page a", "page b"]
    for url, stored in seen.items():
        assert stored is not None
        assert args_digest({"url": url}) in {i.args_digest for i in stored.open_intents}, f"{url} ran unrecorded"
    last_in = await checkpoint(admin, run_id)
    assert last_in is not None
    results = {e.call_id: e.ok for e in calls(await stored_steps(admin, run_id)) if e.kind == "tool_result"}
    assert len(results) == 2
    assert all(results.values())
    # When the second call began, both were open at once.
    both = [stored for stored in seen.values() if stored is not None and len(stored.open_intents) == 2]
    assert both, "no checkpoint held both calls"
    assert {i.call_id for i in both[0].open_intents} == set(results)


async def test_two_parallel_executor_calls_are_both_checkpointed(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    tools = ToolRegistry()
    started: list[int] = []
    release = asyncio.Event()

    async def slow(n: int) -> str:
        started.append(n)
        await release.wait()
        return f"done {n}"

    name = f"slow-{run_id[-8:]}"
    tools.add(slow, name=name)
    stop = asyncio.Event()
    served = asyncio.create_task(ToolExecutor(tools, server.endpoint("tool")).run(stop))
    try:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            both = asyncio.gather(
                run.call_tool(name, {"n": 1}, timeout=WAIT_S), run.call_tool(name, {"n": 2}, timeout=WAIT_S)
            )
            await eventually(lambda: len(started) == 2, what="both calls running at once")
            stored = await checkpoint(admin, run_id)
            release.set()
            first, second = await both
    finally:
        release.set()
        stop.set()
        await served
    assert stored is not None
    assert len(stored.open_intents) == 2
    assert not any(i.in_process for i in stored.open_intents)
    assert (first.observation, second.observation) == ("done 1", "done 2")


async def test_kill_cancels_an_in_process_call_midway(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run, run.tool("crawl", {"n": 1}) as call:
            started.set()
            try:
                await asyncio.Event().wait()  # a tool that would run for ever
            except asyncio.CancelledError:
                cancelled.set()
                raise
            call.result = "unreachable"

    task = asyncio.create_task(agent())
    await asyncio.wait_for(started.wait(), WAIT_S)
    # When an operator kills the run, the call is cancelled where it is and the agent gets RunKilled
    await send_command(operator, run_id, Command(cmd="kill", note="runaway crawl"))
    with pytest.raises(RunKilled, match="runaway crawl"):
        await asyncio.wait_for(task, WAIT_S)
    assert cancelled.is_set()

    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    assert [i.tool for i in cp.open_intents] == ["crawl"], "what was in flight when it was killed"
    events = await stored_steps(admin, run_id)
    [result] = [e for e in events if e.kind == "tool_result"]
    assert result.ok is False
    assert result.error is not None
    assert result.error.startswith("Cancelled")
    assert events[-1].kind == "final"
    assert events[-1].ok is False


async def test_kill_abandons_a_sync_in_process_call_and_discards_its_result(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    loop = asyncio.get_running_loop()
    started, release, finished = asyncio.Event(), threading.Event(), threading.Event()

    @supervised_tool
    def convert(path: str) -> str:
        loop.call_soon_threadsafe(started.set)
        release.wait(WAIT_S)
        finished.set()
        return f"converted {path}"

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
            await convert("big.pdf")

    task = asyncio.create_task(agent())
    try:
        await asyncio.wait_for(started.wait(), WAIT_S)
        await send_command(operator, run_id, Command(cmd="kill"))
        # The run ends while the thread still runs: a thread cannot be stopped, only not waited for
        with pytest.raises(RunKilled):
            await asyncio.wait_for(task, WAIT_S)
        assert not finished.is_set()
    finally:
        release.set()
    await eventually(finished.is_set, what="the thread to end")
    results = [e for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert [(e.ok, (e.error or "")[:9]) for e in results] == [(False, "Cancelled")], "the late result is discarded"


async def test_pause_holds_before_an_in_process_call_starts(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    ran: list[bool] = []
    ready, go = asyncio.Event(), asyncio.Event()

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            await run.message("planning")
            ready.set()
            await go.wait()
            await eventually(lambda: run.paused, what="the pause received")
            async with run.tool("write", {"path": "a.txt"}) as call:  # holds here while paused
                ran.append(run.paused)
                call.result = "written"

    task = asyncio.create_task(agent())
    await asyncio.wait_for(ready.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="pause"))
    go.set()
    await eventually(lambda: _status_is(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    # Then the tool has not run, and no call was reported or opened
    assert ran == []
    assert not calls(await stored_steps(admin, run_id))
    paused = await checkpoint(admin, run_id)
    assert paused is not None
    assert paused.open_intents == ()

    await send_command(operator, run_id, Command(cmd="resume"))
    await asyncio.wait_for(task, WAIT_S)
    assert ran == [False]
    kinds = [(e.kind, e.observation) for e in await stored_steps(admin, run_id)]
    assert kinds.index(("heartbeat", "resumed")) < kinds.index(("tool_call", None))


async def test_parallel_calls_held_by_one_pause_hold_and_go_on_together(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    ran: list[int] = []
    ready, go = asyncio.Event(), asyncio.Event()

    @supervised_tool
    async def step(n: int) -> int:
        ran.append(n)
        return n

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            ready.set()
            await go.wait()
            await eventually(lambda: run.paused, what="the pause received")
            await asyncio.gather(step(1), step(2))  # both reach the boundary during one pause

    task = asyncio.create_task(agent())
    await asyncio.wait_for(ready.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="pause"))
    go.set()
    await eventually(lambda: _status_is(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    assert ran == []
    await send_command(operator, run_id, Command(cmd="resume"))
    await asyncio.wait_for(task, WAIT_S)
    assert sorted(ran) == [1, 2]
    said = [e.observation or "" for e in await stored_steps(admin, run_id) if e.kind == "heartbeat"]
    # One task held the run for both: one pause and one resume reported, not one per task
    assert sum(text.startswith("paused: ") for text in said) == 1
    assert said.count("resumed") == 1


async def _status_is(admin: Client, run_id: str, status: RunStatus) -> bool:
    cp = await checkpoint(admin, run_id)
    return cp is not None and cp.status == status


async def test_a_hidden_failure_in_an_in_process_result_is_recorded_as_failed(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    @supervised_tool
    async def send_mail(to: str) -> dict[str, object]:
        return {"ok": False, "error": "quota exceeded"}  # a "successful" return hiding a failure

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        assert await send_mail("ops@example.org") == {"ok": False, "error": "quota exceeded"}, "the agent's value"
        with pytest.raises(ValueError, match="no such file"):
            async with run.tool("read", {"path": "/nope"}) as call:
                raise ValueError("no such file")
        assert (call.ok, call.error) == (False, "ValueError: no such file")

    results = [(e.tool, e.ok, e.error) for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert results == [
        ("send_mail", False, "ToolError: quota exceeded"),
        ("read", False, "ValueError: no such file"),
    ]


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading
    from pathlib import Path
    from runvisor import Run, supervised_tool

    effects = Path(sys.argv[2])

    @supervised_tool
    async def charge(amount: int) -> str:
        with effects.open("a") as out:
            out.write(f"charged {amount}\\n")
        await asyncio.Event().wait()  # the card is charged; the answer never comes
        return "unreachable"

    @supervised_tool
    def search(q: str) -> str:  # sync, in a thread
        with effects.open("a") as out:
            out.write(f"searched {q}\\n")
        threading.Event().wait()
        return "unreachable"

    async def main() -> None:
        async with Run.start(goal="buy the book", run_id=sys.argv[1], agent="doomed") as run:
            run.state["cart"] = ["book"]
            await asyncio.gather(charge(42), search("book"))

    asyncio.run(main())
    """
)


async def test_an_agent_killed_mid_in_process_calls_is_resumed_with_them_in_flight_and_none_rerun(
    server: EmbeddedServer, admin: Client, run_id: str, tmp_path: Path
) -> None:
    # Given an agent process with two in-process calls under way: a charge (not idempotent) and a search
    effects = tmp_path / "effects.txt"

    def lines() -> list[str]:
        return effects.read_text().splitlines() if effects.exists() else []

    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, run_id, str(effects), env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: len(lines()) == 2 or proc.returncode is not None, timeout=20, what="both calls")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
    finally:
        # When the process dies without a word
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # Then a new process resuming the run sees both calls in flight, with their arguments
    agent_nc = await connect(server.endpoint("agent"), "t-resumer")
    try:
        async with Run.resume(run_id, nc=agent_nc) as run:
            assert run.state == {"cart": ["book"]}
            by_tool = {intent.tool: intent for intent in run.open_intents}
            assert set(by_tool) == {"charge", "search"}
            assert all(intent.in_process for intent in by_tool.values())
            charge, search = by_tool["charge"], by_tool["search"]
            assert run.open_args(charge.call_id) == {"amount": 42}
            # and runvisor runs neither again by itself: no executor holds an in-process result,
            with pytest.raises(RunError, match="own process"):
                await run.retry_open_intent(call_id=charge.call_id)
            # and a call with the charge's id is refused, the charge not being idempotent.
            with pytest.raises(RunError, match="not run again"):
                run.tool("charge", {"amount": 42}, call_id=charge.call_id)
            # The idempotent search runs again under its idempotency key,
            async with run.tool("search", {"q": "book"}, call_id=search.call_id, idempotent=True) as again:
                assert (again.idempotency_key, again.intent.attempt) == (search.idempotency_key, 2)
                again.result = "1 book"
            # and the agent, having checked with the bank, closes the charge.
            await run.abandon_open_intent(charge.call_id, "the bank shows one charge")
            assert run.open_intents == ()
    finally:
        await agent_nc.close()
    assert sorted(lines()) == ["charged 42", "searched book"], "each tool's body ran once, in the dead process"
    results = {e.call_id: (e.ok, e.error) for e in await stored_steps(admin, run_id) if e.kind == "tool_result"}
    assert results == {
        search.call_id: (True, None),
        charge.call_id: (False, "Abandoned: the bank shows one charge"),
    }
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.open_intents) == (RunStatus.COMPLETED, ())


async def test_cost_is_filled_from_the_price_table_and_unknown_models_stay_unknown(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    table = float(
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=100), "gpt-4o").total_price
    )

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc, prices={"my-finetune": (1.0, 3.0)}) as run:
        await run.llm(model="gpt-4o", tokens_in=1000, tokens_out=100)
        await run.llm(model="no-such-model-anywhere", tokens_in=1000, tokens_out=100)
        await run.llm(model="my-finetune", tokens_in=1000, tokens_out=100)  # the run's own price
        await run.llm(model="gpt-4o", tokens_in=1000, tokens_out=100, cost_usd=0.5)  # the caller's figure wins

    costs = [e.cost_usd for e in await stored_steps(admin, run_id) if e.kind == "llm"]
    assert table > 0
    assert costs == [table, None, pytest.approx(0.0013), 0.5]


async def test_current_run_is_the_one_whose_block_the_code_runs_in(agent_nc: Client, run_id: str) -> None:
    assert Run.current() is None
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        assert Run.current() is run

        async def in_a_task() -> Run | None:
            return Run.current()

        assert await asyncio.create_task(in_a_task()) is run
        run_over = asyncio.Event()
        late = asyncio.create_task(_after(run_over, in_a_task))  # started in the block, asks after it
    assert Run.current() is None
    run_over.set()
    assert await late is None, "a task that outlived its run has no current run"


async def _after(event: asyncio.Event, then: Callable[[], Awaitable[Run | None]]) -> Run | None:
    await event.wait()
    return await then()
