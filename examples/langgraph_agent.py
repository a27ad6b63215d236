"""A LangChain agent (``create_agent``, on LangGraph) supervised by runvisor: it loops, and is stopped.

    .venv/bin/python examples/langgraph_agent.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then a LangChain v1 agent on LangChain's offline chat model, with runvisor attached as one
middleware (``pip install 'runvisor[langgraph]'``). The model keeps asking for the same two
searches, which answer "No matches found"; runvisor sees the loop from outside and stops the
run: ``ainvoke`` raises ``RunStopped`` with LOOP_DETECTED and the evidence. The script exits 0
when that is what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.messages.tool import tool_call
from langchain_core.runnables import Runnable
from langchain_core.tools import tool

from runvisor import Policy, Run, RunStopped, StopReason
from runvisor.actors.supervisor import SupervisorWorker
from runvisor.adapters.langgraph import RunvisorMiddleware
from runvisor.testing import embedded_server


class ScriptedModel(GenericFakeChatModel):
    """LangChain's offline chat model, answering with ``messages`` in turn; binding tools changes nothing."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def model_that_loops() -> Iterator[AIMessage]:
    """A model that keeps asking for the same two searches (each call with an id of its own)."""
    for n in itertools.count():
        yield AIMessage(
            content="Let me search once more.",
            tool_calls=[
                tool_call(name="search", args={"term": "JsonParser"}, id=f"call-{n}-src"),
                tool_call(name="search", args={"term": "JsonParser", "directory": "lib"}, id=f"call-{n}-lib"),
            ],
            usage_metadata={"input_tokens": 900, "output_tokens": 40, "total_tokens": 940},
            response_metadata={"model_name": "gpt-4o-mini"},  # so runvisor prices the tokens
        )


@tool
async def search(term: str, directory: str = "src") -> str:
    """Search the code for a term."""
    await asyncio.sleep(0.01)
    return f"No matches found for {term!r} in {directory}"


async def main() -> int:
    agent = create_agent(ScriptedModel(messages=model_that_loops()), [search], middleware=[RunvisorMiddleware()])
    async with embedded_server() as server:
        stop = asyncio.Event()
        supervisor = SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2, flush_s=0.1)
        watching = asyncio.create_task(supervisor.run(stop))
        try:
            async with Run.start(
                goal="find the JSON parser", policy=Policy(max_steps=500), agent="langgraph-example",
                endpoint=server.endpoint("agent"),
            ):  # fmt: skip
                # LangGraph's recursion limit would end the loop first (25 steps): runvisor is the one to stop it.
                await agent.ainvoke(
                    {"messages": [{"role": "user", "content": "Where is the JSON parser?"}]},
                    {"recursion_limit": 10_000},
                )
            print("the agent finished on its own: runvisor did not stop it")
            return 1
        except RunStopped as stopped:
            print(f"stopped: {stopped.reason.value}: {stopped.evidence.summary if stopped.evidence else ''}")
            return 0 if stopped.reason is StopReason.LOOP_DETECTED else 1
        finally:
            stop.set()
            await watching


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
