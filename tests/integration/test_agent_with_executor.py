"""The agent SDK and a real ToolExecutor together: a crash mid-call never runs the tool twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from runvisor.actors.agent import Run
from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from runvisor.actors.agent import Run

    async def main() -> None:
        async with Run.start(goal="charge the card", run_id=sys.argv[1], agent="doomed") as run:
            run.state["cart"] = ["book"]
            await run.call_tool(sys.argv[2], {"amount": 42}, timeout=60)

    asyncio.run(main())
    """
)


async def test_agent_killed_mid_call_resumes_and_the_real_executor_replays_instead_of_rerunning(
    server: EmbeddedServer, run_id: str
) -> None:
    # Given a real executor serving a non-repeatable tool that is slow to answer,
    tools = ToolRegistry()
    charges: list[int] = []
    release = asyncio.Event()
    tool_name = f"charge-{run_id[-8:]}"

    async def charge(amount: int) -> str:
        charges.append(amount)
        await release.wait()
        return f"charged {amount}"

    tools.add(charge, name=tool_name)
    stop = asyncio.Event()
    executor = ToolExecutor(tools, server.endpoint("tool"))
    served = asyncio.create_task(executor.run(stop))
    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, run_id, tool_name, env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    agent_nc = await connect(server.endpoint("agent"), "t-resumer")
    try:
        # when the agent process is SIGKILLed while the tool is running,
        await eventually(lambda: charges or proc.returncode is not None, timeout=20, what="the charge to start")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        release.set()  # the tool finishes; its answer goes nowhere, but the executor records it
        # then a new process resumes the run, learns what was in flight, and re-issues it safely.
        async with Run.resume(run_id, nc=agent_nc) as run:
            assert run.state == {"cart": ["book"]}
            assert run.open_intent is not None
            assert run.open_intent.tool == tool_name
            result = await run.retry_open_intent(timeout=20)
        assert result.ok
        assert result.replayed
        assert result.observation == "charged 42"
        assert charges == [42], "the card was charged exactly once"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stop.set()
        await served
        await agent_nc.close()
