"""The OpenAI Agents SDK adapter (``runvisor.adapters.openai_agents``) against a real nats-server:
SDK agents on the SDK's offline ``ScriptedModel``, attached with ``hooks=runvisor_hooks(run)``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pytest
from agents import Agent, Model, ModelProvider, RunConfig, Runner, RunResult, Usage, function_tool, set_tracing_disabled
from agents.exceptions import UserError
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.testing.model import ModelScriptItem
from nats.aio.client import Client
from test_agent import all_stored_steps as stored_steps
from test_agent import checkpoint, has_status
from test_operator import supervised as supervisor

from runvisor import Policy, Run, RunKilled, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.operator import send_command
from runvisor.actors.server import EmbeddedServer
from runvisor.adapters.openai_agents import runvisor_hooks, supervised
from runvisor.protocols.messages import Checkpoint, Command, StepEvent
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
#: What the SDK does after a tool call: ask the model again (the default), or end on the tool's output.
Behavior = Literal["run_llm_again", "stop_on_first_tool"]
USAGE = Usage(requests=1, input_tokens=1000, output_tokens=100, total_tokens=1100)

set_tracing_disabled(True)  # the SDK would export traces to OpenAI


class Offline(ModelProvider):
    """Resolves every model name (``Agent(model="gpt-4o")``) to one offline model."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def get_model(self, model_name: str | None) -> Model:
        return self.model


def scripted(*turns: ModelScriptItem) -> ScriptedModel:
    """The SDK's offline model answering ``turns`` in order, each with ``USAGE``."""
    return ScriptedModel(turns, default_usage=USAGE)


def offline(model: Model) -> RunConfig:
    return RunConfig(model_provider=Offline(model))


def calls(events: Iterable[StepEvent]) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.tool, e.call_id) for e in events if e.kind in ("tool_call", "tool_result")]


def test_importing_the_adapter_without_the_sdk_names_the_extra() -> None:
    code = "import sys; sys.modules['agents'] = None; import runvisor.adapters.openai_agents"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "pip install 'runvisor[openai-agents]'" in done.stderr


async def test_model_responses_and_tool_calls_arrive_with_usage_cost_and_the_sdks_call_ids(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    price = float(
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=100), "gpt-4o").total_price
    )

    @supervised
    @function_tool
    async def search(term: str) -> str:
        """Search the code."""
        return f"json.py:12: class {term}"

    @function_tool  # left as it is: the hooks hold its calls open
    def read(path: str) -> str:
        """Read a file."""
        raise FileNotFoundError(path)

    model = scripted(
        [function_call("search", {"term": "JsonParser"}, call_id="call_search")],
        [function_call("read", {"path": "json.py"}, call_id="call_read")],
        [assistant_message("JsonParser is in json.py")],
    )
    agent = Agent(name="coder", model="gpt-4o", tools=[search, read])
    async with Run.start(goal="find the parser", run_id=run_id, nc=agent_nc) as run:
        result = await Runner.run(agent, "Where is JsonParser?", hooks=runvisor_hooks(run), run_config=offline(model))
        assert run.open_intents == ()

    assert result.final_output == "JsonParser is in json.py"
    events = await stored_steps(admin, run_id)
    llm = [e for e in events if e.kind == "llm"]
    assert [(e.tokens_in, e.tokens_out) for e in llm] == [(1000, 100)] * 3
    assert price > 0
    assert [e.cost_usd for e in llm] == pytest.approx([price] * 3), "the cost of the agent's model, gpt-4o"
    assert [e.observation for e in events if e.kind == "llm"][-1] == "JsonParser is in json.py"
    assert calls(events) == [
        ("tool_call", "search", "call_search"),
        ("tool_result", "search", "call_search"),
        ("tool_call", "read", "call_read"),
        ("tool_result", "read", "call_read"),
    ]
    by_kind = {(e.kind, e.tool): e for e in events}
    assert by_kind["tool_call", "search"].args == {"term": "JsonParser"}
    assert by_kind["tool_result", "search"].observation == "json.py:12: class JsonParser"
    assert by_kind["tool_call", "read"].args == {"path": "json.py"}
    failed = by_kind["tool_result", "read"]
    assert failed.ok is False, "the SDK's answer for a tool that raised is a failure"
    assert failed.error is not None
    assert failed.error.startswith("ToolRaised: An error occurred while running the tool")
    assert (events[-1].kind, events[-1].ok) == ("final", True)


async def test_a_handoff_is_a_message_of_the_same_run(agent_nc: Client, admin: Client, run_id: str) -> None:
    billing = Agent(name="billing", model=scripted([assistant_message("refunded")]))
    handing_off = scripted([function_call("transfer_to_billing", {}, call_id="h1")])
    triage = Agent(name="triage", model=handing_off, handoffs=[billing])
    async with Run.start(goal="refund", run_id=run_id, nc=agent_nc) as run:
        result = await Runner.run(triage, "refund me", hooks=runvisor_hooks(run))

    assert result.final_output == "refunded"
    said = [e.observation for e in await stored_steps(admin, run_id) if e.kind == "message"]
    assert said == ["handoff: triage -> billing"]


async def test_a_looping_agent_is_stopped_with_loop_detected_raised_out_of_runner_run(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    @supervised
    @function_tool
    async def search(term: str) -> str:
        """Search the code."""
        return f"No matches found for {term!r}"

    turns = [[function_call("search", {"term": "JsonParser"}, call_id=f"call_{i}")] for i in range(200)]
    agent = Agent(name="coder", model=scripted(*turns), tools=[search])
    async with supervisor(server):
        with pytest.raises(RunStopped) as stopped:
            async with Run.start(goal="find it", policy=Policy(max_steps=500), run_id=run_id, nc=agent_nc) as run:
                await Runner.run(agent, "Find JsonParser", hooks=runvisor_hooks(run), max_turns=200)

    assert stopped.value.reason is StopReason.LOOP_DETECTED
    assert stopped.value.evidence is not None
    assert "search" in stopped.value.evidence.summary
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED), "not an agent crash"


async def test_a_pause_holds_the_next_model_request_and_resume_goes_on_with_the_same_conversation(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    pages: list[int] = []
    reading, release = asyncio.Event(), asyncio.Event()

    @supervised
    @function_tool
    async def read(page: int) -> str:
        """Read a page."""
        pages.append(page)
        if page == 1:
            reading.set()
            await release.wait()
        return f"page {page}"

    model = scripted(
        [function_call("read", {"page": 1}, call_id="c1")],
        [function_call("read", {"page": 2}, call_id="c2")],
        [assistant_message("read both")],
    )
    agent = Agent(name="reader", model=model, tools=[read])
    runs: list[Run] = []

    async def main() -> RunResult:
        async with Run.start(goal="read", run_id=run_id, nc=agent_nc) as run:
            runs.append(run)
            run.state["notes"] = ["kept"]
            return await Runner.run(agent, "read pages 1 and 2", hooks=runvisor_hooks(run))

    task = asyncio.create_task(main())
    await asyncio.wait_for(reading.wait(), WAIT_S)
    # Given a pause arriving while the first tool call runs
    await send_command(operator, run_id, Command(cmd="pause"))
    await eventually(lambda: runs[0].paused, what="the pause received")
    release.set()
    # Then the run holds before asking the model again
    await eventually(lambda: has_status(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    assert len(model.calls) == 1
    assert pages == [1]
    paused = await checkpoint(admin, run_id)
    assert paused is not None
    assert paused.state == {"notes": ["kept"]}

    await send_command(operator, run_id, Command(cmd="resume"))
    result = await asyncio.wait_for(task, WAIT_S)
    assert result.final_output == "read both"
    assert pages == [1, 2]
    second = list(model.calls)[1].input
    assert isinstance(second, list)
    assert {"type": "function_call_output", "call_id": "c1", "output": "page 1"}.items() <= dict(second[-1]).items()
    order = [(e.kind, e.call_id or e.observation) for e in await stored_steps(admin, run_id)]
    held = order.index(("heartbeat", "resumed"))
    assert order.index(("tool_result", "c1")) < held < order.index(("tool_call", "c2"))
    assert [kind for kind, _ in order[:held]].count("llm") == 1, "the second model request waited for the resume"


@pytest.mark.parametrize("behavior", ["run_llm_again", "stop_on_first_tool"])
async def test_a_kill_cancels_a_supervised_tool_midway_and_runner_run_raises_run_killed(
    agent_nc: Client,
    admin: Client,
    operator: Client,
    run_id: str,
    behavior: Literal["run_llm_again", "stop_on_first_tool"],
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @supervised
    @function_tool
    async def crawl(site: str) -> str:
        """Crawl a site."""
        started.set()
        try:
            await asyncio.Event().wait()  # a tool that would run for ever
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    model = scripted([function_call("crawl", {"site": "example.org"}, call_id="call_crawl")])
    agent = Agent(name="crawler", model=model, tools=[crawl], tool_use_behavior=behavior)

    async def main() -> None:
        async with Run.start(goal="crawl", run_id=run_id, nc=agent_nc) as run:
            await Runner.run(agent, "crawl it", hooks=runvisor_hooks(run))

    task = asyncio.create_task(main())
    await asyncio.wait_for(started.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="kill", note="runaway crawl"))
    with pytest.raises(RunKilled, match="runaway crawl"):
        await asyncio.wait_for(task, WAIT_S)
    assert cancelled.is_set()
    assert len(model.calls) == 1

    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED), "not an agent crash"
    assert [i.call_id for i in cp.open_intents] == ["call_crawl"], "what was in flight when it was killed"
    events = await stored_steps(admin, run_id)
    [result] = [e for e in events if e.kind == "tool_result"]
    assert result.call_id == "call_crawl"
    assert result.ok is False
    assert (result.error or "").startswith("Cancelled")
    assert (events[-1].kind, events[-1].ok) == ("final", False)


async def test_a_kill_records_a_tool_the_hooks_hold_as_cancelled_at_once_and_ends_the_run_when_it_returns(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @function_tool  # not supervised: the SDK runs it, the hooks hold its call open
    async def crawl(site: str) -> str:
        """Crawl a site."""
        started.set()
        await release.wait()
        return "crawled"

    agent = Agent(name="crawler", model=scripted([function_call("crawl", {"site": "a"}, call_id="c1")]), tools=[crawl])

    async def main() -> None:
        async with Run.start(goal="crawl", run_id=run_id, nc=agent_nc) as run:
            await Runner.run(agent, "crawl it", hooks=runvisor_hooks(run))

    task = asyncio.create_task(main())
    await asyncio.wait_for(started.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="kill", note="stop crawling"))

    async def cancelled_recorded() -> bool:
        results = [e for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
        return [(e.call_id, (e.error or "")[:9]) for e in results] == [("c1", "Cancelled")]

    await eventually(cancelled_recorded, what="the call recorded as cancelled while the tool still runs")
    assert not task.done()
    release.set()
    with pytest.raises(RunKilled, match="stop crawling"):
        await asyncio.wait_for(task, WAIT_S)
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)


async def test_two_parallel_tool_calls_are_both_checkpointed_under_the_sdks_ids(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    seen: dict[str, Checkpoint | None] = {}
    both_in = asyncio.Event()

    @supervised
    @function_tool
    async def fetch(url: str) -> str:
        """Fetch a page."""
        seen[url] = await checkpoint(admin, run_id)  # what was stored when this call began
        if len(seen) == 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), WAIT_S)
        return f"page {url}"

    model = scripted(
        [
            function_call("fetch", {"url": "a"}, call_id="fetch-a"),
            function_call("fetch", {"url": "b"}, call_id="fetch-b"),
        ],
        [assistant_message("fetched both")],
    )
    agent = Agent(name="fetcher", model=model, tools=[fetch])
    async with Run.start(goal="fetch", run_id=run_id, nc=agent_nc) as run:
        result = await Runner.run(agent, "fetch a and b", hooks=runvisor_hooks(run))

    assert result.final_output == "fetched both"
    both = [cp for cp in seen.values() if cp is not None and len(cp.open_intents) == 2]
    assert both, "no checkpoint held both calls"
    assert {i.call_id for i in both[0].open_intents} == {"fetch-a", "fetch-b"}
    results = {e.call_id: e.ok for e in await stored_steps(admin, run_id) if e.kind == "tool_result"}
    assert results == {"fetch-a": True, "fetch-b": True}


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agents import Agent, Runner, function_tool, set_tracing_disabled
    from agents.testing import ScriptedModel, function_call
    from runvisor import Run
    from runvisor.adapters.openai_agents import runvisor_hooks, supervised

    effects = Path(sys.argv[2])

    @supervised
    @function_tool
    async def charge(amount: int) -> str:
        '''Charge the card.'''
        with effects.open("a") as out:
            out.write(f"charged {amount}\\n")
        await asyncio.Event().wait()  # the card is charged; the answer never comes
        return "unreachable"

    async def main() -> None:
        set_tracing_disabled(True)
        model = ScriptedModel([[function_call("charge", {"amount": 42}, call_id="call_charge")]])
        agent = Agent(name="shop", model=model, tools=[charge])
        async with Run.start(goal="buy the book", run_id=sys.argv[1], agent="doomed") as run:
            run.state["cart"] = ["book"]
            await Runner.run(agent, "buy it", hooks=runvisor_hooks(run))

    asyncio.run(main())
    """
)


async def test_an_agent_killed_mid_tool_call_is_resumed_with_the_call_in_flight_under_the_sdks_id(
    server: EmbeddedServer, admin: Client, run_id: str, tmp_path: Path
) -> None:
    # Given an agent process charging a card in an SDK tool call
    effects = tmp_path / "effects.txt"

    def lines() -> list[str]:
        return effects.read_text().splitlines() if effects.exists() else []

    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, run_id, str(effects), env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: lines() or proc.returncode is not None, timeout=30, what="the charge")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
    finally:
        # When the process dies without a word
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # Then a new process resuming the run sees the call in flight, by the SDK's id, with its arguments
    agent_nc = await connect(server.endpoint("agent"), "t-resumer")
    try:
        async with Run.resume(run_id, nc=agent_nc) as run:
            assert run.state == {"cart": ["book"]}
            [intent] = run.open_intents
            assert (intent.tool, intent.call_id, intent.in_process) == ("charge", "call_charge", True)
            assert run.open_args("call_charge") == {"amount": 42}
            await run.abandon_open_intent("call_charge", "the bank shows one charge")
    finally:
        await agent_nc.close()
    assert lines() == ["charged 42"]
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.open_intents) == (RunStatus.COMPLETED, ())


async def test_with_nothing_to_say_the_adapter_changes_nothing_the_agent_sees(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    @function_tool
    async def search(term: str) -> str:
        """Search the code."""
        return f"No matches found for {term!r}"

    @function_tool
    async def disk() -> dict[str, Any]:
        """Disk usage."""
        return {"ok": False, "error": "disk full"}  # a hidden failure: runvisor records it, the agent gets it

    def model() -> ScriptedModel:
        return scripted(
            [
                function_call("search", {"term": "JsonParser"}, call_id="s1"),
                function_call("disk", {}, call_id="d1"),
            ],
            [function_call("search", {"term": "parse_json"}, call_id="s2")],
            [assistant_message("not found; the disk is full")],
        )

    plain_model, adapted_model = model(), model()
    plain = await Runner.run(Agent(name="a", model=plain_model, tools=[search, disk]), "find it")
    async with Run.start(goal="find it", run_id=run_id, nc=agent_nc) as run:
        agent = Agent(name="a", model=adapted_model, tools=[supervised(search), disk])
        adapted = await Runner.run(agent, "find it", hooks=runvisor_hooks(run))

    assert adapted.final_output == plain.final_output
    assert adapted.to_input_list() == plain.to_input_list()
    assert [c.input for c in adapted_model.calls] == [c.input for c in plain_model.calls]
    results = {e.call_id: e.ok for e in await stored_steps(admin, run_id) if e.kind == "tool_result"}
    assert results == {"s1": True, "d1": False, "s2": True}


async def test_a_held_call_whose_end_the_sdk_never_reports_is_closed_when_the_run_ends(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    @function_tool(failure_error_function=None)  # the SDK raises the tool's error out of Runner.run
    async def deploy(target: str) -> str:
        """Deploy."""
        raise ConnectionError(f"{target} unreachable")

    model = scripted([function_call("deploy", {"target": "prod"}, call_id="d1")])
    agent = Agent(name="ops", model=model, tools=[deploy])
    with pytest.raises(UserError, match="prod unreachable"):
        async with Run.start(goal="deploy", run_id=run_id, nc=agent_nc) as run:
            await Runner.run(agent, "deploy it", hooks=runvisor_hooks(run))

    def held() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_name().startswith("runvisor-tool-")]

    await eventually(lambda: not held(), what="no held call left behind")
    [result] = [e for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert (result.call_id, result.ok) == ("d1", False)
    assert (result.error or "").startswith("ToolEndNotReported")
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.AGENT_CRASHED), "the tool's error is a crash"
