"""Two tenants on one server, one NATS account each (``examples/tenants/nats.conf``, README "Security").

A second team's agent and operator, with the same roles and rights in their own account, cannot
read or touch the first team's runs: not its steps, commands, states or checkpoints, not its replies.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import ROLES, Endpoint, Role
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.streams.runs import stored_state
from runvisor.actors.streams.steps import has_steps
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.errors import PermissionDenied
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent
from runvisor.protocols.reasons import RunStatus
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tenants" / "nats.conf"
TEAMS = ("a", "b")


class Tenants:
    """The example server with both teams provisioned; ``endpoint(team, role)`` logs in as one of them."""

    def __init__(self, server: EmbeddedServer, passwords: dict[str, str]) -> None:
        self.server = server
        self.passwords = passwords

    def endpoint(self, team: str, role: Role) -> Endpoint:
        user = f"team-{team}-{role}"
        return Endpoint(
            self.server.url, user=user, password=self.passwords[user], inbox_prefix=subjects.inbox_prefix(role)
        )

    async def connect(self, team: str, role: Role) -> Client:
        return await connect(self.endpoint(team, role), f"t-{team}-{role}")


@pytest_asyncio.fixture
async def tenants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tenants]:
    passwords = {f"team-{team}-{role}": "rv" + secrets.token_hex(16) for team in TEAMS for role in ROLES}
    for user, password in passwords.items():
        monkeypatch.setenv(f"{user.replace('-', '_').upper()}_PASSWORD", password)  # TEAM_A_AGENT_PASSWORD
    async with EmbeddedServer(tmp_path / "nats", conf=EXAMPLE) as server:
        found = Tenants(server, passwords)
        for team in TEAMS:  # each team's admin provisions its own account
            admin = await found.connect(team, "admin")
            await provision(admin)
            await admin.close()
        yield found


def loop_steps(run_id: str, first_seq: int, repeats: int) -> list[StepEvent]:
    """The same search, finding nothing, again and again: a loop any supervisor stops."""
    steps = []
    for seq in range(first_seq, first_seq + 2 * repeats, 2):
        call = {"tool": "search", "call_id": f"c{seq}"}
        steps.append(StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind="tool_call", args={"q": "x"}, **call))
        steps.append(
            StepEvent(run_id=run_id, seq=seq + 1, ts=time.time(), kind="tool_result", observation="no match", **call)
        )
    return steps


async def send(nc: Client, *events: StepEvent) -> None:
    for event in events:
        await nc.jetstream().publish(subjects.step(event.run_id), codec.encode(event))


async def test_a_second_tenant_cannot_read_or_touch_the_first_ones_runs(tenants: Tenants, run_id: str) -> None:
    # Given team A's run, supervised by team A's worker, with a checkpoint,
    stop = asyncio.Event()
    worker = SupervisorWorker(tenants.endpoint("a", "supervisor"), worker_id="a", flush_s=0.05, tick_s=0.1)
    serving = asyncio.create_task(worker.run(stop))
    a_agent, a_operator = await tenants.connect("a", "agent"), await tenants.connect("a", "operator")
    b_agent, b_operator = await tenants.connect("b", "agent"), await tenants.connect("b", "operator")
    try:
        await eventually(lambda: worker._leases is not None and worker.leases.owned, what="team A's worker leases")
        a_commands: list[Msg] = []
        await a_agent.subscribe(subjects.ctl(run_id), cb=_collect(a_commands))
        start = StepEvent(run_id=run_id, seq=1, ts=time.time(), kind="start", task="team A's secret task")
        await send(a_agent, start)
        await (await a_agent.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)).put(run_id, b"team A's state")
        await eventually(lambda: stored_state(a_operator, run_id), what="team A's run in its rv_runs")
        # and team B's operator listening to everything its account may see,
        b_seen: list[Msg] = []
        for subject in ("rv.>", "_INBOX.>"):
            await b_operator.subscribe(subject, cb=_collect(b_seen))
        await send(a_agent, StepEvent(run_id=run_id, seq=2, ts=time.time(), kind="message", observation="team A's"))
        # team B's agent finds none of team A's run: no checkpoint, no step, no state,
        with pytest.raises(KeyNotFoundError):
            await (await b_agent.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)).get(run_id)
        assert not await has_steps(b_operator, run_id)
        assert await stored_state(b_operator, run_id) is None
        # and what team B does with that run id stays in team B's account: a loop of its steps (the
        # steps that once had 10 of 10 victim runs stopped) and a kill from its operator.
        await send(b_agent, *loop_steps(run_id, 3, 6))
        await b_operator.jetstream().publish(subjects.ctl(run_id), b"kill", timeout=4)
        # Team B's agent may not even ask for team A's replies or commands in its own account.
        with pytest.raises(PermissionDenied):
            await b_agent.subscribe("_INBOX_operator.>")
        await a_agent.flush()
        await asyncio.sleep(0.5)  # team A's worker judges within 0.1 s; commands arrive at once
        assert a_commands == []
        a_state = await stored_state(a_operator, run_id)
        assert a_state is not None
        assert a_state.status is RunStatus.RUNNING
        assert worker.engine.state(run_id).status is RunStatus.RUNNING
        a_checkpoint = await (await a_operator.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)).get(run_id)
        assert a_checkpoint.value == b"team A's state"
        # Team B heard only itself: its own loop and kill, nothing of team A's task, steps or state.
        assert not [m for m in b_seen if b"team A" in m.data]
        assert len([m for m in b_seen if m.subject == subjects.step(run_id)]) == 12, "team B's own steps only"
        assert len([m for m in b_seen if m.subject == subjects.ctl(run_id)]) == 1, "team B's own kill"
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
        for nc in (a_agent, a_operator, b_agent, b_operator):
            await nc.close()


def _collect(into: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def on_msg(msg: Msg) -> None:
        into.append(msg)

    return on_msg
