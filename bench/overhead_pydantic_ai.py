"""What the PydanticAI adapter adds to each model call and each tool call of an agent.

    python -m bench.overhead_pydantic_ai [--calls 200]

The same offline agent (a ``FunctionModel`` that asks for one tool call, then answers) runs
``calls`` times without the adapter and ``calls`` times with ``runvisor_capability()``, in turn,
inside one ``Run`` on an embedded server (no supervisor: the cost is the agent's own). Each step is timed
as PydanticAI runs it (``agent.iter``, one ``next()`` per node): a ``ModelRequestNode`` is a model
call with its hooks, a ``CallToolsNode`` a tool call with its hooks. With the adapter a model
call also obeys the run's commands and publishes an ``llm`` step; a tool call publishes its
``tool_call`` and ``tool_result`` and checkpoints its intent before it runs and after (two KV
writes, the step acks awaited first). A whole agent run (two model calls, one tool call) is timed
too: it also holds the ``message`` step that names PydanticAI's run id. Prints p50 milliseconds
each way, and the difference.
"""

from __future__ import annotations

import time

from pydantic_ai import Agent, CallToolsNode, ModelRequestNode
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from pydantic_graph import End

from bench._overhead import agent_connection, main, overheads
from runvisor.actors.agent import Run
from runvisor.adapters.pydantic_ai import runvisor_capability


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    usage = RequestUsage(input_tokens=900, output_tokens=40)
    if any(isinstance(message, ModelResponse) for message in messages):
        return ModelResponse(parts=[TextPart("not found")], usage=usage)
    return ModelResponse(parts=[ToolCallPart("search", {"term": "JsonParser"}, tool_call_id="call_0")], usage=usage)


def _agent(capabilities: list[AbstractCapability[None]]) -> Agent[None, str]:
    agent = Agent(FunctionModel(_model, model_name="gpt-4o-mini"), capabilities=capabilities)

    @agent.tool_plain
    async def search(term: str) -> str:
        return f"No matches found for {term!r}"

    return agent


class _Timings:
    """Milliseconds of each model call, each tool call and each whole run of one agent."""

    def __init__(self) -> None:
        self.model_ms: list[float] = []
        self.tool_ms: list[float] = []
        self.run_ms: list[float] = []

    async def run(self, agent: Agent[None, str]) -> None:
        run_started = time.perf_counter()
        async with agent.iter("Where is JsonParser?") as agent_run:
            node = agent_run.next_node
            while not isinstance(node, End):
                started = time.perf_counter()
                after = await agent_run.next(node)
                elapsed = (time.perf_counter() - started) * 1e3
                if isinstance(node, ModelRequestNode):
                    self.model_ms.append(elapsed)
                elif isinstance(node, CallToolsNode) and isinstance(after, ModelRequestNode):
                    self.tool_ms.append(elapsed)  # the node that ran the tool (the last one only takes the output)
                node = after
        self.run_ms.append((time.perf_counter() - run_started) * 1e3)


async def measure(calls: int = 200) -> dict[str, float]:
    """p50 milliseconds per model call and per tool call, without and with the adapter, and what it adds."""
    plain, supervised = _Timings(), _Timings()
    plain_agent, supervised_agent = _agent([]), _agent([runvisor_capability()])
    async with agent_connection("pydantic-ai") as agent_nc, Run.start(goal="bench", nc=agent_nc):
        for _ in range(calls):  # interleaved, so a busy machine slows both alike
            await plain.run(plain_agent)
            await supervised.run(supervised_agent)
    return overheads(calls, plain, supervised)


if __name__ == "__main__":
    main(measure, __doc__)
