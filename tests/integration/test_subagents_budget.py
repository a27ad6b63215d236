"""Sub-agents against a real server, judged by two supervisor workers that share the partitions: a
parent's budget covers what its sub-agents spend wherever they are judged, a parent that ends takes
its sub-agents with it, and `runvisor ps` shows the family tree (README "Sub-agents")."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client
from test_operator_cli import cli
from test_supervisor import Watch, publish, running_worker, watch

from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams.runs import stored_state
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, FamilyEntry, RunState, StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import embedded_server, eventually

pytestmark = pytest.mark.integration

Workers = tuple[SupervisorWorker, SupervisorWorker]


@pytest_asyncio.fixture(scope="module")
async def family_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(tmp_path_factory.mktemp("family")) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module")
async def workers(family_server: EmbeddedServer) -> AsyncIterator[Workers]:
    """Two workers in this process, each holding half of the partitions."""
    async with running_worker(family_server, "fam-a") as a, running_worker(family_server, "fam-b", leases=16) as b:
        await eventually(lambda: len(a.leases.owned) == 16, what="fam-a gave half of the partitions back")
        yield a, b


@pytest_asyncio.fixture
async def admin(family_server: EmbeddedServer) -> AsyncIterator[Client]:
    nc = await connect(family_server.endpoint("admin"), "t-family")
    yield nc
    await nc.close()


def judged_by(worker: SupervisorWorker, name: str) -> str:
    """A run id starting with ``name`` whose partition ``worker`` holds."""
    return next(run for run in (f"{name}-{i}" for i in range(1000)) if worker.owns(run))


def start(run_id: str, parent: str | None = None, policy: Policy | None = None) -> StepEvent:
    return StepEvent(run_id=run_id, seq=1, ts=time.time(), kind="start", task="t", parent_run_id=parent, policy=policy)


def llm(run_id: str, seq: int, cost: float) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind="llm", tokens_in=100, tokens_out=10, cost_usd=cost)


async def watch_all(admin: Client, *run_ids: str) -> dict[str, Watch]:
    return {run_id: await watch(admin, run_id) for run_id in run_ids}


def ended(seen: dict[str, Watch], cmd: str = "stop") -> dict[str, list[Command]] | None:
    """Each run's commands ``cmd``, once every run has one."""
    found = {run_id: [c for c in w.commands if c.cmd == cmd] for run_id, w in seen.items()}
    return found if all(found.values()) else None


async def states(admin: Client, run_ids: list[str], status: RunStatus) -> dict[str, RunState] | None:
    """Each run's state in rv_runs, once every one has ``status``."""
    found = {run_id: await stored_state(admin, run_id) for run_id in run_ids}
    written = {run_id: s for run_id, s in found.items() if s is not None and s.status is status}
    return written if len(written) == len(run_ids) else None


async def test_a_parents_budget_stops_its_sub_agents_judged_by_other_workers(workers: Workers, admin: Client) -> None:
    a, b = workers
    parent, child1 = judged_by(a, "budget-parent"), judged_by(a, "budget-child1")
    child2, grandchild = judged_by(b, "budget-child2"), judged_by(a, "budget-grandchild")
    seen = await watch_all(admin, parent, child1, child2, grandchild)
    # Given a parent allowed $1 that spends $0.05 itself, a sub-agent judged beside it spending $0.60,
    # and one judged by the other worker spending $0.30, whose own sub-agent spends $0.30 more:
    # each under the parent's budget, together $1.25 over it;
    await publish(admin, iter([start(parent, policy=Policy(max_cost_usd=1.0)), llm(parent, 2, 0.05)]))
    await publish(admin, iter([start(child1, parent), llm(child1, 2, 0.3), llm(child1, 3, 0.3)]))
    await publish(admin, iter([start(child2, parent), llm(child2, 2, 0.3)]))
    await publish(admin, iter([start(grandchild, child2), llm(grandchild, 2, 0.3)]))

    # then the parent is warned, then stopped for its budget, with the family's figures,
    stops = await eventually(lambda: ended(seen), timeout=20, what="a stop for the parent and every sub-agent")
    warnings = [e for e in seen[parent].events if e.get("severity") == "warn"]
    assert [w["detector"] for w in warnings] == ["family_budget"]
    [stop] = stops[parent]
    assert stop.reason is StopReason.BUDGET_EXCEEDED
    assert stop.evidence is not None
    said = "cost budget exceeded by the run and its 3 sub-agents: 1.25 of 1 (policy max_cost_usd; the run 0.05"
    assert said in stop.evidence.summary
    # and each sub-agent, at every level and on either worker, is stopped once, naming its parent and the budget.
    for run_id, its_parent in ((child1, parent), (child2, parent), (grandchild, child2)):
        [command] = stops[run_id]
        assert command.reason is StopReason.BUDGET_EXCEEDED
        assert command.note == f"ended with its parent run {its_parent}"
        assert command.evidence is not None
        assert f"its parent run {its_parent} was stopped (BUDGET_EXCEEDED)" in command.evidence.summary
        assert "1.25 of 1 (policy max_cost_usd" in command.evidence.summary
    written = await eventually(
        lambda: states(admin, [parent, child1, child2, grandchild], RunStatus.STOPPED), what="four stops in rv_runs"
    )
    assert {s.stop_reason for s in written.values()} == {StopReason.BUDGET_EXCEEDED}
    assert [written[r].parent_run_id for r in (parent, child1, child2, grandchild)] == [None, parent, parent, child2]
    verdict = written[child2].last_verdict
    assert verdict is not None
    assert f"its parent run {parent} was stopped" in verdict.evidence.summary
    # The sub-agent judged by the other worker wrote what it and its own sub-agent spent for the parent's worker.
    kv = await admin.jetstream().key_value(subjects.FAMILY_BUCKET)
    entry = codec.decode_stored(FamilyEntry, (await kv.get(subjects.family_key(parent, child2))).value or b"")
    assert (round(entry.counters.cost_usd, 9), entry.sub_agents, entry.depth) == (0.6, 1, 2)


async def test_a_killed_parents_sub_agents_are_killed_and_ps_shows_the_tree(
    workers: Workers, admin: Client, family_server: EmbeddedServer
) -> None:
    a, b = workers
    parent, child1 = judged_by(b, "kill-parent"), judged_by(a, "kill-child1")
    child2, grandchild = judged_by(b, "kill-child2"), judged_by(b, "kill-grandchild")
    other = judged_by(a, "kill-other")
    seen = await watch_all(admin, child1, child2, grandchild)
    # Given a parent with two sub-agents, one with a sub-agent of its own, all running,
    await publish(admin, iter([start(parent), llm(parent, 2, 0.01), start(other), llm(other, 2, 0.01)]))
    await publish(admin, iter([start(child1, parent), llm(child1, 2, 0.01), start(child2, parent)]))
    await publish(admin, iter([start(grandchild, child1), llm(grandchild, 2, 0.01)]))
    family = [parent, child1, child2, grandchild]
    await eventually(lambda: states(admin, [*family, other], RunStatus.RUNNING), what="the runs in rv_runs")
    # `runvisor ps` shows the sub-agents under their parent,
    rc, out, err = await cli(family_server, "ps")
    assert (rc, err) == (0, "")
    rows = [line.split()[0] for line in out.splitlines()[1:]]
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows.index(parent) < rows.index(child1) < rows.index(grandchild)
    assert rows.index(parent) < rows.index(child2)
    assert [lines[r].startswith(r) for r in (parent, other)] == [True, True], "top-level runs are not indented"
    assert [lines[r].startswith(f"  {r} ") for r in (child1, child2)] == [True, True]
    assert lines[grandchild].startswith(f"    {grandchild} "), "in a pipe, ids stay whole (80 columns: test_family)"
    rc, out, _ = await cli(family_server, "ps", "--json")
    parents = {s["run_id"]: s.get("parent_run_id") for s in json.loads(out)}
    assert [parents[r] for r in family] == [None, parent, parent, child1]

    # when an operator kills the parent,
    rc, out, err = await cli(family_server, "kill", parent, "runaway")
    assert (rc, err) == (0, "")
    # then its sub-agents are killed, on either worker and at every level, each told why,
    kills = await eventually(lambda: ended(seen, "kill"), timeout=20, what="a kill for every sub-agent")
    for run_id, its_parent in ((child1, parent), (child2, parent), (grandchild, child1)):
        [command] = kills[run_id]
        assert command.reason is StopReason.USER_KILLED
        assert command.note == f"ended with its parent run {its_parent}"
    written = await eventually(lambda: states(admin, family, RunStatus.STOPPED), what="the family stopped in rv_runs")
    assert {s.stop_reason for s in written.values()} == {StopReason.USER_KILLED}
    # and a run outside the family goes on.
    other_state = await stored_state(admin, other)
    assert other_state is not None
    assert other_state.status is RunStatus.RUNNING
    rc, out, _ = await cli(family_server, "why", child1)
    assert rc == 0
    assert f"sub-agent of run {parent}" in out
    assert f"its parent run {parent} was killed" in out


async def test_a_sub_agent_that_starts_after_its_parent_ended_is_ended_too(workers: Workers, admin: Client) -> None:
    a, b = workers
    parent, late = judged_by(a, "late-parent"), judged_by(b, "late-child")
    seen = await watch_all(admin, late)
    await publish(admin, iter([start(parent), llm(parent, 2, 0.01)]))
    await eventually(lambda: states(admin, [parent], RunStatus.RUNNING), what="the parent in rv_runs")
    await admin.jetstream().publish(subjects.ctl(parent), b"kill", timeout=4)  # `nats pub`, not the CLI
    await eventually(lambda: states(admin, [parent], RunStatus.STOPPED), what="the parent killed")
    # A sub-agent whose start was on its way when its parent was killed is killed as soon as it is heard of.
    await publish(admin, iter([start(late, parent), llm(late, 2, 0.01)]))
    kills = await eventually(lambda: ended(seen, "kill"), timeout=20, what="the late sub-agent's kill")
    assert [c.note for c in kills[late]] == [f"ended with its parent run {parent}"]


async def test_a_worker_on_a_deployment_without_the_family_bucket_still_judges_its_runs(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # Provisioned by a `runvisor up` from before sub-agents' budgets: the worker says so and goes on.
    await fresh_admin.jetstream().delete_key_value(subjects.FAMILY_BUCKET)
    async with running_worker(fresh_server, "no-family") as worker:
        assert not worker.family.enabled
        seen = await watch(fresh_admin, run_id)
        budget = Policy(max_cost_usd=1.0, warn_first=False)
        await publish(fresh_admin, iter([start(run_id, policy=budget), llm(run_id, 2, 1.5)]))
        stops = await eventually(seen.stops, what="the run's own budget's stop")
        assert stops[0].reason is StopReason.BUDGET_EXCEEDED
