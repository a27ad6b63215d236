"""A run that has ended stays ended, and a later ``start`` never loosens a run's policy (README "Security").

Before, a ``start`` for a finished run had its supervisor judge it afresh, under whatever policy that
start carried (its own thresholds, its own ``loop_action``): an agent could reset its stopped run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from test_supervisor import watch

from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams.runs import stored_state
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import RunState, StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

TIGHT = Policy(max_cost_usd=1.0, warn_first=False)
LOOSE = Policy(max_cost_usd=1000.0, warn_first=False)


async def send(nc: Client, *events: StepEvent) -> None:
    for event in events:
        await nc.jetstream().publish(subjects.step(event.run_id), codec.encode(event))


def start(run_id: str, seq: int, policy: Policy) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind="start", task="t", policy=policy)


def spend(run_id: str, seq: int, cost: float) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind="llm", tokens_in=10, cost_usd=cost)


async def state_is(nc: Client, run_id: str, status: RunStatus, cost: float | None = None) -> RunState | None:
    state = await stored_state(nc, run_id)
    if state is None or state.status is not status:
        return None
    return state if cost is None or abs(state.counters.cost_usd - cost) < 1e-9 else None


@pytest.fixture
async def worker(fresh_server: EmbeddedServer, fresh_admin: Client) -> AsyncIterator[SupervisorWorker]:
    """One worker holding every partition, forgetting quiet and finished runs within half a second."""
    stop = asyncio.Event()
    w = SupervisorWorker(
        fresh_server.endpoint("supervisor"), worker_id="solo", flush_s=0.05, tick_s=0.1, idle_s=0.5, finished_s=0.5
    )
    task = asyncio.create_task(w.run(stop))
    try:
        await eventually(lambda: w._leases is not None and len(w.leases.owned) == w.partitions, what="leases")
        yield w
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("evicted", [False, True], ids=["in-memory", "evicted"])
async def test_a_start_for_a_run_that_has_ended_is_refused_and_reported(
    worker: SupervisorWorker, fresh_admin: Client, run_id: str, evicted: bool
) -> None:
    seen = await watch(fresh_admin, run_id)
    # Given a run stopped for its budget,
    await send(fresh_admin, start(run_id, 1, TIGHT), spend(run_id, 2, 1.5))
    await eventually(lambda: state_is(fresh_admin, run_id, RunStatus.STOPPED), what="the run STOPPED")
    if evicted:  # and forgotten by its worker (its state is in rv_runs),
        await eventually(lambda: run_id not in worker.engine.windows, what="the stopped run evicted")
    # when its agent starts it again with a policy of its own choosing and goes on spending,
    await send(fresh_admin, start(run_id, 3, LOOSE), spend(run_id, 4, 0.1))
    # the start is refused, and said so on rv.event,
    errors = await eventually(seen.errors, what="the refusal on rv.event")
    assert errors == [f"start rejected: run {run_id} has ended (STOPPED, BUDGET_EXCEEDED); a new run needs a new id"]
    # and the run stays as it ended: judged again, it is never running, never stopped twice.
    await eventually(lambda: state_is(fresh_admin, run_id, RunStatus.STOPPED, cost=1.6), what="the late spend counted")
    stored = await stored_state(fresh_admin, run_id)
    assert stored is not None
    assert stored.stop_reason is StopReason.BUDGET_EXCEEDED
    assert [c.cmd for c in seen.commands] == ["stop"]


async def test_a_later_start_does_not_loosen_a_live_runs_policy(
    worker: SupervisorWorker, fresh_admin: Client, run_id: str
) -> None:
    seen = await watch(fresh_admin, run_id)
    # Given a run with a budget of 1.0 that spent 0.7 and went quiet long enough to be forgotten,
    await send(fresh_admin, start(run_id, 1, TIGHT), spend(run_id, 2, 0.7))
    await eventually(lambda: state_is(fresh_admin, run_id, RunStatus.RUNNING, cost=0.7), what="0.7 spent")
    await eventually(lambda: run_id not in worker.engine.windows, what="the quiet run evicted")
    # when it sends a new start with a budget of 1000 and spends 0.4 more,
    await send(fresh_admin, start(run_id, 3, LOOSE), spend(run_id, 4, 0.4))
    # it is over the budget of its first start: stopped.
    await eventually(lambda: [c for c in seen.commands if c.cmd == "stop"], what="the stop")
    assert seen.commands[-1].reason is StopReason.BUDGET_EXCEEDED
