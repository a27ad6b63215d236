"""Faults with real processes on a real server (issue #15): an executor SIGKILLed mid-call, several
supervisor workers with one SIGKILLed under load, nats-server SIGKILLed under agents' loops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.client import Client

from runvisor import Run
from runvisor.actors.endpoint import Role
from runvisor.actors.server import EmbeddedServer
from runvisor.protocols.messages import ToolResult
from runvisor.protocols.reasons import StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

TOOLS = textwrap.dedent(
    """
    import asyncio, pathlib
    from runvisor import ToolPolicy, ToolRegistry

    registry = ToolRegistry()
    ONCE = ToolPolicy(idempotent=False, max_attempts=1)

    def _mark(name: str) -> int:
        path = pathlib.Path(name)
        with path.open("a") as f:
            f.write("ran\\n")
        return len(path.read_text().splitlines())

    @registry.tool(name="charge", policy=ONCE)
    async def charge(amount: int) -> str:
        _mark("charges")
        await asyncio.sleep(3600)  # the executor dies here
        return f"charged {amount}"

    @registry.tool(name="reserve")
    async def reserve(seat: str) -> str:
        if _mark("reservations") == 1:
            await asyncio.sleep(3600)  # the first executor dies here; a repeat is harmless
        return f"reserved {seat}"
    """
)


@asynccontextmanager
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes started in the block: SIGTERMed (then killed) at its end."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def spawn(server: EmbeddedServer, role: Role, *args: str, cwd: Path | None = None) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "NATS_URL": server.url,
        f"RV_{role.upper()}_PASSWORD": server.credentials.passwords[role],
        "RUNVISOR_LOG": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.timeout(90)
async def test_an_executor_killed_mid_call_never_runs_a_call_twice_unless_it_is_safe_to(
    server: EmbeddedServer, agent_nc: Client, run_id: str, tmp_path: Path
) -> None:
    (tmp_path / "faulty_tools.py").write_text(TOOLS)
    async with processes() as procs:
        procs.append(await spawn(server, "tool", "tools", "faulty_tools:registry", cwd=tmp_path))
        async with Run.start(goal="book and pay", run_id=run_id, nc=agent_nc) as run:
            # Given calls in flight on an executor, one that must not run twice and one that may,
            charge = asyncio.create_task(run.call_tool("charge", {"amount": 42}, call_id="pay-1", timeout=2))
            reserve = asyncio.create_task(run.call_tool("reserve", {"seat": "4A"}, call_id="seat-1", timeout=2))
            await eventually(
                lambda: lines(tmp_path / "charges") and lines(tmp_path / "reservations"), timeout=20,
                what="both calls running",
            )  # fmt: skip
            # when the executor is killed with SIGKILL mid-call,
            procs[0].send_signal(signal.SIGKILL)
            await procs[0].wait()
            lost = await asyncio.gather(charge, reserve)
            # then the agent learns each call failed, and its run goes on;
            assert [(r.ok, r.error_type) for r in lost] == [(False, "TimeoutError")] * 2
            # when a new executor serves the tools and the agent asks again, under the same call ids,
            procs.append(await spawn(server, "tool", "tools", "faulty_tools:registry", cwd=tmp_path))

            async def settled(tool: str, args: dict[str, object], call_id: str) -> ToolResult | None:
                # The dead executor's claim holds for the call's timeout plus a grace: the new one waits it out.
                result = await run.call_tool(tool, args, call_id=call_id, timeout=10)
                return None if result.error_type in ("InProgress", "NoResponders") else result

            charged = await eventually(lambda: settled("charge", {"amount": 42}, "pay-1"), timeout=30)
            reserved = await eventually(lambda: settled("reserve", {"seat": "4A"}, "seat-1"), timeout=30)
            assert run.open_intents == ()
    # then the charge, which may have happened, is not made again: the agent is told it is in doubt;
    assert (charged.ok, charged.error_type, charged.stop_reason) == (False, "InDoubt", StopReason.TOOL_FAILURE)
    assert "may have taken effect" in (charged.error or "")
    assert lines(tmp_path / "charges") == 1, "the card was charged once"
    # and the reservation, safe to repeat, is made again by the new executor.
    assert (reserved.ok, reserved.observation) == (True, "reserved 4A")
    assert lines(tmp_path / "reservations") == 2
