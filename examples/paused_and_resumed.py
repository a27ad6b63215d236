"""A LangChain agent that an operator pauses and resumes: a new process finishes it with the state it had.

    .venv/bin/python examples/paused_and_resumed.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then a LangChain v1 agent (``create_agent``, runvisor attached as one middleware) that writes
three files, one tool call at a time. As the first file is written, an operator pauses the run,
as ``runvisor pause RUN`` does. The agent's graph is interrupted at its next step (LangGraph's
``interrupt``: its checkpointer saves its state in a sqlite file) and its process leaves the run,
which stays PAUSED. The operator resumes it (``runvisor resume RUN``); a second process (this
script again, with ``--continue RUN DB``) picks the run up with ``Run.resume`` and goes on from the
graph's checkpoint in the same file. The script exits 0 when the agent was interrupted, the run was
PAUSED meanwhile, and it then completed with the same messages as the same agent run without a pause.

The graph's checkpointer is ``AsyncSqliteSaver`` (``langgraph-checkpoint-sqlite``, which
``runvisor[langgraph]`` installs; ``-postgres`` would do as well); ``InMemorySaver`` lives only as long as its process.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage
from langchain_core.messages.tool import tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
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
CONFIG: RunnableConfig = {"configurable": {"thread_id": "writer-1"}}
DB = "graph.sqlite"


class ScriptedModel(BaseChatModel):
    """An offline chat model that writes the files one at a time, then says it is done.

    Like a model API it keeps no state: it answers the turn the conversation it is sent has reached,
    so the second process's agent goes on where the first one stopped. Binding tools changes nothing.
    """

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        usage = {"input_tokens": 800, "output_tokens": 30, "total_tokens": 830}
        if turn < len(FILES):
            call = tool_call(name="write", args={"path": FILES[turn]}, id=f"write-{turn}")
            reply = AIMessage(content=f"Writing {FILES[turn]}.", tool_calls=[call], usage_metadata=usage)
        else:
            reply = AIMessage(content="All three files are written.", usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
async def write(path: str) -> str:
    """Write a file."""
    await asyncio.sleep(0.3)  # long enough for an operator to step in
    return f"wrote {path}"


def agent(checkpointer: BaseCheckpointSaver[Any] | None) -> Any:
    return create_agent(ScriptedModel(), [write], middleware=[RunvisorMiddleware()], checkpointer=checkpointer)


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
    unpaused = await agent(None).ainvoke(TASK)
    # The graph's checkpointer: a sqlite file in the embedded server's folder, removed with it.
    async with embedded_server() as server, AsyncSqliteSaver.from_conn_string(str(server.home / DB)) as saver:
        graph = agent(saver)
        stop = asyncio.Event()
        watching = asyncio.create_task(SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2).run(stop))
        operator = await connect(server.endpoint("operator"), "example-operator")
        try:
            # The agent's first session: paused midway, its graph interrupted, it leaves the run.
            async with Run.start(goal="write three files", agent="writer", endpoint=server.endpoint("agent")) as run:
                run_id = run.run_id
                pausing = asyncio.create_task(pause_after_first_write(operator, run_id))
                result = await graph.ainvoke(TASK, CONFIG)
                await pausing
            interrupts = result.get("__interrupt__", [])
            print(f"agent: interrupted: {[i.value for i in interrupts]}")
            state = await eventually(lambda: _ended_or_paused(operator, run_id), what="the run's state")
            print(f"operator: the run is {state.status.value}, {len(result['messages'])} messages so far")
            await operator_command(operator, run_id, "resume", "notes look fine")

            # The agent's second session, in a new process (as a restarted agent would be): told only the
            # server, the run and the graph's sqlite file, it goes on from the two checkpoints.
            env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
            second = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--continue", run_id, str(server.home / DB), env=env
            )
            continued = await second.wait() == 0
            final = await eventually(lambda: _ended_or_paused(operator, run_id, ended=True), what="the run's end")
            result = (await graph.aget_state(CONFIG)).values  # the graph's state, as the second process left it
        finally:
            await operator.close()
            stop.set()
            await watching

    print(f"agent: {result['messages'][-1].content}; the run is {final.status.value}")
    same = said(result["messages"]) == said(unpaused["messages"])
    print(f"the same messages as without a pause: {same}")
    paused = any(is_pause(i) for i in interrupts) and state.status is RunStatus.PAUSED
    return 0 if paused and continued and same and final.status is RunStatus.COMPLETED else 1


async def _ended_or_paused(nc: Client, run_id: str, *, ended: bool = False) -> Any:
    state = await fetch_state(nc, run_id)
    wanted = (RunStatus.COMPLETED, RunStatus.STOPPED) if ended else (RunStatus.PAUSED,)
    return state if state is not None and state.status in wanted else None


async def go_on(run_id: str, database: str) -> None:
    """The agent's second session: the run and the graph go on from their checkpoints."""
    async with AsyncSqliteSaver.from_conn_string(database) as saver, Run.resume(run_id, agent="writer") as run:
        await run.obey()  # holds while the run is paused; here the operator resumed it already
        graph = agent(saver)
        pending = (await graph.aget_state(CONFIG)).interrupts
        await graph.ainvoke(resume_command(pending), CONFIG)
    print(f"agent (a new process, {os.getpid()}): continued {run_id} from the graph's checkpoint in {database}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--continue"]:
        asyncio.run(go_on(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    sys.exit(asyncio.run(main()))
