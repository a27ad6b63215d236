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
from nats.aio.msg import Msg
from test_supervisor import watch

from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams.runs import stored_state
from runvisor.actors.streams.steps import first_step
from runvisor.actors.supervisor import _follow
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


async def test_runs_in_a_burst_of_new_ones_are_told_apart_while_their_lookups_run_ahead(
    worker: SupervisorWorker, fresh_admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run new to a worker waits on a lookup of its first stored step; a burst of new runs waited
    # on them one after another, and the next loop's stop with them. They are now looked up ahead.
    in_flight, most = 0, 0

    async def counted(nc: Client, partition: int, run_id: str) -> Msg | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await first_step(nc, partition, run_id)
        finally:
            in_flight -= 1

    monkeypatch.setattr(_follow, "first_step", counted)
    # Given a run stopped for its budget and one that spent 0.7 of its 1.0, both forgotten by the worker,
    ended, quiet = "burst-ended", "burst-quiet"
    await send(fresh_admin, start(ended, 1, TIGHT), spend(ended, 2, 1.5), start(quiet, 1, TIGHT), spend(quiet, 2, 0.7))
    await eventually(lambda: state_is(fresh_admin, ended, RunStatus.STOPPED), what="the run STOPPED")
    await eventually(lambda: state_is(fresh_admin, quiet, RunStatus.RUNNING, cost=0.7), what="0.7 spent")
    await eventually(lambda: not {ended, quiet} & worker.engine.windows.keys(), what="both forgotten")
    seen_ended, seen_quiet = await watch(fresh_admin, ended), await watch(fresh_admin, quiet)
    # when both start again, loosely, in the middle of 600 new runs' starts sent at once,
    burst = [start(f"burst-{i}", 1, LOOSE) for i in range(600)]
    burst[200:200] = [start(ended, 3, LOOSE)]
    burst[400:400] = [start(quiet, 3, LOOSE), spend(quiet, 4, 0.4)]
    for event in burst:
        await fresh_admin.publish(subjects.step(event.run_id), codec.encode(event))
    await fresh_admin.flush()
    # every new run is judged as one, the ended run's start is refused, and the quiet run is over the
    # budget of its first start: stopped.
    await eventually(lambda: {f"burst-{i}" for i in range(600)} <= worker.engine.windows.keys(), what="all judged")
    errors = await eventually(seen_ended.errors, what="the refusal on rv.event")
    assert errors == [f"start rejected: run {ended} has ended (STOPPED, BUDGET_EXCEEDED); a new run needs a new id"]
    await eventually(lambda: [c for c in seen_quiet.commands if c.cmd == "stop"], what="the stop")
    assert seen_quiet.commands[-1].reason is StopReason.BUDGET_EXCEEDED
    assert most > 1, "the lookups were made one after another"
