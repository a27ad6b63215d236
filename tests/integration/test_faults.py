"""Faults with real processes on a real server (issue #15): an executor SIGKILLed mid-call, several
supervisor workers with one SIGKILLed under load, nats-server SIGKILLed under agents' loops."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from test_supervisor import _owners as partition_owners
from test_supervisor import find_file_loop, publish

from runvisor import Run, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Role
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.streams.control import last_stored_command
from runvisor.actors.supervisor._decide import Decisions
from runvisor.actors.supervisor.detection.engine import Engine
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, Evidence, RunState, StepEvent, ToolResult, Verdict
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


# --- several supervisor workers, one SIGKILLed under load ----------------------------------


def healthy_round(run_id: str, first_seq: int, k: int) -> list[StepEvent]:
    """One step of an agent making progress: it reads a new file each time and learns something new."""
    call, seq = f"c{first_seq}", first_seq
    return [
        StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=900, tokens_out=40, cost_usd=0.001),
        StepEvent(
            run_id=run_id,
            seq=seq + 1,
            ts=1e9 + seq + 1,
            kind="tool_call",
            tool="read_file",
            call_id=call,
            args={"path": f"src/module_{k}.py"},
        ),
        StepEvent(
            run_id=run_id,
            seq=seq + 2,
            ts=1e9 + seq + 2,
            kind="tool_result",
            tool="read_file",
            call_id=call,
            observation=f"class Parser{k}:\n    def parse_{k}(self, text): return text.split({k!r})",
            ok=True,
        ),
    ]


class ControlCounts:
    """Every command published on ``rv.ctl.>``, as a core subscriber (an agent, an operator) receives it."""

    def __init__(self) -> None:
        self.stops: collections.Counter[str] = collections.Counter()
        self.other: list[Command] = []

    async def on_ctl(self, msg: Msg) -> None:
        command = codec.decode_command(msg.data)
        if command.cmd == "stop":
            self.stops[msg.subject.rsplit(".", 1)[-1]] += 1
        else:
            self.other.append(command)


@pytest.mark.timeout(120)
async def test_a_worker_killed_under_load_loses_no_loop_and_no_run_gets_two_stops(
    fresh_server: EmbeddedServer,
) -> None:
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin, lease_ttl_s=2.0)
    seen = ControlCounts()
    await admin.subscribe(subjects.CTL_ALL, cb=seen.on_ctl)
    try:
        async with processes() as procs:
            workers = {
                wid: await spawn(fresh_server, "supervisor", "supervisor", "--id", wid) for wid in ("w1", "w2", "w3")
            }
            procs.extend(workers.values())

            # Given three workers sharing the partitions,
            async def shared() -> dict[int, str] | None:
                owners = await partition_owners(admin)
                counts = collections.Counter(owners.values())
                return owners if len(owners) == subjects.DEFAULT_PARTITIONS and max(counts.values()) <= 11 else None

            owners = await eventually(shared, timeout=30, what="32 partitions shared by 3 workers")
            victim = owners[0]
            loops = [f"loop-{i}" for i in range(24)]
            healthy = [f"busy-{i}" for i in range(24)]
            assert any(owners[subjects.partition_of(r)] == victim for r in loops), "the victim judges some loops"
            # and agents under way: half of them looping, none repeated enough yet to be stopped,
            for k in range(8):
                if k == 2:  # when the worker judging a third of them is killed with SIGKILL,
                    workers[victim].send_signal(signal.SIGKILL)
                for run in loops:
                    await publish(admin, find_file_loop(run, 1 + 3 * k, repeats=1))
                for run in healthy:
                    await publish(admin, iter(healthy_round(run, 1 + 3 * k, k)))
                await asyncio.sleep(0.3)
            await workers[victim].wait()

            # then every loop is still stopped, the victim's ones by the workers that took its partitions,
            await eventually(lambda: set(seen.stops) >= set(loops), timeout=30, what="a stop for every loop")
            await asyncio.sleep(2.0)  # time for a second stop, if one were coming
    finally:
        await admin.close()
    # once each, and no healthy run is stopped.
    assert {run: n for run, n in seen.stops.items() if n != 1} == {}
    assert set(seen.stops) == set(loops)
    assert [c for c in seen.other if c.cmd == "kill"] == []


# --- a stop whose acknowledgement is lost ------------------------------------------------


class AckLost:
    """A worker's JetStream context whose first publish is stored and delivered, but whose
    acknowledgement never comes back (as in a stream leader's failover)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.lost = 0

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        ack = await self._js.publish(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise NatsTimeoutError
        return ack

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


async def test_a_stop_whose_acknowledgement_is_lost_reaches_the_agent_once(
    server: EmbeddedServer, operator: Client, run_id: str
) -> None:
    seen = ControlCounts()
    await operator.subscribe(subjects.ctl(run_id), cb=seen.on_ctl)
    await operator.flush()
    nc = await connect(server.endpoint("supervisor"), "t-supervisor")
    try:
        js = AckLost(nc.jetstream())

        async def no_state(run_id: str) -> RunState | None:
            return None

        decisions = Decisions(
            nc, cast(JetStreamContext, js), Engine(), owns=lambda run: True, stored_state=no_state,
            stopping=asyncio.Event(), clock=time.time, worker_id="w-lost-ack",
        )  # fmt: skip
        evidence = Evidence(summary="`find_file JsonParser src/` x3 in a row", seqs=(2, 5, 8))
        # When a stop is stored and delivered but its acknowledgement is lost,
        await decisions.decide(Verdict(run_id=run_id, reason=StopReason.LOOP_DETECTED, severity="stop",
                                       evidence=evidence, at_seq=9))  # fmt: skip
        await nc.flush()
        await asyncio.sleep(0.5)  # a second copy, if one were sent, has arrived by now
    finally:
        await nc.close()
    # then the worker learns from the stream that it was stored, and the agent receives it once.
    assert js.lost == 1
    assert seen.stops == {run_id: 1}
    assert decisions.commands_sent == 1


# --- nats-server SIGKILLed under agents' loops ----------------------------------------------


async def looping_agent(server: EmbeddedServer, run_id: str, started: asyncio.Event) -> StopReason | str:
    """An agent searching again and again for what does not exist, every 0.3 s, until it is stopped."""
    try:
        async with Run.start(goal="find the parser", run_id=run_id, endpoint=server.endpoint("agent")) as run:
            for i in range(200):
                await run.llm(tokens_in=900, tokens_out=40, cost_usd=0.001)
                async with run.tool("find_file", {"command": "find_file JsonParser src/"}) as call:
                    call.result = 'No matches found for "JsonParser" in /repo/src'
                if i == 1:
                    started.set()  # two repeats: not yet a loop
                await asyncio.sleep(0.3)
    except RunStopped as stopped:
        return stopped.reason
    return "never stopped"


@pytest.mark.timeout(120)
async def test_loops_around_a_server_killed_and_restarted_are_all_stopped_once(
    fresh_server: EmbeddedServer, run_id: str
) -> None:
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin)
    await admin.close()
    seen = ControlCounts()
    async with processes() as procs:
        procs.append(await spawn(fresh_server, "supervisor", "supervisor", "--id", "w1"))
        # Given agents whose loops are under way (two repeats each, below the threshold),
        agents = [f"{run_id}-a{i}" for i in range(10)]
        begun = [asyncio.Event() for _ in agents]
        running = [asyncio.create_task(looping_agent(fresh_server, a, e)) for a, e in zip(agents, begun, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in begun)), 60)
        # and whole loops that arrived just before the server went down (no time to judge them),
        watcher = await connect(fresh_server.endpoint("admin"), "t-watcher")
        await watcher.subscribe(subjects.CTL_ALL, cb=seen.on_ctl)
        raw = [f"{run_id}-r{i}" for i in range(10)]
        for run in raw:
            await publish(watcher, find_file_loop(run, 1, repeats=6))
        # when nats-server is killed with SIGKILL and comes back 4 s later on the same store,
        await fresh_server.kill()
        await asyncio.sleep(4.0)
        await fresh_server.start()
        # then every agent is stopped for its loop,
        reasons = await asyncio.wait_for(asyncio.gather(*running), 60)
        assert reasons == [StopReason.LOOP_DETECTED] * len(agents)
        # every loop sent before the kill gets its stop too,
        reader = await connect(fresh_server.endpoint("admin"), "t-reader")

        async def stopped(run: str) -> bool:
            stored = await last_stored_command(reader.jetstream(), run)
            return stored is not None and (stored.command.cmd, stored.command.reason) == (
                "stop", StopReason.LOOP_DETECTED
            )  # fmt: skip

        async def all_stopped() -> bool:
            return all([await stopped(run) for run in [*agents, *raw]])

        try:
            await eventually(all_stopped, timeout=30, what="a stop stored for every loop")
        finally:
            await reader.close()
        await asyncio.sleep(1.0)
        await watcher.close()
    # and no one watching rv.ctl ever sees two stops for a run (a core subscriber misses what is
    # published while it reconnects: agents catch up from RV_CONTROL, see test_agent).
    assert [run for run, n in seen.stops.items() if n > 1] == []


@pytest.mark.timeout(90)
async def test_a_worker_whose_server_is_gone_stops_at_once_on_sigterm_without_a_traceback(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str, tmp_path: Path
) -> None:
    # Given a worker holding every partition, with a run to write,
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ, "NATS_URL": fresh_server.url, "RUNVISOR_LOG": "INFO",
        "RV_SUPERVISOR_PASSWORD": fresh_server.credentials.passwords["supervisor"],
    }  # fmt: skip
    with log_path.open("w") as log_file:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runvisor.actors.cli", "supervisor", "--id", "lonely", env=env, stderr=log_file
        )
    try:
        await eventually(lambda: "supervisor started" in log_path.read_text(), timeout=30, what="the worker started")
        await publish(fresh_admin, find_file_loop(run_id, 0, repeats=1))
        # when its server dies and it is told to stop,
        await fresh_server.kill()
        await eventually(
            lambda: "supervisor-lonely: disconnected from NATS" in log_path.read_text(), what="the loss noticed"
        )
        worker.send_signal(signal.SIGTERM)
        # it stops within its graceful time (it waited on each of its 32 leases for a timeout: 160 s)
        # and exits cleanly (it once raised out of nats-py's close).
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    # Its leases are left to expire: not handed back one timeout at a time (or, when a renewal under
    # way when the server died timed out first, dropped as stale before it stopped).
    said = log_path.read_text()
    assert "not given back cleanly" not in said, said[-3000:]
    assert re.search(r"32 lease\(s\) not given back: NATS is out of reach|lease renewal failed", said), said[-3000:]
    assert "Traceback" not in said, said[-3000:]
