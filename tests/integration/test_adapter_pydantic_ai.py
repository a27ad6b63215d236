"""The PydanticAI adapter (``runvisor.adapters.pydantic_ai``) against a real nats-server: PydanticAI
agents on offline ``FunctionModel``s, supervised by one capability."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.exceptions import CallDeferred
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import RequestUsage
from test_agent import all_stored_steps as stored_steps
from test_agent import checkpoint, has_status
from test_operator import supervised

from runvisor import Run, RunKilled, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.operator import send_command
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams.runs import stored_state
from runvisor.adapters.pydantic_ai import runvisor_capability
from runvisor.protocols.messages import Checkpoint, Command, RunState
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
#: A model function: the conversation so far, in; the model's next response, out.
Script = Callable[[list[ModelMessage], AgentInfo], Awaitable[ModelResponse]]


def turns(messages: list[ModelMessage]) -> int:
    """How many times the model has answered so far."""
    return sum(isinstance(m, ModelResponse) for m in messages)


def returns(messages: list[ModelMessage]) -> list[object]:
    """The tool results the model has been given so far, in order."""
    return [p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]


def calling(*calls: tuple[str, dict[str, Any], str], tokens: tuple[int, int] = (1000, 100)) -> ModelResponse:
    """A model response that calls tools: ``(name, args, tool_call_id)`` each."""
    parts = [ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in calls]
    return ModelResponse(parts=parts, usage=RequestUsage(input_tokens=tokens[0], output_tokens=tokens[1]))


def answering(text: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)], usage=RequestUsage(input_tokens=1200, output_tokens=20))


def supervised_agent(script: Script, model_name: str = "gpt-4o") -> Agent[None, str]:
    return Agent(FunctionModel(script, model_name=model_name), capabilities=[runvisor_capability()])


async def test_model_responses_and_tool_calls_are_reported_with_usage_cost_and_the_frameworks_call_ids(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    genai_prices = pytest.importorskip("genai_prices")

    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return calling(("grep", {"pattern": "JsonParser"}, "call-grep-1"))
        return answering("JsonParser is in json.py")

    agent = supervised_agent(script)
    stored_when_called: list[Checkpoint | None] = []

    @agent.tool_plain
    async def grep(pattern: str) -> list[str]:
        stored_when_called.append(await checkpoint(admin, run_id))
        return ["json.py:12"]

    async with Run.start(goal="find the parser", run_id=run_id, nc=agent_nc):
        result = await agent.run("Where is the JSON parser?")

    assert result.output == "JsonParser is in json.py"
    events = await stored_steps(admin, run_id)
    assert [e.kind for e in events] == ["start", "message", "llm", "tool_call", "tool_result", "llm", "final"]
    assert events[1].observation == f"pydantic-ai run {result.run_id}", "the framework's run id, for its traces"
    first, second = (e for e in events if e.kind == "llm")
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=100), "gpt-4o")
    assert (first.tokens_in, first.tokens_out) == (1000, 100)
    assert first.cost_usd == pytest.approx(float(price.total_price)), "priced from the model's name"
    assert (second.tokens_in, second.tokens_out, second.observation) == (1200, 20, "JsonParser is in json.py")
    assert second.cost_usd is not None
    assert second.cost_usd > 0
    sent, done = (e for e in events if e.kind in ("tool_call", "tool_result"))
    assert (sent.tool, sent.call_id, sent.args) == ("grep", "call-grep-1", {"pattern": "JsonParser"})
    assert (done.call_id, done.ok, done.observation) == ("call-grep-1", True, '["json.py:12"]')
    # The call was checkpointed, under the framework's id, before the tool ran
    [stored] = stored_when_called
    assert stored is not None
    assert [(i.tool, i.call_id, i.in_process) for i in stored.open_intents] == [("grep", "call-grep-1", True)]
    assert result.usage.input_tokens == sum(e.tokens_in or 0 for e in events), "the same tokens PydanticAI counted"


async def test_a_model_pydantic_ai_cannot_price_is_priced_with_the_runs_own_prices(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return answering("hello")  # 1200 tokens in, 20 out

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc, prices={"my-finetune": (1.0, 3.0)}):
        await supervised_agent(script, model_name="my-finetune").run("hi")
        await supervised_agent(script, model_name="no-such-model-anywhere").run("hi")

    costs = [e.cost_usd for e in await stored_steps(admin, run_id) if e.kind == "llm"]
    assert costs == [pytest.approx((1200 * 1.0 + 20 * 3.0) / 1e6), None], "unknown stays unknown, not zero"


async def test_two_parallel_tool_calls_are_both_checkpointed_before_they_run(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return calling(("fetch", {"url": "a"}, "fetch-a"), ("fetch", {"url": "b"}, "fetch-b"))
        return answering("fetched both")

    agent = Agent(FunctionModel(script, model_name="gpt-4o"))  # given the capability per run, bound to one
    seen: dict[str, Checkpoint | None] = {}
    both_in = asyncio.Event()

    @agent.tool_plain
    async def fetch(url: str) -> str:
        seen[url] = await checkpoint(admin, run_id)
        if len(seen) == 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), WAIT_S)  # PydanticAI runs them at once, or this times out
        return f"page {url}"

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        result = await agent.run("fetch a and b", capabilities=[runvisor_capability(run)])
        assert run.open_intents == ()

    assert result.output == "fetched both"
    both = [cp for cp in seen.values() if cp is not None and len(cp.open_intents) == 2]
    assert both, "no checkpoint held both calls"
    assert {i.call_id for i in both[0].open_intents} == {"fetch-a", "fetch-b"}
    results = {e.call_id: e.ok for e in await stored_steps(admin, run_id) if e.kind == "tool_result"}
    assert results == {"fetch-a": True, "fetch-b": True}


async def test_a_looping_agent_is_stopped_with_loop_detected_raised_out_of_agent_run(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    ids = itertools.count()

    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) >= 200:
            return answering("giving up")
        return calling(("search", {"term": "JsonParser"}, f"search-{next(ids)}"))

    agent = supervised_agent(script, model_name="gpt-4o-mini")

    @agent.tool_plain
    async def search(term: str) -> str:
        return f"No matches found for {term!r}"

    async with supervised(server):
        with pytest.raises(RunStopped) as stopped:
            async with Run.start(goal="find the parser", policy=Policy(max_steps=500), run_id=run_id, nc=agent_nc):
                await agent.run("Find the JSON parser")

    assert stopped.value.reason is StopReason.LOOP_DETECTED
    assert stopped.value.evidence is not None
    assert "search" in stopped.value.evidence.summary
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED)
    events = await stored_steps(admin, run_id)
    assert sum(e.kind == "tool_call" for e in events) < 50, "stopped early, not at the script's end"
    assert events[-1].kind == "final"


async def test_pause_holds_at_the_next_model_request_and_resume_goes_on_with_the_same_history(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    asked: list[list[object]] = []  # what the model was given, each time it was asked

    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append(returns(messages))
        if turns(messages) == 0:
            return calling(("write", {"path": "a.txt"}, "write-1"))
        return answering(f"done: {returns(messages)}")

    agent = supervised_agent(script)
    in_tool, go = asyncio.Event(), asyncio.Event()

    @agent.tool_plain
    async def write(path: str) -> str:
        in_tool.set()
        await go.wait()
        return f"wrote {path}"

    runs: list[Run] = []

    async def run_agent() -> str:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            runs.append(run)
            run.state["notes"] = ["before the pause"]
            result = await agent.run("write a.txt")
            assert run.state == {"notes": ["before the pause"]}
            return result.output

    task = asyncio.create_task(run_agent())
    await asyncio.wait_for(in_tool.wait(), WAIT_S)
    # Given a pause that arrives while a tool call runs
    await send_command(operator, run_id, Command(cmd="pause"))
    await eventually(lambda: runs[0].paused, what="the pause received")
    go.set()
    # Then the call finishes and is recorded, and the run holds before the model is asked again
    await eventually(lambda: has_status(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    assert len(asked) == 1
    paused = await checkpoint(admin, run_id)
    assert paused is not None
    assert paused.open_intents == ()
    assert paused.state == {"notes": ["before the pause"]}

    await send_command(operator, run_id, Command(cmd="resume"))
    output = await asyncio.wait_for(task, WAIT_S)
    # and once resumed, the model gets the conversation as it was, the tool's result included.
    assert asked == [[], ["wrote a.txt"]]
    assert output == "done: ['wrote a.txt']"
    kinds = [(e.kind, e.observation) for e in await stored_steps(admin, run_id)]
    assert kinds.index(("tool_result", "wrote a.txt")) < kinds.index(("heartbeat", "resumed"))
    assert kinds[-2][0] == "llm", "the model's last answer, after the resume"


async def test_kill_cancels_a_tool_call_midway_and_raises_run_killed_out_of_agent_run(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return calling(("crawl", {"site": "example.org"}, "crawl-1"))

    agent = supervised_agent(script)
    started, cancelled = asyncio.Event(), asyncio.Event()

    @agent.tool_plain
    async def crawl(site: str) -> str:
        started.set()
        try:
            await asyncio.Event().wait()  # a crawl that would run for ever
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    async def run_agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
            await agent.run("crawl it")

    task = asyncio.create_task(run_agent())
    await asyncio.wait_for(started.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="kill", note="runaway crawl"))
    with pytest.raises(RunKilled, match="runaway crawl"):
        await asyncio.wait_for(task, WAIT_S)
    assert cancelled.is_set()

    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    assert [(i.tool, i.call_id) for i in cp.open_intents] == [("crawl", "crawl-1")], "what was in flight"
    events = await stored_steps(admin, run_id)
    [result] = [e for e in events if e.kind == "tool_result"]
    assert (result.call_id, result.ok) == ("crawl-1", False)
    assert (result.error or "").startswith("Cancelled")
    assert (events[-1].kind, events[-1].ok) == ("final", False)


async def test_kill_cancels_a_model_request_midway(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        started.set()
        try:
            await asyncio.Event().wait()  # a model that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return answering("unreachable")

    agent = supervised_agent(script)

    async def run_agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
            await agent.run("think hard")

    task = asyncio.create_task(run_agent())
    await asyncio.wait_for(started.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="kill"))
    with pytest.raises(RunKilled):
        await asyncio.wait_for(task, WAIT_S)
    assert cancelled.is_set()
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    assert not [e for e in await stored_steps(admin, run_id) if e.kind == "llm"], "no answer, nothing reported"


async def test_a_stop_raises_run_stopped_out_of_agent_run_at_the_next_step_and_no_tool_runs_after_it(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    ran: list[str] = []

    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return calling(("plan", {}, "plan-1"))
        return calling(("deploy", {"env": "prod"}, "deploy-1"))

    agent = supervised_agent(script)

    @agent.tool_plain
    async def plan() -> str:
        ran.append("plan")
        await send_command(operator, run_id, Command(cmd="stop", reason=StopReason.BUDGET_EXCEEDED, note="$2"))
        current = Run.current()
        assert current is not None
        await eventually(lambda: current.last_command is not None and current.last_command.cmd == "stop")
        return "planned"

    @agent.tool_plain
    async def deploy(env: str) -> str:
        ran.append("deploy")
        return "deployed"

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        with pytest.raises(RunStopped) as stopped:
            await agent.run("plan, then deploy")
    assert stopped.value.reason is StopReason.BUDGET_EXCEEDED
    assert ran == ["plan"], "the deploy never ran"
    assert run.open_intents == ()
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.BUDGET_EXCEEDED)


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, ToolCallPart, TextPart
    from pydantic_ai.models.function import FunctionModel
    from runvisor import Run
    from runvisor.adapters.pydantic_ai import runvisor_capability

    effects = Path(sys.argv[2])

    def script(messages, info):
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("charge", {"amount": 42}, tool_call_id="charge-7")])
        return ModelResponse(parts=[TextPart("charged")])

    agent = Agent(FunctionModel(script, model_name="gpt-4o"), capabilities=[runvisor_capability()])

    @agent.tool_plain
    async def charge(amount: int) -> str:
        with effects.open("a") as out:
            out.write(f"charged {amount}\\n")
        await asyncio.Event().wait()  # the card is charged; the answer never comes
        return "unreachable"

    async def main() -> None:
        async with Run.start(goal="buy the book", run_id=sys.argv[1], agent="doomed") as run:
            run.state["cart"] = ["book"]
            await agent.run("buy the book")

    asyncio.run(main())
    """
)


async def test_an_agent_killed_mid_tool_call_is_resumed_with_the_call_in_flight_under_its_framework_id(
    server: EmbeddedServer, admin: Client, run_id: str, tmp_path: Path
) -> None:
    # Given an agent process whose PydanticAI tool call is under way
    effects = tmp_path / "effects.txt"

    def charged() -> bool:
        return effects.exists() and bool(effects.read_text())

    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, run_id, str(effects), env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: charged() or proc.returncode is not None, timeout=20, what="the charge")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
    finally:
        # When the process dies without a word
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # Then a new process resuming the run is told what was in flight, with its arguments
    agent_nc = await connect(server.endpoint("agent"), "t-resumer")
    try:
        async with Run.resume(run_id, nc=agent_nc) as run:
            assert run.state == {"cart": ["book"]}
            [intent] = run.open_intents
            assert (intent.tool, intent.call_id, intent.in_process) == ("charge", "charge-7", True)
            assert run.open_args("charge-7") == {"amount": 42}
            await run.abandon_open_intent("charge-7", "the bank shows one charge")
    finally:
        await agent_nc.close()
    assert effects.read_text().splitlines() == ["charged 42"]
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.open_intents) == (RunStatus.COMPLETED, ())


def _shape(messages: list[ModelMessage]) -> list[tuple[str, object, object, object]]:
    """What a conversation said, without its timestamps and run ids."""
    return [
        (type(part).__name__, getattr(part, "content", None), getattr(part, "args", None), part.tool_call_id)
        if isinstance(part, ToolCallPart | ToolReturnPart)
        else (type(part).__name__, getattr(part, "content", None), None, None)
        for message in messages
        for part in message.parts
    ]


async def test_with_nothing_to_say_runvisor_leaves_the_agents_result_unchanged(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages)
        if n < 3:
            return calling(("lookup", {"key": f"k{n}"}, f"lookup-{n}"), ("send_mail", {"to": "ops"}, f"mail-{n}"))
        return answering(f"seen: {returns(messages)}")

    def build(*capabilities: Any) -> Agent[None, str]:
        agent = Agent(FunctionModel(script, model_name="gpt-4o"), capabilities=list(capabilities))
        failures: dict[str, int] = {}

        @agent.tool_plain
        async def lookup(key: str) -> str:
            failures[key] = failures.get(key, 0) + 1
            if key == "k1" and failures[key] == 1:
                raise ModelRetry("try k1 again")  # PydanticAI's own retry
            return f"value of {key}"

        @agent.tool_plain
        def send_mail(to: str) -> dict[str, object]:  # sync: PydanticAI runs it in a thread
            return {"ok": False, "error": "quota exceeded"}  # a hidden failure, for supervisors only

        return agent

    plain = await build().run("look them up")
    outside = await build(runvisor_capability()).run("look them up")  # no run: it does nothing
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
        supervised = await build(runvisor_capability()).run("look them up")

    assert supervised.output == plain.output == outside.output
    assert _shape(supervised.all_messages()) == _shape(plain.all_messages()) == _shape(outside.all_messages())
    # The supervisor still sees what the agent's values hide: a retry the tool asked for, a hidden failure
    results = [(e.call_id, e.ok, e.error) for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert results == [
        ("lookup-0", True, None),
        ("mail-0", False, "ToolError: quota exceeded"),
        ("lookup-1", False, "ToolRetryError: try k1 again"),
        ("mail-1", False, "ToolError: quota exceeded"),
        ("lookup-2", True, None),
        ("mail-2", False, "ToolError: quota exceeded"),
    ]


async def test_a_deferred_tool_call_is_recorded_as_not_run_rather_than_failed(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return calling(("transfer", {"amount": 500}, "transfer-1"))

    agent: Agent[None, str | DeferredToolRequests] = Agent(
        FunctionModel(script, model_name="gpt-4o"),
        output_type=[str, DeferredToolRequests],
        capabilities=[runvisor_capability()],
    )

    @agent.tool_plain
    async def transfer(amount: int) -> str:
        raise CallDeferred  # a person will approve it later

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
        result = await agent.run("pay the invoice")
    assert isinstance(result.output, DeferredToolRequests)
    assert [c.tool_call_id for c in result.output.calls] == ["transfer-1"]
    [done] = [e for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert (done.call_id, done.ok, done.observation) == ("transfer-1", True, "not run: CallDeferred")


async def test_importing_the_adapter_without_pydantic_ai_names_the_extra() -> None:
    code = "import sys; sys.modules['pydantic_ai'] = None; import runvisor.adapters.pydantic_ai"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1
    assert "ImportError" in err.decode()
    assert "pip install 'runvisor[pydantic-ai]'" in err.decode()


#: $10 per million input tokens, none for output: a model call of ``calling()``'s 1000 tokens in costs $0.01.
DELEGATION_PRICES = {"planner": (10.0, 0.0), "researcher": (10.0, 0.0)}


async def test_a_sub_agent_delegated_to_from_a_tool_reports_to_its_own_run_and_is_stopped_by_the_parents_budget(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    # Given a researcher agent that reads this repository's sources one by one, $0.01 a model call,
    sources = [
        str(path.relative_to(REPO)) for top in ("runvisor", "tests") for path in sorted((REPO / top).rglob("*.py"))
    ]

    async def researching(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = turns(messages)
        if n == len(sources):
            return answering("read them all")  # not reached while the parent's budget holds
        return calling(("read", {"path": sources[n]}, f"read-{n}"))

    researcher = Agent(FunctionModel(researching, model_name="researcher"), capabilities=[runvisor_capability()])

    @researcher.tool_plain
    async def read(path: str) -> str:
        return (REPO / path).read_text()[:2000]

    # and a planner that delegates to it from a tool (PydanticAI's "agent delegation"), in a sub-agent run,
    async def planning(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if turns(messages) == 0:
            return calling(("research", {"question": "where is the parser?"}, "research-1"))
        return answering(f"found: {returns(messages)}")

    planner = Agent(FunctionModel(planning, model_name="planner"), capabilities=[runvisor_capability()])
    children: list[Run] = []
    child_ends: list[RunStopped] = []

    @planner.tool_plain
    async def research(question: str) -> str:
        async with Run.start("research the parser", parent=Run.current(), nc=agent_nc, prices=DELEGATION_PRICES) as sub:
            children.append(sub)
            try:
                return (await researcher.run(question)).output
            except RunStopped as stopped:
                child_ends.append(stopped)
                raise

    # when the planner, allowed $0.05, spends $0.01 and its sub-agent goes on spending,
    budget = Policy(max_cost_usd=0.05)
    async with supervised(server):
        with pytest.raises(RunStopped) as parent_end:
            async with Run.start("plan", budget, run_id, nc=agent_nc, prices=DELEGATION_PRICES):
                await planner.run("Where is the JSON parser?")
        judged = await eventually(lambda: _stopped_state(admin, run_id), what="the parent's stop in rv_runs")

    # then the sub-agent's model and tool calls are its own run's steps, and it names its parent,
    [child] = children
    assert child.parent_run_id == run_id
    child_events = await stored_steps(admin, child.run_id)
    assert child_events[0].kind == "start"
    assert child_events[0].parent_run_id == run_id
    child_costs = [e.cost_usd for e in child_events if e.kind == "llm"]
    assert child_costs == [pytest.approx(0.01)] * len(child_costs), "priced by the sub-agent's run"
    assert sum(cost or 0.0 for cost in child_costs) > 0.05 - 0.01, "more than the parent had left"
    assert any(e.kind == "tool_call" and e.tool == "read" for e in child_events)
    parent_events = await stored_steps(admin, run_id)
    assert [(e.kind, e.tool) for e in parent_events if e.kind in ("llm", "tool_call")] == [
        ("llm", None),
        ("tool_call", "research"),
    ], "the planner's one model call and its delegation: none of the researcher's"
    # the parent's budget stopped the sub-agent, raised out of the researcher's agent.run(),
    [stopped] = child_ends
    assert (stopped.reason, stopped.run_id) == (StopReason.BUDGET_EXCEEDED, child.run_id)
    assert stopped.evidence is not None
    assert f"its parent run {run_id} was stopped (BUDGET_EXCEEDED)" in stopped.evidence.summary
    assert "cost budget exceeded by the run and its 1 sub-agent:" in stopped.evidence.summary
    assert "(policy max_cost_usd" in stopped.evidence.summary
    child_cp = await checkpoint(admin, child.run_id)
    assert child_cp is not None
    assert (child_cp.status, child_cp.stop_reason) == (RunStatus.STOPPED, StopReason.BUDGET_EXCEEDED)
    assert (child_events[-1].kind, child_events[-1].ok) == ("final", False)
    # and the parent too, for its family's spending.
    assert parent_end.value.reason is StopReason.BUDGET_EXCEEDED
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.BUDGET_EXCEEDED)
    assert judged.stop_reason is StopReason.BUDGET_EXCEEDED
    verdict = judged.last_verdict
    assert verdict is not None
    assert (verdict.detector, verdict.severity, verdict.reason) == ("family_budget", "stop", StopReason.BUDGET_EXCEEDED)
    assert "cost budget exceeded by the run and its 1 sub-agent:" in verdict.evidence.summary


async def _stopped_state(admin: Client, run_id: str) -> RunState | None:
    state = await stored_state(admin, run_id)
    return state if state is not None and state.status is RunStatus.STOPPED else None
