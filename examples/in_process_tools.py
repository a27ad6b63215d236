"""An agent whose tools run in its own process, supervised by runvisor: it loops, and is stopped.

    .venv/bin/python examples/in_process_tools.py

No server to set up and no network: it starts an embedded nats-server and a supervisor worker,
then an agent that looks for a class that does not exist, two searches at a time, with an
in-process tool (``@supervised_tool``), the way a framework's agent calls its tools. Every
search answers "No matches found"; runvisor sees the loop from outside and stops the run with
LOOP_DETECTED and the evidence. The script exits 0 when that is what happened.
"""

from __future__ import annotations

import asyncio
import sys

from runvisor import Policy, Run, RunStopped, StopReason, supervised_tool
from runvisor.actors.supervisor import SupervisorWorker
from runvisor.testing import embedded_server


@supervised_tool
async def search(term: str, directory: str = "src") -> str:
    """A code search that finds nothing: the agent keeps asking."""
    await asyncio.sleep(0.01)
    return f"No matches found for {term!r} in {directory}"


async def agent(run: Run) -> None:
    """A model that keeps asking for the same two searches (the model is a fake: no network)."""
    for _ in range(1000):  # the supervisor, starting alongside, reads the run from its first step
        await run.llm(model="gpt-4o-mini", tokens_in=900, tokens_out=40)  # cost from the price table
        await asyncio.gather(search("JsonParser"), search("JsonParser", directory="lib"))


async def main() -> int:
    async with embedded_server() as server:
        stop = asyncio.Event()
        supervisor = SupervisorWorker(server.endpoint("supervisor"), tick_s=0.2, flush_s=0.1)
        watching = asyncio.create_task(supervisor.run(stop))
        try:
            async with Run.start(
                goal="find the JSON parser", policy=Policy(max_steps=500), agent="example-agent",
                endpoint=server.endpoint("agent"),
            ) as run:  # fmt: skip
                await agent(run)
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
