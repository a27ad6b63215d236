"""An OpenAI Agents SDK agent supervised by runvisor in one line: it loops, and is stopped.

    .venv/bin/python examples/openai_agents_agent.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then an agent of the OpenAI Agents SDK (``pip install 'runvisor[openai-agents]'``) whose model is
the SDK's own offline test model, scripted to ask for the same code search every turn. Every
search answers "No matches found"; runvisor sees the loop from outside and stops the run with
LOOP_DETECTED and the evidence, which ``Runner.run`` raises into the agent's code as
``RunStopped``. The script exits 0 when that is what happened.
"""

from __future__ import annotations

import asyncio
import sys

from agents import Agent, MaxTurnsExceeded, Runner, Usage, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, function_call

from runvisor import Policy, Run, RunStopped, StopReason
from runvisor.actors.supervisor import SupervisorWorker
from runvisor.adapters.openai_agents import runvisor_hooks, supervised
from runvisor.testing import embedded_server


@supervised  # optional: each call is then a supervised call that a kill can cancel
@function_tool
async def search(term: str) -> str:
    """Search the code base for a term."""
    await asyncio.sleep(0.01)
    return f"No matches found for {term!r} in src"


#: Enough turns for a supervisor to see the loop many times over; bounded, as each turn of the SDK
#: costs more than the last (the conversation grows): 200 take about 8 s when nothing stops them.
TURNS = 200


def looping_model(turns: int = TURNS) -> ScriptedModel:
    """The SDK's offline test model, asking for the same search every turn (no network)."""
    return ScriptedModel(
        ([function_call("search", {"term": "JsonParser"}, call_id=f"call_{turn}")] for turn in range(turns)),
        default_usage=Usage(requests=1, input_tokens=900, output_tokens=40, total_tokens=940),
    )


async def main() -> int:
    set_tracing_disabled(True)  # the SDK would send traces to OpenAI
    agent = Agent(name="coder", instructions="Find the JSON parser.", model=looping_model(), tools=[search])
    async with embedded_server() as server:
        stop = asyncio.Event()
        supervisor = SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2, flush_s=0.1)
        watching = asyncio.create_task(supervisor.run(stop))
        try:
            async with Run.start(
                goal="find the JSON parser", policy=Policy(max_steps=500), agent="openai-agents-example",
                endpoint=server.endpoint("agent"),
            ) as run:  # fmt: skip
                # The one line: the scripted model has no name of its own, so it is given for pricing.
                hooks = runvisor_hooks(run, model="gpt-4o-mini")
                await Runner.run(agent, "Where is the JSON parser?", hooks=hooks, max_turns=TURNS)
            print("the agent finished on its own: runvisor did not stop it")
            return 1
        except MaxTurnsExceeded:
            print(f"the agent ran all {TURNS} turns: runvisor did not stop it")
            return 1
        except RunStopped as stopped:
            print(f"stopped: {stopped.reason.value}: {stopped.evidence.summary if stopped.evidence else ''}")
            return 0 if stopped.reason is StopReason.LOOP_DETECTED else 1
        finally:
            stop.set()
            await watching


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
