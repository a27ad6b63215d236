"""``runvisor demo``: the whole system on a private embedded server, showing each failure mode caught.

Starts nats-server, a supervisor worker and a tool executor, runs the scripted agents of
``runvisor.actors.sim`` side by side, plays an operator who pauses, resumes and kills one of them,
prints verdicts and commands as they happen, and ends with every run's live state and why
it stopped. Exit status 0 when every run ended as expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from runvisor.actors.agent import Run, RunKilled, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.operator import describe, fetch_state, send_command
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.sim import SCENARIOS, Scenario, demo_tools
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.actors.tools import ToolExecutor
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, RunState, ToolRequest, ToolResult
from runvisor.protocols.reasons import RunStatus
from runvisor.testing import embedded_server, eventually

DEMO_TIMEOUT_S = 90.0


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


async def run_demo(stop: asyncio.Event) -> int:
    async with embedded_server() as server:
        say(f"nats-server started at {server.url}, provisioned (JetStream in {server.home})")
        actors_stop = asyncio.Event()
        supervisor = SupervisorWorker(server.endpoint("supervisor"), worker_id="demo", tick_s=0.2, flush_s=0.1)
        tools = ToolExecutor(demo_tools, server.endpoint("tool"))
        operator = await connect(server.endpoint("operator"), "demo-operator")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(supervisor.run(actors_stop))
                tg.create_task(tools.run(actors_stop))
                try:
                    await _ready(supervisor, server)
                    say(f"supervisor worker holds {len(supervisor.leases.owned)} partitions; tool executor serves "
                        f"{', '.join(t.name for t in demo_tools)}")  # fmt: skip
                    await _follow(operator)
                    play = asyncio.create_task(_play(server, operator))
                    interrupted = asyncio.create_task(stop.wait())
                    await asyncio.wait({play, interrupted}, return_when=asyncio.FIRST_COMPLETED)
                    interrupted.cancel()
                    if not play.done():
                        play.cancel()
                        say("interrupted")
                        return 130
                    outcomes = play.result()
                    await asyncio.sleep(0.3)  # let the last states reach rv_runs
                    return await _report(operator, outcomes)
                finally:
                    actors_stop.set()
        finally:
            await operator.close()
    return 1


async def _ready(supervisor: SupervisorWorker, server: EmbeddedServer) -> None:
    await eventually(lambda: supervisor._leases is not None and supervisor.leases.owned, what="supervisor leases")
    agent = await connect(server.endpoint("agent"), "demo-probe")

    async def tools_answer() -> bool:
        probe = ToolRequest(
            run_id="demo-probe", call_id="probe", tool="search", args={"term": "x"}, idempotency_key="demo-probe"
        )
        with contextlib.suppress(Exception):
            reply = await agent.request(subjects.tool("search"), codec.encode(probe), timeout=1)
            return codec.decode(ToolResult, reply.data).call_id == "probe"
        return False

    try:
        await eventually(tools_answer, what="the tool executor to answer")
    finally:
        await agent.close()


async def _follow(operator: Client) -> None:
    """Print verdicts and commands as they happen."""

    async def on_event(msg: Msg) -> None:
        data = json.loads(msg.data)
        run = subjects.run_id_of(msg.subject)
        if "error" in data:
            say(f"  [{run}] bad command: {data['error']}")
        else:
            say(f"  [{run}] {data['severity']} {data['reason']}: {data['evidence']['summary'][:110]}")

    async def on_ctl(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            cmd = codec.decode_command(msg.data)
            say(f"  [{subjects.run_id_of(msg.subject)}] <- {cmd.cmd} {cmd.reason} from {cmd.issuer}")

    await operator.subscribe(subjects.EVENT_ALL, cb=on_event)
    await operator.subscribe(subjects.CTL_ALL, cb=on_ctl)


async def _play(server: EmbeddedServer, operator: Client) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    suffix = time.strftime("%H%M%S")

    async def agent(scenario: Scenario) -> None:
        run_id = f"demo-{scenario.name}-{suffix}"
        try:
            async with Run.start(
                goal=f"demo: {scenario.name}", policy=scenario.policy, run_id=run_id,
                endpoint=server.endpoint("agent"), agent="sim",
            ) as run:  # fmt: skip
                await scenario.agent(run)
            outcomes[run_id] = "COMPLETED"
        except RunStopped as exc:
            outcomes[run_id] = f"STOPPED: {exc.reason}"
        except RunKilled:
            outcomes[run_id] = "KILLED"
        say(f"[{run_id}] agent finished: {outcomes[run_id]}")

    async with asyncio.timeout(DEMO_TIMEOUT_S), asyncio.TaskGroup() as tg:
        say(f"starting {len(SCENARIOS)} agents: {', '.join(s.name for s in SCENARIOS)}")
        for scenario in SCENARIOS:
            tg.create_task(agent(scenario))
        tg.create_task(_operator(operator, f"demo-paused-{suffix}"))
    return outcomes


async def _operator(operator: Client, run_id: str) -> None:
    """An operator who pauses a run, looks at it, resumes it, and kills it in a long tool call."""
    await eventually(lambda: _status(operator, run_id, lambda s: s.last_seq >= 8), what="the run under way")
    say(f"operator: pause {run_id}")
    await send_command(operator, run_id, Command(cmd="pause", issuer="demo-operator"))
    state = await eventually(lambda: _status(operator, run_id, lambda s: s.status is RunStatus.PAUSED))
    say(f"operator: {run_id} is {state.status} ({state.stop_reason}) at step {state.last_seq}; resuming")
    await send_command(operator, run_id, Command(cmd="resume", issuer="demo-operator"))
    await eventually(lambda: _status(operator, run_id, lambda s: s.current_tool == "slow_job"), timeout=30)
    say(f"operator: {run_id} is stuck in slow_job; kill runaway job")
    await operator.publish(subjects.ctl(run_id), b"kill runaway job")


async def _status(nc: Client, run_id: str, ok: Callable[[RunState], bool]) -> RunState | None:
    state = await fetch_state(nc, run_id, timeout=0.5)
    return state if state is not None and ok(state) else None


async def _report(operator: Client, outcomes: dict[str, str]) -> int:
    say("final state of every run (as `runvisor ps` / `runvisor why` show it):")
    failures = 0
    for scenario in SCENARIOS:
        run_id = next(r for r in outcomes if r.startswith(f"demo-{scenario.name}-"))
        state = await fetch_state(operator, run_id)
        print(describe(state) if state else f"run {run_id}: no state")
        got = outcomes[run_id]
        ok = got == scenario.expect
        failures += not ok
        print(f"  {scenario.story}: expected {scenario.expect}, agent saw {got}: {'OK' if ok else 'UNEXPECTED'}\n")
    say(
        "demo finished" + (f" with {failures} unexpected outcome(s)" if failures else ": every failure mode was caught")
    )
    return 1 if failures else 0
