"""The LangGraph adapter (``runvisor.adapters.langgraph``) against a real nats-server: LangChain v1
agents (``create_agent``) on LangChain's offline chat model, supervised by one middleware."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage, messages_from_dict
from langchain_core.messages.tool import tool_call
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command as LgCommand
from nats.aio.client import Client
from test_agent import all_stored_steps as stored_steps
from test_agent import checkpoint, has_status
from test_operator import supervised

from runvisor import Run, RunKilled, RunNotResumable, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.operator import send_command
from runvisor.actors.server import EmbeddedServer
from runvisor.adapters.langgraph import RunvisorCallbackHandler, RunvisorMiddleware, is_pause, resume_command
from runvisor.protocols.messages import Checkpoint, Command, StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
CONFIG: RunnableConfig = {"configurable": {"thread_id": "t1"}, "recursion_limit": 2000}


class ScriptedModel(GenericFakeChatModel):
    """LangChain's offline chat model, answering with ``messages`` in turn; binding tools changes nothing."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def calling(*calls: tuple[str, dict[str, Any], str], tokens: tuple[int, int] = (1000, 100)) -> AIMessage:
    """A model response that calls tools, ``(name, args, tool_call_id)`` each, as gpt-4o-mini."""
    return AIMessage(
        content="",
        tool_calls=[tool_call(name=name, args=args, id=call_id) for name, args, call_id in calls],
        usage_metadata={"input_tokens": tokens[0], "output_tokens": tokens[1], "total_tokens": sum(tokens)},
        response_metadata={"model_name": "gpt-4o-mini"},
    )


def answering(text: str) -> AIMessage:
    usage = {"input_tokens": 1200, "output_tokens": 20, "total_tokens": 1220}
    return AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"})


def agent_on(
    script: Iterable[AIMessage],
    tools: Sequence[BaseTool],
    *,
    supervised: bool = True,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
) -> Any:
    middleware = [RunvisorMiddleware()] if supervised else []
    return create_agent(ScriptedModel(messages=iter(script)), tools, middleware=middleware, checkpointer=checkpointer)


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def seen(messages: Sequence[BaseMessage]) -> list[tuple[object, ...]]:
    """What an agent's messages say, without the ids LangChain makes up for each run."""
    return [
        (
            m.type,
            m.content,
            [(c["name"], c["args"], c["id"]) for c in getattr(m, "tool_calls", [])],
            getattr(m, "tool_call_id", None),
            getattr(m, "status", None),
        )
        for m in messages
    ]


def said(events: list[StepEvent]) -> list[str]:
    return [e.observation or "" for e in events if e.kind == "heartbeat"]


@tool
async def search(term: str) -> str:
    """Search the code for a term."""
    return f"No matches found for {term!r}"


async def test_model_responses_and_tool_calls_are_reported_with_usage_cost_and_langchains_call_ids(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    stored_when_called: list[Checkpoint | None] = []

    @tool
    async def grep(pattern: str) -> list[str]:
        """Grep the code."""
        stored_when_called.append(await checkpoint(admin, run_id))
        return ["json.py:12"]

    script = [
        calling(("grep", {"pattern": "JsonParser"}, "call-grep-1")),
        calling(("grep", {}, "call-grep-2")),  # arguments LangChain rejects: an error the model reads
        answering("JsonParser is in json.py"),
    ]
    async with Run.start(goal="find the parser", run_id=run_id, nc=agent_nc):
        result = await agent_on(script, [grep]).ainvoke(user("Where is the JSON parser?"))

    assert result["messages"][-1].content == "JsonParser is in json.py"
    events = await stored_steps(admin, run_id)
    assert [e.kind for e in events] == [
        "start", "llm", "tool_call", "tool_result", "llm", "tool_call", "tool_result", "llm", "final",
    ]  # fmt: skip
    first, _, last = (e for e in events if e.kind == "llm")
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=1000, output_tokens=100), "gpt-4o-mini")
    assert (first.tokens_in, first.tokens_out) == (1000, 100)
    assert first.cost_usd == pytest.approx(float(price.total_price)), "priced from the model's name"
    assert (last.tokens_in, last.tokens_out, last.observation) == (1200, 20, "JsonParser is in json.py")
    calls = [(e.kind, e.tool, e.call_id, e.args, e.ok) for e in events if e.kind in ("tool_call", "tool_result")]
    assert calls[:2] == [
        ("tool_call", "grep", "call-grep-1", {"pattern": "JsonParser"}, None),
        ("tool_result", "grep", "call-grep-1", None, True),
    ]
    # A call LangChain answered with an error message is recorded as failed; the agent read the same message
    rejected = next(e for e in events if e.kind == "tool_result" and e.call_id == "call-grep-2")
    assert rejected.ok is False
    assert rejected.error is not None
    assert rejected.error.startswith("ToolError: ")
    [error_message] = [m for m in result["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert rejected.observation == error_message.content
    # The call was checkpointed, under LangChain's id, before the tool ran
    stored = stored_when_called[0]
    assert stored is not None
    assert [(i.tool, i.call_id, i.in_process) for i in stored.open_intents] == [("grep", "call-grep-1", True)]


async def test_with_nothing_to_say_runvisor_leaves_the_agents_messages_unchanged(agent_nc: Client, run_id: str) -> None:
    def script() -> list[AIMessage]:
        return [
            calling(("search", {"term": "a"}, "s-1"), ("search", {"term": "b"}, "s-2")),
            calling(("search", {"term": "c"}, "s-3")),
            answering("nothing found"),
        ]

    alone = await agent_on(script(), [search], supervised=False).ainvoke(user("find it"))
    async with Run.start(goal="find it", run_id=run_id, nc=agent_nc):
        supervised = await agent_on(script(), [search], checkpointer=InMemorySaver()).ainvoke(user("find it"), CONFIG)
    # And outside any run the middleware passes everything through
    unsupervised = await agent_on(script(), [search]).ainvoke(user("find it"))

    assert seen(supervised["messages"]) == seen(alone["messages"])
    assert seen(unsupervised["messages"]) == seen(alone["messages"])
    assert set(supervised) == set(alone) == {"messages"}


def looping() -> Iterator[AIMessage]:
    """A model that asks for the same search for ever, each time with a new tool call id."""
    for n in itertools.count():
        yield calling(("search", {"term": "JsonParser"}, f"search-{n}"), tokens=(900, 40))


async def test_a_looping_agent_is_stopped_with_loop_detected_raised_out_of_ainvoke(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    async with supervised(server):
        with pytest.raises(RunStopped) as stopped:
            async with Run.start(goal="find the parser", policy=Policy(max_steps=500), run_id=run_id, nc=agent_nc):
                await agent_on(looping(), [search]).ainvoke(user("Find the JSON parser"), CONFIG)

    assert stopped.value.reason is StopReason.LOOP_DETECTED
    assert stopped.value.evidence is not None
    assert "search" in stopped.value.evidence.summary
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED)
    events = await stored_steps(admin, run_id)
    assert sum(e.kind == "tool_call" for e in events) < 50, "stopped early"
    assert events[-1].kind == "final"


class PausedMidway:
    """An agent whose ``write`` tool is the moment an operator pauses the run: the pause is
    received while the first call runs, so the graph is interrupted at the next model request."""

    def __init__(self, operator: Client, run_id: str, *, pausing: bool = True) -> None:
        self.asked = 0  # how many times the model was asked
        self._operator, self._run_id = operator, run_id

        @tool
        async def write(path: str) -> str:
            """Write a file."""
            if pausing and path == "a.txt":
                await send_command(self._operator, self._run_id, Command(cmd="pause", note="let me look"))
                await eventually(run_paused, what="the pause received")
            return f"wrote {path}"

        self.tools = [write]

    def script(self) -> Iterator[AIMessage]:
        for message in (
            calling(("write", {"path": "a.txt"}, "write-1")),
            calling(("write", {"path": "b.txt"}, "write-2")),
            answering("both written"),
        ):
            self.asked += 1
            yield message


def run_paused() -> bool:
    run = Run.current()
    return run is not None and run.paused


async def test_pause_interrupts_the_graph_and_resume_continues_it_with_the_same_state(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    unpaused = PausedMidway(operator, run_id, pausing=False)
    baseline = await agent_on(unpaused.script(), unpaused.tools, supervised=False).ainvoke(user("write them"))
    scene = PausedMidway(operator, run_id)
    agent = agent_on(scene.script(), scene.tools, checkpointer=InMemorySaver())

    async with Run.start(goal="write both", run_id=run_id, nc=agent_nc) as run:
        result = await agent.ainvoke(user("write them"), CONFIG)
        # Then the graph stopped before its next model request, and says why
        [pause] = result["__interrupt__"]
        assert is_pause(pause)
        assert pause.value == {
            "runvisor": "pause", "run_id": run_id, "reason": "USER_PAUSED", "at": "model request",
            "issuer": "operator", "note": "let me look",
        }  # fmt: skip
        assert scene.asked == 1
        assert run.suspended
        # When the agent waits for the operator in this process, the run holds as PAUSED
        holding = asyncio.create_task(run.obey())
        await eventually(lambda: has_status(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
        assert not holding.done()
        await send_command(operator, run_id, Command(cmd="resume"))
        await asyncio.wait_for(holding, WAIT_S)
        # and the graph goes on from its own checkpoint, with the same state
        result = await agent.ainvoke(resume_command(result["__interrupt__"]), CONFIG)
        assert not run.suspended, "the graph ran to its end"

    assert "__interrupt__" not in result
    assert seen(result["messages"]) == seen(baseline["messages"])
    assert scene.asked == 3, "no model call was made twice"
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert cp.status == RunStatus.COMPLETED
    words = said(await stored_steps(admin, run_id))
    assert sum(w.startswith("paused: ") for w in words) == 1
    assert words.count("resumed") == 1


async def test_an_interrupted_graph_leaves_its_run_paused_and_runs_on_after_run_resume(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    scene = PausedMidway(operator, run_id)
    saver = InMemorySaver()  # the graph's state, kept where a new process would find it (see the README)
    model = scene.script()  # the model goes on with the conversation, whichever process asks it

    # Given a process that leaves the run's block once the graph is interrupted for a pause
    async with Run.start(goal="write both", run_id=run_id, nc=agent_nc):
        result = await agent_on(model, scene.tools, checkpointer=saver).ainvoke(user("write them"), CONFIG)
    assert "__interrupt__" in result

    # Then the run is left PAUSED, not ended
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.PAUSED, StopReason.USER_PAUSED)
    left = await stored_steps(admin, run_id)
    assert left[-1].kind == "heartbeat"
    assert left[-1].args == {"status": "PAUSED", "reason": "USER_PAUSED"}
    assert all(e.kind != "final" for e in left)

    # When another process resumes the run and invokes the graph before the operator resumes it,
    async with Run.resume(run_id, nc=agent_nc) as run:
        assert run.paused
        agent = agent_on(model, scene.tools, checkpointer=saver)
        pending = (await agent.aget_state(CONFIG)).interrupts
        going_on = asyncio.create_task(agent.ainvoke(resume_command(pending), CONFIG))
        # the graph holds where it stopped
        await eventually(
            lambda: _said_after(admin, run_id, len(left), "paused: "), what="the graph holding at its boundary"
        )
        assert not going_on.done()
        # until the operator resumes the run: then it runs to its end
        await send_command(operator, run_id, Command(cmd="resume"))
        result = await asyncio.wait_for(going_on, WAIT_S)

    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == ["wrote a.txt", "wrote b.txt"]
    assert result["messages"][-1].content == "both written"
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert cp.status == RunStatus.COMPLETED


async def _said_after(admin: Client, run_id: str, skip: int, prefix: str) -> bool:
    return any(w.startswith(prefix) for w in said((await stored_steps(admin, run_id))[skip:]))


class PauseBeforeTools(AgentMiddleware[AgentState[Any], Any, Any]):
    """Pauses the run as its tool calls start, before runvisor's middleware (inside this one) sees them.

    Each call waits until the run has the pause, so that all of them meet it; once ``resumed``, none waits.
    """

    def __init__(self, operator: Client, run_id: str) -> None:
        super().__init__()
        self._operator, self._run_id = operator, run_id
        self.sent = self.resumed = False

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | LgCommand[Any]]]
    ) -> ToolMessage | LgCommand[Any]:
        if not self.sent:
            self.sent = True
            await send_command(self._operator, self._run_id, Command(cmd="pause"))
        if not self.resumed:
            await eventually(run_paused, what="the pause received")
        return await handler(request)


async def test_parallel_tool_calls_paused_at_their_start_are_each_interrupted_and_resumed_together(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    ran: list[str] = []

    @tool
    async def fetch(url: str) -> str:
        """Fetch a page."""
        ran.append(url)
        return f"page {url}"

    pausing = PauseBeforeTools(operator, run_id)
    script = [calling(("fetch", {"url": "a"}, "fetch-a"), ("fetch", {"url": "b"}, "fetch-b")), answering("done")]
    agent: Any = create_agent(
        ScriptedModel(messages=iter(script)), [fetch], middleware=[pausing, RunvisorMiddleware()],
        checkpointer=InMemorySaver(),
    )  # fmt: skip
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        result = await agent.ainvoke(user("fetch a and b"), CONFIG)
        # Then each call stopped before it ran, each with an interrupt of its own
        assert ran == []
        assert sorted((i.value["at"], i.value["call_id"]) for i in result["__interrupt__"]) == [
            ("tool call fetch", "fetch-a"), ("tool call fetch", "fetch-b"),
        ]  # fmt: skip
        await send_command(operator, run_id, Command(cmd="resume"))
        await eventually(lambda: not run.paused, what="the resume received")
        pausing.resumed = True
        result = await agent.ainvoke(resume_command(result["__interrupt__"]), CONFIG)

    assert sorted(ran) == ["a", "b"], "each call ran once"
    assert [m.content for m in result["messages"] if isinstance(m, ToolMessage)] == ["page a", "page b"]
    calls = [e.call_id or "" for e in await stored_steps(admin, run_id) if e.kind == "tool_call"]
    assert sorted(calls) == ["fetch-a", "fetch-b"]


async def test_a_pause_during_a_model_call_interrupts_after_it_without_asking_the_model_again(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    asked: list[int] = []
    release = threading.Event()

    def script() -> Iterator[AIMessage]:  # LangChain asks the offline model in a worker thread
        asked.append(1)
        release.wait(WAIT_S)
        yield answering("the parser is in json.py")
        asked.append(2)
        yield answering("asked twice")

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        agent = agent_on(script(), [search], checkpointer=InMemorySaver())
        asking = asyncio.create_task(agent.ainvoke(user("where is the parser?"), CONFIG))
        await eventually(lambda: asked, what="the model asked")
        await send_command(operator, run_id, Command(cmd="pause"))
        await eventually(lambda: run.paused, what="the pause received")
        release.set()
        result = await asyncio.wait_for(asking, WAIT_S)
        [pause] = result["__interrupt__"]
        assert pause.value["at"] == "model response"
        await send_command(operator, run_id, Command(cmd="resume"))
        await eventually(lambda: not run.paused, what="the resume received")
        result = await agent.ainvoke(resume_command([pause]), CONFIG)

    assert asked == [1], "the answer was not asked for twice"
    assert result["messages"][-1].content == "the parser is in json.py"
    [llm] = [e for e in await stored_steps(admin, run_id) if e.kind == "llm"]
    assert llm.observation == "the parser is in json.py", "reported once, after the resume"


async def test_without_a_checkpointer_a_pause_holds_in_place(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    scene = PausedMidway(operator, run_id)
    async with Run.start(goal="write both", run_id=run_id, nc=agent_nc) as run:
        going = asyncio.create_task(agent_on(scene.script(), scene.tools).ainvoke(user("write them")))
        await eventually(lambda: has_status(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
        assert scene.asked == 1
        assert not run.suspended, "nothing to suspend: the graph could not be continued elsewhere"
        await send_command(operator, run_id, Command(cmd="resume"))
        result = await asyncio.wait_for(going, WAIT_S)

    assert "__interrupt__" not in result
    assert result["messages"][-1].content == "both written"


async def test_kill_cancels_a_tool_call_midway_and_raises_run_killed_out_of_ainvoke(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def crawl(site: str) -> str:
        """Crawl a site."""
        started.set()
        try:
            await asyncio.Event().wait()  # a tool that would run for ever
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    async def agent() -> None:
        async with Run.start(goal="crawl", run_id=run_id, nc=agent_nc):
            await agent_on([calling(("crawl", {"site": "example.org"}, "crawl-1"))], [crawl]).ainvoke(user("crawl"))

    task = asyncio.create_task(agent())
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
    assert events[-1].kind == "final"


async def test_two_parallel_tool_calls_are_both_checkpointed_before_they_run(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    stored: dict[str, Checkpoint | None] = {}
    both_in = asyncio.Event()

    @tool
    async def fetch(url: str) -> str:
        """Fetch a page."""
        stored[url] = await checkpoint(admin, run_id)
        if len(stored) == 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), WAIT_S)  # LangGraph runs them at once, or this times out
        return f"page {url}"

    script = [calling(("fetch", {"url": "a"}, "fetch-a"), ("fetch", {"url": "b"}, "fetch-b")), answering("done")]
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        await agent_on(script, [fetch]).ainvoke(user("fetch a and b"))
        assert run.open_intents == ()

    both = [cp for cp in stored.values() if cp is not None and len(cp.open_intents) == 2]
    assert both, "no checkpoint held both calls"
    assert {i.call_id for i in both[0].open_intents} == {"fetch-a", "fetch-b"}
    results = {e.call_id: e.ok for e in await stored_steps(admin, run_id) if e.kind == "tool_result"}
    assert results == {"fetch-a": True, "fetch-b": True}


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from runvisor import Run
    from runvisor.adapters.langgraph import RunvisorMiddleware

    effects = Path(sys.argv[2])

    class Model(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    @tool
    async def charge(amount: int) -> str:
        \"\"\"Charge the card.\"\"\"
        with effects.open("a") as out:
            out.write(f"charged {amount}\\n")
        await asyncio.Event().wait()  # the card is charged; the answer never comes
        return "unreachable"

    async def main() -> None:
        asking = AIMessage(content="", tool_calls=[{"name": "charge", "args": {"amount": 42}, "id": "charge-1"}])
        agent = create_agent(Model(messages=iter([asking])), [charge], middleware=[RunvisorMiddleware()])
        async with Run.start(goal="buy the book", run_id=sys.argv[1], agent="doomed"):
            await agent.ainvoke({"messages": [{"role": "user", "content": "buy it"}]})

    asyncio.run(main())
    """
)


async def test_an_agent_killed_mid_tool_call_is_resumed_with_the_call_in_flight_under_langchains_id(
    server: EmbeddedServer, admin: Client, run_id: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"

    def charged() -> bool:
        return effects.exists() and effects.read_text() == "charged 42\n"

    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, run_id, str(effects), env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: charged() or proc.returncode is not None, timeout=30, what="the charge")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
    finally:
        # When the process dies without a word
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # Then a new process resuming the run is told what was in flight, by LangChain's tool call id
    agent_nc = await connect(server.endpoint("agent"), "t-resumer")
    try:
        async with Run.resume(run_id, nc=agent_nc) as run:
            [intent] = run.open_intents
            assert (intent.tool, intent.call_id, intent.in_process) == ("charge", "charge-1", True)
            assert run.open_args("charge-1") == {"amount": 42}
            await run.abandon_open_intent("charge-1", "the bank shows one charge")
    finally:
        await agent_nc.close()
    results = [(e.call_id, e.ok, e.error) for e in await stored_steps(admin, run_id) if e.kind == "tool_result"]
    assert results == [("charge-1", False, "Abandoned: the bank shows one charge")]


def hand_built(model: ScriptedModel, tools: Sequence[BaseTool]) -> Any:
    """A graph built by hand, LangGraph's own way: a model node and a ``ToolNode`` in a loop."""

    async def ask(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", ask)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


async def test_a_hand_built_graph_is_reported_through_callbacks(agent_nc: Client, admin: Client, run_id: str) -> None:
    script = [calling(("search", {"term": "JsonParser"}, "call-1")), answering("not found")]
    graph = hand_built(ScriptedModel(messages=iter(script)), [search])
    async with Run.start(goal="find the parser", run_id=run_id, nc=agent_nc):
        result = await graph.ainvoke(user("find it"), {"callbacks": [RunvisorCallbackHandler()]})

    assert result["messages"][-1].content == "not found"
    events = await stored_steps(admin, run_id)
    assert [e.kind for e in events] == ["start", "llm", "tool_call", "tool_result", "llm", "final"]
    first = next(e for e in events if e.kind == "llm")
    assert (first.tokens_in, first.tokens_out) == (1000, 100)
    assert first.cost_usd is not None
    assert first.cost_usd > 0
    sent, done = (e for e in events if e.kind in ("tool_call", "tool_result"))
    assert (sent.tool, sent.call_id, sent.args) == ("search", "call-1", {"term": "JsonParser"})
    assert (done.call_id, done.ok, done.observation) == ("call-1", True, "No matches found for 'JsonParser'")


async def test_a_kill_during_a_tool_call_ends_a_callback_supervised_graph_when_the_call_returns(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    async def kill_midway(term: str) -> str:
        await send_command(operator, run_id, Command(cmd="kill"))
        await eventually(lambda: (run := Run.current()) is not None and run.last_command is not None)
        return "No matches"

    killing = tool(kill_midway, description="Search, while an operator kills the run.")
    script = iter([calling(("kill_midway", {"term": "x"}, "call-1")), answering("unreachable")])
    graph = hand_built(ScriptedModel(messages=script), [killing])
    with pytest.raises(RunKilled):
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
            await graph.ainvoke(user("find it"), {"callbacks": [RunvisorCallbackHandler()]})

    assert next(script).content == "unreachable", "the model was not asked again"
    events = await stored_steps(admin, run_id)
    results = [(e.call_id, e.ok, (e.error or "")[:9]) for e in events if e.kind == "tool_result"]
    assert results == [("call-1", False, "Cancelled")]


async def test_a_suspended_run_killed_before_it_leaves_is_ended_not_left_paused(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        run.suspended = True
        await send_command(operator, run_id, Command(cmd="kill", note="no more"))
        await eventually(lambda: run.last_command is not None, what="the kill received")
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    assert (await stored_steps(admin, run_id))[-1].kind == "final"
    with pytest.raises(RunNotResumable):
        async with Run.resume(run_id, nc=agent_nc):
            pass


def test_resume_command_answers_only_runvisor_pauses() -> None:
    from langgraph.types import Interrupt  # noqa: PLC0415 - only this test builds interrupts by hand

    ours = Interrupt(value={"runvisor": "pause", "run_id": "r"}, id="a" * 32)
    theirs = Interrupt(value={"question": "approve?"}, id="b" * 32)
    assert resume_command([ours, theirs]).resume == {"a" * 32: "resumed"}
    with pytest.raises(ValueError, match="no runvisor pause"):
        resume_command([theirs])


async def test_importing_the_adapter_without_langgraph_names_the_extra() -> None:
    code = "import sys; sys.modules['langgraph'] = None; import runvisor.adapters.langgraph"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1
    assert "ImportError" in err.decode()
    assert "pip install 'runvisor[langgraph]'" in err.decode()


async def test_a_sync_invoke_is_passed_through_outside_a_run_and_refused_inside_one(
    agent_nc: Client, run_id: str
) -> None:
    alone = agent_on([answering("hello")], [], supervised=False).invoke(user("hi"))
    passed_through = agent_on([answering("hello")], []).invoke(user("hi"))
    assert seen(passed_through["messages"]) == seen(alone["messages"])
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
        with pytest.raises(RuntimeError, match="ainvoke"):
            agent_on([answering("hello")], []).invoke(user("hi"))


CONTINUED_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from langchain.agents import create_agent
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, messages_to_dict
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from runvisor import Run
    from runvisor.adapters.langgraph import RunvisorMiddleware, resume_command
    from runvisor.testing import eventually

    session, run_id, db, log = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    CONFIG = {"configurable": {"thread_id": "t1"}}
    TASK = {"messages": [{"role": "user", "content": "write them"}]}
    REPLIES = [
        AIMessage(content="", tool_calls=[{"name": "write", "args": {"path": "a.txt"}, "id": "write-1"}]),
        AIMessage(content="", tool_calls=[{"name": "write", "args": {"path": "b.txt"}, "id": "write-2"}]),
        AIMessage(content="both written"),
    ]

    def note(line):
        with log.open("a") as out:
            out.write(f"{session} {line}\\n")

    class Model(BaseChatModel):
        # Stateless, as a model API is: it answers the turn the conversation it is sent has reached.
        @property
        def _llm_type(self):
            return "scripted"

        def bind_tools(self, tools, **kwargs):
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            turn = sum(isinstance(m, AIMessage) for m in messages)
            note(f"asked {turn}")
            return ChatResult(generations=[ChatGeneration(message=REPLIES[turn])])

    @tool
    async def write(path: str) -> str:
        \"\"\"Write a file.\"\"\"
        note(f"wrote {path}")
        if session == "A":  # the operator pauses the run while the first file is written
            await eventually(lambda: Run.current().paused, what="the pause")
        return f"wrote {path}"

    async def main():
        async with AsyncSqliteSaver.from_conn_string(db) as saver:
            agent = create_agent(Model(), [write], middleware=[RunvisorMiddleware()], checkpointer=saver)
            if session == "A":
                async with Run.start(goal="write both", run_id=run_id, agent="writer"):
                    result = await agent.ainvoke(TASK, CONFIG)
                print(json.dumps([{"id": i.id, "value": i.value} for i in result["__interrupt__"]]))
            else:
                async with Run.resume(run_id, agent="writer") as run:
                    await run.obey()
                    pending = (await agent.aget_state(CONFIG)).interrupts
                    result = await agent.ainvoke(resume_command(pending), CONFIG)
                messages = messages_to_dict(result["messages"])
                print(json.dumps({"pending": [i.id for i in pending], "messages": messages}))

    asyncio.run(main())
    """
)


async def test_a_graph_paused_in_one_process_is_continued_in_another_from_a_sqlite_checkpointer(
    server: EmbeddedServer, admin: Client, operator: Client, run_id: str, tmp_path: Path
) -> None:
    unpaused = PausedMidway(operator, run_id, pausing=False)
    baseline = await agent_on(unpaused.script(), unpaused.tools, supervised=False).ainvoke(user("write them"))
    db, log = tmp_path / "graph.sqlite", tmp_path / "log.txt"
    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}

    def logged() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    async def session(name: str) -> bytes:
        """Process ``name`` runs the agent (see CONTINUED_SCRIPT) to its exit; the first pauses when it writes a.txt."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CONTINUED_SCRIPT, name, run_id, str(db), str(log), env=env, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            if name == "A":
                await eventually(lambda: "A wrote a.txt" in logged() or proc.returncode is not None, timeout=20)
                await send_command(operator, run_id, Command(cmd="pause", note="let me look"))
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        return out

    # Given process A, paused by the operator while its tool writes the first file
    out = await session("A")
    # Then its graph was interrupted before the next model request, and it left the run PAUSED
    [pause] = json.loads(out)
    assert pause["value"] == {
        "runvisor": "pause", "run_id": run_id, "reason": "USER_PAUSED", "at": "model request",
        "issuer": "operator", "note": "let me look",
    }  # fmt: skip
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.PAUSED, StopReason.USER_PAUSED)
    assert all(e.kind != "final" for e in await stored_steps(admin, run_id))

    # When the operator resumes the run and process B continues it from the same sqlite file
    await send_command(operator, run_id, Command(cmd="resume", note="go on"))
    out = await session("B")

    # Then B found A's pending interrupt on disk and ran the graph to the unpaused run's end
    continued = json.loads(out)
    assert continued["pending"] == [pause["id"]]
    assert seen(messages_from_dict(continued["messages"])) == seen(baseline["messages"])
    assert logged() == ["A asked 0", "A wrote a.txt", "B asked 1", "B wrote b.txt", "B asked 2"], (
        "each model turn asked, and each file written, once"
    )
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert cp.status == RunStatus.COMPLETED
    events = await stored_steps(admin, run_id)
    assert [e.call_id for e in events if e.kind == "tool_result"] == ["write-1", "write-2"]
    assert sum(e.kind == "llm" for e in events) == 3
    assert events[-1].kind == "final"
