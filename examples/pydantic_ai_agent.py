"""A PydanticAI agent supervised by runvisor with one capability: it loops, and is stopped.

    .venv/bin/python examples/pydantic_ai_agent.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then a PydanticAI agent on an offline ``FunctionModel`` that keeps asking its search tool for a
class that does not exist. ``runvisor_capability()`` reports each model response (tokens, cost
from the model's name) and runs each tool call as a supervised call under PydanticAI's own tool
call id. Every search answers "No matches found"; runvisor sees the loop from outside and stops
the run: ``RunStopped`` comes out of ``agent.run()`` with LOOP_DETECTED and the evidence. The
script exits 0 when that is what happened.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from runvisor import Policy, Run, RunStopped, StopReason
from runvisor.actors.supervisor import SupervisorWorker
from runvisor.adapters.pydantic_ai import runvisor_capability
from runvisor.testing import embedded_server


def stubborn_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A fake model (no network) that asks for the same search until it has asked 1000 times."""
    asked = sum(isinstance(message, ModelResponse) for message in messages)
    usage = RequestUsage(input_tokens=900 + 50 * asked, output_tokens=40)
    if asked >= 1000:
        return ModelResponse(parts=[TextPart("I could not find it.")], usage=usage)
    search = ToolCallPart("search", {"term": "JsonParser", "directory": "src"}, tool_call_id=f"call_{asked}")
    return ModelResponse(parts=[search], usage=usage)


agent = Agent(FunctionModel(stubborn_model, model_name="gpt-4o-mini"), capabilities=[runvisor_capability()])


@agent.tool_plain
async def search(term: str, directory: str) -> str:
    """Search the code for a term."""
    await asyncio.sleep(0.01)
    return f"No matches found for {term!r} in {directory}"


async def main() -> int:
    async with embedded_server() as server:
        stop = asyncio.Event()
        supervisor = SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2, flush_s=0.1)
        watching = asyncio.create_task(supervisor.run(stop))
        try:
            async with Run.start(
                goal="find the JSON parser", policy=Policy(max_steps=5000), agent="pydantic-ai-example",
                endpoint=server.endpoint("agent"),
            ):  # fmt: skip
                result = await agent.run("Where is the JsonParser class defined?")
            print(f"the agent finished on its own ({result.output!r}): runvisor did not stop it")
            return 1
        except RunStopped as stopped:
            print(f"stopped: {stopped.reason.value}: {stopped.evidence.summary if stopped.evidence else ''}")
            return 0 if stopped.reason is StopReason.LOOP_DETECTED else 1
        finally:
            stop.set()
            await watching


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
