"""A LangChain agent that an operator pauses and resumes: it finishes with the state it had.

    .venv/bin/python examples/paused_and_resumed.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then a LangChain v1 agent (``create_agent``, runvisor attached as one middleware) that writes
three files, one tool call at a time. As the first file is written, an operator pauses the run,
as ``runvisor pause RUN`` does. The agent's graph is interrupted at its next step (LangGraph's
``interrupt``: its checkpointer saves its state) and its process leaves the run, which stays
PAUSED. The operator resumes it (``runvisor resume RUN``); the agent picks the run up again with
``Run.resume`` and goes on from the graph's checkpoint. The script exits 0 when the agent was
interrupted, the run was PAUSED meanwhile, and it then completed with the same messages as the
same agent run without a pause.

The graph's state lives in LangGraph's ``InMemorySaver`` here, so the agent's two sessions share
one process; with a durable checkpointer (``langgraph-checkpoint-sqlite``, ``-postgres``) the
second session could be another process, as runvisor's run already can.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.messages.tool import tool_call
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from nats.aio.client import Client

from runvisor import Run, RunStatus
from runvisor.actors.connection import connect
from runvisor.actors.operator import fetch_state, run_steps, send_command
from runvisor.actors.supervisor import SupervisorWorker
from runvisor.adapters.langgraph import RunvisorMiddleware, is_pause, resume_command
from runvisor.protocols.commands import refusal
from runvisor.protocols.messages import Command
from runvisor.testing import embedded_server, eventually

FILES = ("notes.md", "plan.md", "summary.md")
TASK = {"messages": [{"role": "user", "content": "Write the notes, the plan and the summary."}]}


class ScriptedModel(GenericFakeChatModel):
    """LangChain's offline chat model, answering with ``messages`` in turn; binding tools changes nothing."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def model() -> Iterator[AIMessage]:
    """A model that writes the files one at a time, then says it is done."""
    usage = {"input_tokens": 800, "output_tokens": 30, "total_tokens": 830}
    for n, name in enumerate(FILES):
        call = tool_call(name="write", args={"path": name}, id=f"write-{n}")
        yield AIMessage(content=f"Writing {name}.", tool_calls=[call], usage_metadata=usage)
    yield AIMessage(content="All three files are written.", usage_metadata=usage)


@tool
async def write(path: str) -> str:
    """Write a file."""
    await asyncio.sleep(0.3)  # long enough for an operator to step in
    return f"wrote {path}"


def agent() -> Any:
    return create_agent(
        ScriptedModel(messages=model()), [write], middleware=[RunvisorMiddleware()], checkpointer=InMemorySaver()
    )


def said(messages: list[AnyMessage]) -> list[tuple[str, object]]:
    return [(m.type, m.content) for m in messages]


async def operator_command(nc: Client, run_id: str, cmd: str, note: str, *, check: bool = True) -> None:
    """What ``runvisor pause|resume RUN -- NOTE`` does: with ``check``, refused if it would change
    nothing (asked of the run's supervisor, which may take a moment for a run it has just met)."""
    command = Command(cmd=cmd, issuer=f"cli:{getpass.getuser()}", note=note)
    refused = refusal(run_id, await fetch_state(nc, run_id), command) if check else None
    if refused is not None:
        raise SystemExit(f"{refused}; nothing sent")
    await send_command(nc, run_id, command)
    print(f"operator: {cmd} sent to {run_id}")


async def pause_after_first_write(nc: Client, run_id: str) -> None:
    """An operator watching the run's steps (``runvisor steps RUN --follow``) pauses it once a write is under way."""
    async for step in run_steps(nc, run_id, follow=True):
        if step.event is not None and step.event.kind == "tool_call":
            await operator_command(nc, run_id, "pause", "let me check the notes first", check=False)
            return


async def main() -> int:
    # The same agent outside any run: runvisor passes through, and this is what it says.
    unpaused = await agent().ainvoke(TASK, {"configurable": {"thread_id": "unpaused"}})
    graph = agent()
    config: RunnableConfig = {"configurable": {"thread_id": "writer-1"}}
    async with embedded_server() as server:
        stop = asyncio.Event()
        watching = asyncio.create_task(SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2).run(stop))
        operator = await connect(server.endpoint("operator"), "example-operator")
        try:
            # The agent's first session: paused midway, its graph interrupted, it leaves the run.
            async with Run.start(goal="write three files", agent="writer", endpoint=server.endpoint("agent")) as run:
                run_id = run.run_id
                pausing = asyncio.create_task(pause_after_first_write(operator, run_id))
                result = await graph.ainvoke(TASK, config)
                await pausing
            interrupts = result.get("__interrupt__", [])
            print(f"agent: interrupted: {[i.value for i in interrupts]}")
            state = await eventually(lambda: _ended_or_paused(operator, run_id), what="the run's state")
            print(f"operator: the run is {state.status.value}, {len(result['messages'])} messages so far")
            await operator_command(operator, run_id, "resume", "notes look fine")

            # The agent's second session: the run and the graph go on from their checkpoints.
            async with Run.resume(run_id, agent="writer", endpoint=server.endpoint("agent")) as run:
                await run.obey()  # holds while the run is paused; here the operator resumed it already
                pending = (await graph.aget_state(config)).interrupts
                result = await graph.ainvoke(resume_command(pending), config)
            final = await eventually(lambda: _ended_or_paused(operator, run_id, ended=True), what="the run's end")
        finally:
            await operator.close()
            stop.set()
            await watching

    print(f"agent: {result['messages'][-1].content}; the run is {final.status.value}")
    same = said(result["messages"]) == said(unpaused["messages"])
    print(f"the same messages as without a pause: {same}")
    paused = any(is_pause(i) for i in interrupts) and state.status is RunStatus.PAUSED
    return 0 if paused and same and final.status is RunStatus.COMPLETED else 1


async def _ended_or_paused(nc: Client, run_id: str, *, ended: bool = False) -> Any:
    state = await fetch_state(nc, run_id)
    wanted = (RunStatus.COMPLETED, RunStatus.STOPPED) if ended else (RunStatus.PAUSED,)
    return state if state is not None and state.status in wanted else None


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
