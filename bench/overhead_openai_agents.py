"""What the OpenAI Agents SDK adapter adds to each model call and each tool call of an agent.

    python -m bench.overhead_openai_agents [--calls 200]

The same offline agent (the SDK's ``ScriptedModel`` asking for one tool call, then answering) runs
``calls`` times without the adapter and ``calls`` times with ``hooks=runvisor_hooks(run)`` and its
tool ``supervised``, in turn, inside one ``Run`` on an embedded server (no supervisor: the cost is
the agent's own). Each call is timed by the SDK's own hooks, around runvisor's where it is
attached: a model call from ``on_llm_start`` to the end of ``on_llm_end`` (the adapter obeys the
run's commands, then publishes an ``llm`` step priced from genai-prices), a tool call from
``on_tool_start`` to the end of ``on_tool_end`` (a supervised call publishes its ``tool_call`` and
``tool_result`` and checkpoints its intent before the tool runs and after: two KV writes, the
step acks awaited first). A whole agent run (two model calls, one tool call) is timed too.
A third agent, attached but with its tool left as it is, times a tool call the hooks hold open
(``tool_call_held``: the same steps and writes, plus a task of its own). Prints p50 milliseconds
each way, and the difference.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from agents import (
    Agent,
    ModelResponse,
    RunContextWrapper,
    RunHooks,
    Runner,
    Tool,
    TResponseInputItem,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from agents.run_context import AgentHookContext
from agents.testing import ScriptedModel, assistant_message, function_call

from bench._overhead import agent_connection, main, overheads
from runvisor.actors.agent import Run
from runvisor.adapters.openai_agents import runvisor_hooks, supervised


@function_tool
async def search(term: str) -> str:
    """Search the code base."""
    return f"No matches found for {term!r}"


def _agent(tool_supervised: bool) -> Agent[Any]:
    model = ScriptedModel(
        [[function_call("search", {"term": "JsonParser"}, call_id="call_0")], [assistant_message("not found")]],
        default_usage=Usage(requests=1, input_tokens=900, output_tokens=40, total_tokens=940),
    )
    return Agent(name="bench", model=model, tools=[supervised(search) if tool_supervised else search])


class _Timed(RunHooks[Any]):
    """Times each model call and tool call around ``inner`` (runvisor's hooks, or the SDK's no-op ones)."""

    def __init__(self, inner: RunHooks[Any], model_ms: list[float], tool_ms: list[float]) -> None:
        self.inner, self.model_ms, self.tool_ms = inner, model_ms, tool_ms
        self._llm_started = 0.0
        self._tool_started = 0.0

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        self._llm_started = time.perf_counter()
        await self.inner.on_llm_start(context, agent, system_prompt, input_items)

    async def on_llm_end(self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse) -> None:
        await self.inner.on_llm_end(context, agent, response)
        self.model_ms.append((time.perf_counter() - self._llm_started) * 1e3)

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool) -> None:
        self._tool_started = time.perf_counter()  # one tool call at a time in this agent
        await self.inner.on_tool_start(context, agent, tool)

    async def on_tool_end(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object) -> None:
        await self.inner.on_tool_end(context, agent, tool, result)
        self.tool_ms.append((time.perf_counter() - self._tool_started) * 1e3)

    async def on_agent_end(self, context: AgentHookContext[Any], agent: Agent[Any], output: Any) -> None:
        await self.inner.on_agent_end(context, agent, output)


class _Timings:
    """Milliseconds of each model call, each tool call and each whole run of one agent."""

    def __init__(self) -> None:
        self.model_ms: list[float] = []
        self.tool_ms: list[float] = []
        self.run_ms: list[float] = []

    async def run(self, agent: Agent[Any], hooks: RunHooks[Any]) -> None:
        started = time.perf_counter()
        await Runner.run(agent, "Where is JsonParser?", hooks=_Timed(hooks, self.model_ms, self.tool_ms))
        self.run_ms.append((time.perf_counter() - started) * 1e3)


async def measure(calls: int = 200) -> dict[str, float]:
    """p50 milliseconds per model call and per tool call, without and with the adapter, and what it adds."""
    set_tracing_disabled(True)  # the SDK would send traces to OpenAI
    plain, attached, held = _Timings(), _Timings(), _Timings()
    async with agent_connection("openai-agents") as agent_nc, Run.start(goal="bench", nc=agent_nc) as run:
        # The scripted model has no name of its own: given, so each llm step is priced.
        hooks = runvisor_hooks(run, model="gpt-4o-mini")
        for _ in range(calls):  # interleaved, so a busy machine slows both alike
            await plain.run(_agent(tool_supervised=False), RunHooks[Any]())
            await attached.run(_agent(tool_supervised=True), hooks)
            await held.run(_agent(tool_supervised=False), hooks)
    result = overheads(calls, plain, attached)
    result["tool_call_held_p50_ms"] = statistics.median(held.tool_ms)
    result["tool_call_held_overhead_ms"] = result["tool_call_held_p50_ms"] - result["tool_call_p50_ms"]
    return {key: round(value, 4) for key, value in result.items()}


if __name__ == "__main__":
    main(measure, __doc__)
