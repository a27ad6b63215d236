"""What the LangGraph adapter adds to each model call and each tool call of a LangChain agent.

    python -m bench.overhead_langgraph [--calls 200]

The same offline agent (``create_agent`` on LangChain's fake chat model, which asks for one
tool call, then answers) runs ``calls`` times without the adapter and ``calls`` times with
``RunvisorMiddleware()``, in turn, inside one ``Run`` on an embedded server (no supervisor: the
cost is the agent's own). A timing middleware, outermost, times each model call from the first
``before_model`` hook to the last ``after_model`` hook (with the adapter: its two nodes, which
obey the run's commands and publish the ``llm`` step), and each tool call around the whole
``wrap_tool_call`` chain (with the adapter: the ``tool_call`` and ``tool_result`` steps and two
checkpoint writes, the step acks awaited first). A whole ``ainvoke`` (two model calls, one tool
call) is timed too. Prints p50 milliseconds each way, and the difference.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.messages.tool import tool_call
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.runtime import Runtime
from langgraph.types import Command

from bench._overhead import agent_connection, main, overheads
from runvisor.actors.agent import Run
from runvisor.adapters.langgraph import RunvisorMiddleware


class _ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def _script() -> Iterator[AIMessage]:
    usage = {"input_tokens": 900, "output_tokens": 40, "total_tokens": 940}
    meta = {"model_name": "gpt-4o-mini"}
    for n in itertools.count():
        call = tool_call(name="search", args={"term": "JsonParser"}, id=f"call_{n}")
        yield AIMessage(content="", tool_calls=[call], usage_metadata=usage, response_metadata=meta)
        yield AIMessage(content="not found", usage_metadata=usage, response_metadata=meta)


@tool
async def search(term: str) -> str:
    """Search the code for a term."""
    return f"No matches found for {term!r}"


class _Timings(AgentMiddleware[AgentState[Any], Any, Any]):
    """Milliseconds of each model call and each tool call (outermost middleware), and of each ``ainvoke``."""

    def __init__(self) -> None:
        super().__init__()
        self.model_ms: list[float] = []
        self.tool_ms: list[float] = []
        self.run_ms: list[float] = []
        self._model_started = 0.0

    async def abefore_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        self._model_started = time.perf_counter()
        return None

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        self.model_ms.append((time.perf_counter() - self._model_started) * 1e3)
        return None

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self.tool_ms.append((time.perf_counter() - started) * 1e3)

    async def run(self, agent: Any) -> None:
        started = time.perf_counter()
        await agent.ainvoke({"messages": [{"role": "user", "content": "Where is JsonParser?"}]})
        self.run_ms.append((time.perf_counter() - started) * 1e3)


def _agent(timings: _Timings, *, supervised: bool) -> Any:
    middleware: list[AgentMiddleware[AgentState[Any], Any, Any]] = [timings]
    if supervised:
        middleware.append(RunvisorMiddleware())
    return create_agent(_ScriptedModel(messages=_script()), [search], middleware=middleware)


async def measure(calls: int = 200) -> dict[str, float]:
    """p50 milliseconds per model call and per tool call, without and with the adapter, and what it adds."""
    plain, supervised = _Timings(), _Timings()
    plain_agent, supervised_agent = _agent(plain, supervised=False), _agent(supervised, supervised=True)
    async with agent_connection("langgraph") as agent_nc, Run.start(goal="bench", nc=agent_nc):
        for _ in range(calls):  # interleaved, so a busy machine slows both alike
            await plain.run(plain_agent)
            await supervised.run(supervised_agent)
    return overheads(calls, plain, supervised)


if __name__ == "__main__":
    main(measure, __doc__)
