"""Supervisor workers against a real server: detection, decisions, state, leases and failover."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from bench.synth import SynthConfig, generate
from runvisor.actors.agent import Run
from runvisor.actors.connection import connect
from runvisor.actors.operator import fetch_state, send_command, stored_state
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.streams.control import last_stored_command
from runvisor.actors.supervisor.leases import Leases
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, RunState, StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration


def find_file_loop(run_id: str, first_seq: int, repeats: int) -> Iterator[StepEvent]:
    """An agent searching again and again for a term that does not exist (DESIGN §4)."""
    seq = first_seq
    for i in range(repeats):
        call = f"c{seq}"
        yield StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=900, tokens_out=40, cost_usd=0.001)
        yield StepEvent(
            run_id=run_id, seq=seq + 1, ts=1e9 + seq + 1, kind="tool_call", tool="find_file", call_id=call,
            args={"command": "find_file JsonParser src/"},
        )  # fmt: skip
        yield StepEvent(
            run_id=run_id, seq=seq + 2, ts=1e9 + seq + 2, kind="tool_result", tool="find_file", call_id=call,
            observation='No matches found for "JsonParser" in /repo/src', ok=True,
        )  # fmt: skip
        seq += 3
        del i


async def publish(nc: Client, events: Iterator[StepEvent]) -> list[StepEvent]:
    js = nc.jetstream()
    sent = []
    for event in events:
        await js.publish(subjects.step(event.run_id), codec.encode(event))
        sent.append(event)
    return sent


class Watch:
    """Collects what arrives on a run's control and event subjects."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.events: list[dict[str, object]] = []

    async def on_ctl(self, msg: Msg) -> None:
        self.commands.append(codec.decode_command(msg.data))

    async def on_event(self, msg: Msg) -> None:
        self.events.append(json.loads(msg.data))

    def stops(self) -> list[Command]:
        return [c for c in self.commands if c.cmd == "stop"]

    def errors(self) -> list[str]:
        """The rejections reported on ``rv.event`` (JSON with an ``error``), as their messages."""
        return [str(e["error"]) for e in self.events if "error" in e]


@contextlib.asynccontextmanager
async def running_worker(
    server: EmbeddedServer,
    worker_id: str,
    lookback_s: float = 900.0,
    before_start: Callable[[SupervisorWorker], None] | None = None,
    flush_s: float = 0.05,
    leases: int | None = None,
) -> AsyncIterator[SupervisorWorker]:
    """A worker in this process, once it holds ``leases`` partitions (default: all of them); stopped
    gracefully (leases given back) on exit."""
    stop = asyncio.Event()
    w = SupervisorWorker(
        server.endpoint("supervisor"), worker_id=worker_id, flush_s=flush_s, tick_s=0.1, lookback_s=lookback_s
    )
    if before_start is not None:
        before_start(w)

    def holding() -> bool:
        return w._leases is not None and len(w.leases.owned) == (leases or w.partitions)

    task = asyncio.create_task(w.run(stop))
    try:
        await eventually(holding, what=f"{worker_id} leases")
        yield w
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest_asyncio.fixture
async def worker(server: EmbeddedServer) -> AsyncIterator[SupervisorWorker]:
    async with running_worker(server, "solo") as w:
        yield w


async def watch(operator: Client, run_id: str) -> Watch:
    seen = Watch()
    await operator.subscribe(subjects.ctl(run_id), cb=seen.on_ctl)
    await operator.subscribe(subjects.event(run_id), cb=seen.on_event)
    await operator.flush()
    return seen


async def test_loop_gets_a_warning_then_one_stop_with_evidence(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, run_id: str
) -> None:
    seen = await watch(operator, run_id)
    sent = await publish(agent_nc, find_file_loop(run_id, 0, repeats=8))
    stops = await eventually(seen.stops, what="a stop on rv.ctl")
    await eventually(lambda: worker.processed >= len(sent))
    assert len(seen.stops()) == 1, "never two stops for one run"
    stop = stops[0]
    assert stop.reason is StopReason.LOOP_DETECTED
    assert stop.issuer == "supervisor:solo"
    assert stop.evidence is not None
    assert "find_file" in stop.evidence.summary
    assert len(stop.evidence.seqs) >= 3
    assert set(stop.evidence.seqs) <= {e.seq for e in sent}
    severities = [e["severity"] for e in seen.events if "severity" in e]
    assert severities[0] == "warn", "a warning verdict comes before the stop"
    # The live state says why.
    state = await eventually(lambda: _stopped(operator, run_id), what="STOPPED in rv_runs")
    assert state.stop_reason is StopReason.LOOP_DETECTED


async def _stopped(nc: Client, run_id: str) -> RunState | None:
    state = await fetch_state(nc, run_id)
    return state if state is not None and state.status is RunStatus.STOPPED else None


async def test_status_request_answers_with_live_counters(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, run_id: str
) -> None:
    await publish(agent_nc, find_file_loop(run_id, 0, repeats=1))
    # All three events judged (the window exists from the first, the llm event).
    await eventually(lambda: run_id in worker.engine.windows and worker.engine.windows[run_id].last_seq == 2)
    reply = await operator.request(subjects.status(run_id), b"", timeout=5)
    state = codec.decode_json(RunState, reply.data)
    assert state.run_id == run_id
    assert state.status is RunStatus.RUNNING
    assert state.counters.tokens == 940
    assert state.counters.tool_calls == 1
    assert state.current_tool == "find_file" or state.last_kind == "tool_result"


async def test_operator_pause_and_kill_update_the_live_state(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, run_id: str
) -> None:
    await publish(agent_nc, find_file_loop(run_id, 0, repeats=1))
    await eventually(lambda: run_id in worker.engine.windows)
    await send_command(operator, run_id, Command(cmd="pause"))
    paused = await eventually(lambda: _with_status(operator, run_id, RunStatus.PAUSED))
    assert paused.stop_reason is StopReason.USER_PAUSED
    await operator.publish(subjects.ctl(run_id), b"kill runaway costs")
    killed = await eventually(lambda: _with_status(operator, run_id, RunStatus.STOPPED))
    assert killed.stop_reason is StopReason.USER_KILLED


async def _with_status(nc: Client, run_id: str, status: RunStatus) -> RunState | None:
    state = await fetch_state(nc, run_id)
    return state if state is not None and state.status is status else None


async def test_rv_runs_holds_json_that_the_nats_cli_shows_readably(
    worker: SupervisorWorker, agent_nc: Client, admin: Client, run_id: str
) -> None:
    # `nats kv get rv_runs RUN` and `nats kv watch rv_runs` print the raw value: it was msgpack.
    await publish(agent_nc, find_file_loop(run_id, 0, repeats=1))
    kv = await admin.jetstream().key_value(subjects.RUNS_BUCKET)

    async def stored() -> dict[str, Any] | None:
        try:
            entry = await kv.get(run_id)
        except KeyNotFoundError:
            return None
        value: dict[str, Any] = json.loads(entry.value or b"")
        # A flush may come between the run's first step and its tool call: wait for the state after both.
        return value if value["counters"]["tool_calls"] == 1 else None

    value = await eventually(stored, what="the run in rv_runs, its tool call counted")
    assert (value["run_id"], value["status"]) == (run_id, "RUNNING")


async def test_status_of_an_unknown_run_is_a_json_error(worker: SupervisorWorker, admin: Client) -> None:
    # `nats req rv.status.RUN ''` for a run nobody knows got an empty reply.
    reply = await admin.request(subjects.status("no-such-run-here"), b"", timeout=5)
    assert json.loads(reply.data) == {"run_id": "no-such-run-here", "error": "no run 'no-such-run-here' is known"}


async def test_malformed_command_is_reported_on_rv_event(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, run_id: str
) -> None:
    await publish(agent_nc, find_file_loop(run_id, 0, repeats=1))
    await eventually(lambda: run_id in worker.engine.windows)
    seen = await watch(operator, run_id)
    await operator.publish(subjects.ctl(run_id), b"paws please")
    errors = await eventually(lambda: [e for e in seen.events if "error" in e])
    assert "unknown command 'paws'" in str(errors[0]["error"])


async def test_a_flood_of_undecodable_steps_is_counted_and_said_once(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 500 undecodable steps for one run (each once a WARNING line of its own),
    flooded = f"{run_id}-bad"
    seen = await watch(fresh_admin, flooded)
    async with running_worker(fresh_server, "flooded") as worker:
        js = fresh_admin.jetstream()
        for i in range(500):
            await js.publish(subjects.step(flooded), b"\x93not a step %d" % i)
        # and a loop of another run behind them,
        sent = await publish(fresh_admin, find_file_loop(run_id, 0, repeats=8))
        await eventually(
            lambda: worker.engine.windows.get(run_id) and worker.engine.windows[run_id].events == len(sent)
        )
        # then every one is counted, the log says so in one line, and the run's operator is told once;
        assert worker._rejections.total == 500
        lines = [r for r in caplog.records if "rejected since the last report" in r.getMessage()]
        assert len(lines) == 1
        await fresh_admin.flush()
        await eventually(lambda: seen.events, what="the report on rv.event")
        assert len(seen.events) == 1
        assert "step rejected: StepEvent: not valid msgpack" in str(seen.events[0]["error"])
        # and the valid traffic around it is judged as ever.
        assert worker.engine.state(run_id).status is RunStatus.STOPPED


async def test_a_step_naming_another_run_than_its_subject_is_rejected(
    worker: SupervisorWorker, agent_nc: Client, run_id: str
) -> None:
    # Published on one run's subject, a payload naming a victim run once fed the victim's window:
    # ten of them got it stopped as a loop it never made.
    victim, sender = f"{run_id}-victim", f"{run_id}-sender"
    before = worker._rejections.total
    js = agent_nc.jetstream()
    for event in find_file_loop(victim, 0, repeats=8):
        await js.publish(subjects.step(sender), codec.encode(event))
    await eventually(lambda: worker._rejections.total - before >= 24, what="every misaddressed step rejected")
    assert victim not in worker.engine.windows
    assert sender not in worker.engine.windows


async def test_worker_that_loses_its_lease_stops_deciding(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, admin: Client, run_id: str
) -> None:
    # Given a worker that owns the run's partition, when another party takes the lease,
    partition = subjects.partition_of(run_id, worker.partitions)
    kv = await admin.jetstream().key_value(subjects.LEASES_BUCKET)
    await kv.put(subjects.lease_key(partition), b"thief")
    await eventually(lambda: not worker.leases.holds(partition), what="the worker to notice the lost lease")
    # then it neither follows the partition nor commands its runs.
    seen = await watch(operator, run_id)
    await publish(agent_nc, find_file_loop(run_id, 0, repeats=8))
    candidates = (f"{run_id}-s{i}" for i in range(1000))
    sentinel = next(c for c in candidates if subjects.partition_of(c, worker.partitions) != partition)
    await publish(agent_nc, find_file_loop(sentinel, 0, repeats=1))
    await eventually(lambda: sentinel in worker.engine.windows, what="a later event elsewhere processed")
    assert run_id not in worker.engine.windows
    assert seen.commands == []
    await kv.delete(subjects.lease_key(partition))  # let the worker take it back for later tests
    await eventually(lambda: worker.leases.holds(partition), timeout=15)


async def test_steps_that_arrive_while_a_renewal_is_late_are_kept_not_dropped(
    worker: SupervisorWorker, agent_nc: Client, run_id: str
) -> None:
    # A renewal that comes late (a long pause of the process, a slow server) makes the lease
    # stale for a moment; the worker must not decide then, but if the renewal goes through the
    # partition is still its own, and the steps that came in between belong in the windows.
    partition = subjects.partition_of(run_id, worker.partitions)
    real_clock = worker.leases.clock
    worker.leases.clock = lambda: real_clock() + worker.leases.ttl_s  # every lease looks stale now
    try:
        assert not worker.leases.holds(partition)
        sent = await publish(agent_nc, find_file_loop(run_id, 0, repeats=2))
        await asyncio.sleep(0.3)
        assert run_id not in worker.engine.windows, "nothing is judged while the lease is stale"
    finally:
        worker.leases.clock = real_clock  # the late renewal went through after all
    window = await eventually(lambda: worker.engine.windows.get(run_id), what="the held-back steps processed")
    await eventually(lambda: window.events == len(sent), what="every held-back step in the window")
    assert window.last_seq == sent[-1].seq


async def test_a_lease_taken_over_before_it_is_given_back_is_no_crash(fresh_admin: Client) -> None:
    # Given a worker holding three partitions, one of which another worker took meanwhile (the
    # worker paused past the TTL, say): the compare-and-set of giving it back fails.
    js = fresh_admin.jetstream()
    kv = await js.key_value(subjects.LEASES_BUCKET)
    gained: list[int] = []

    async def on_gain(partition: int) -> None:
        gained.append(partition)

    async def on_lose(partition: int) -> None:
        del partition

    leases = Leases(js, kv, "w-cas", partitions=3, ttl_s=30, on_gain=on_gain, on_lose=on_lose)
    await leases.round()
    assert sorted(gained) == [0, 1, 2]
    await kv.put(subjects.lease_key(1), b"w-other")
    # When it stops and gives every lease back, the failed one is no crash, and the others are still
    # given back.
    await leases.release_all()
    assert leases.owned == []
    assert (await kv.get(subjects.lease_key(1))).value == b"w-other", "the other worker's lease stays"
    for partition in (0, 2):
        with pytest.raises((KeyNotFoundError, KeyDeletedError)):
            await kv.get(subjects.lease_key(partition))


async def test_a_renewal_whose_reply_was_lost_keeps_the_lease(fresh_admin: Client) -> None:
    # Found by the cluster test: a renewal written but not acknowledged (a failover) left the revision
    # held one behind, the next compare-and-set failed, and the worker dropped every partition it held.
    js = fresh_admin.jetstream()
    kv = await js.key_value(subjects.LEASES_BUCKET)
    lost: list[int] = []

    async def on_gain(partition: int) -> None:
        del partition

    async def on_lose(partition: int) -> None:
        lost.append(partition)

    leases = Leases(js, kv, "w-lost-reply", partitions=2, ttl_s=30, on_gain=on_gain, on_lose=on_lose)
    await leases.round()
    assert leases.owned == [0, 1]
    # The write of a renewal lands, its reply does not: the key moves on, the worker's revision does not.
    await kv.put(subjects.lease_key(0), b"w-lost-reply")
    await kv.put(subjects.lease_key(1), b"w-other")  # while partition 1 really was taken over
    await leases.round()
    assert leases.owned == [0], "the lease still naming this worker is kept; the one taken over is not"
    assert lost == [1]
    assert (await kv.get(subjects.lease_key(0))).value == b"w-lost-reply"
    await leases.round()  # and it renews normally from there
    assert leases.owned == [0]


async def test_one_runs_poison_numbers_never_block_other_runs_states(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # Given steps whose numbers no real step reaches (accepted once, their sums could no longer be
    # encoded: every write to rv_runs failed, for every run, for good, and the worker crashed on stop),
    poison = f"{run_id}-poison"
    healthy = [f"{run_id}-ok{i}" for i in range(10)]
    js = fresh_admin.jetstream()
    async with running_worker(fresh_server, "poison") as worker:
        poisons: list[dict[str, float]] = [{"tokens_in": 2**64 - 1}, {"tokens_in": 2**64 - 1}, {"cost_usd": 1e308}]
        for seq, numbers in enumerate(poisons * 2):
            step = {"run_id": poison, "seq": seq + 1, "ts": 1e9 + seq, "kind": "llm", **numbers}
            await js.publish(subjects.step(poison), msgpack.packb(step))
        for run in healthy:
            await publish(fresh_admin, find_file_loop(run, 0, repeats=1))
        # then every other run's state is written,
        for run in healthy:
            await eventually(lambda run=run: stored_state(fresh_admin, run), what=f"{run} in rv_runs")
        assert poison not in worker.engine.windows, "a step with such numbers is rejected, not judged"
    # and the worker stopped cleanly (running_worker fails the test if it raised).
    assert (await stored_state(fresh_admin, healthy[0])) is not None


# --- several worker processes -----------------------------------------------------------


async def _spawn_worker(server: EmbeddedServer, worker_id: str, *options: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "NATS_URL": server.url,
        "RV_SUPERVISOR_PASSWORD": server.credentials.passwords["supervisor"],
        "RUNVISOR_LOG": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "supervisor", "--id", worker_id, *options, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _owners(nc: Client) -> dict[int, str]:
    kv = await nc.jetstream().key_value(subjects.LEASES_BUCKET)
    owners = {}
    for p in range(subjects.DEFAULT_PARTITIONS):
        try:
            entry = await kv.get(subjects.lease_key(p))
        except Exception:
            continue
        if entry.value:
            owners[p] = entry.value.decode()
    return owners


async def test_kill_9_a_worker_and_its_partitions_and_loops_are_taken_over(fresh_server: EmbeddedServer) -> None:
    ttl = 2.0
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin, lease_ttl_s=ttl)
    procs = {wid: await _spawn_worker(fresh_server, wid) for wid in ("w1", "w2", "w3")}
    try:
        # Given three workers sharing the partitions about evenly,
        async def balanced() -> dict[int, str] | None:
            owners = await _owners(admin)
            counts = [list(owners.values()).count(w) for w in procs]
            return owners if len(owners) == subjects.DEFAULT_PARTITIONS and max(counts) <= 11 else None

        owners = await eventually(balanced, timeout=30, what="32 partitions shared by 3 workers")
        victim = owners[0]
        run_id = next(f"loop-{i}" for i in range(10_000) if owners[subjects.partition_of(f"loop-{i}")] == victim)
        ctl_seen = Watch()
        await admin.subscribe(subjects.ctl(run_id), cb=ctl_seen.on_ctl)
        # and a loop already under way on one of the victim's runs (two repeats: below the threshold),
        before = await publish(admin, find_file_loop(run_id, 0, repeats=2))
        # when the victim is killed with SIGKILL mid-traffic,
        procs[victim].send_signal(signal.SIGKILL)
        await procs[victim].wait()
        victims = [p for p, w in owners.items() if w == victim]

        async def taken_over() -> bool:
            now = await _owners(admin)
            return all(now.get(p) not in (None, victim) for p in victims)

        # then its partitions are owned again within two lease TTLs (plus one renewal round of slack),
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(taken_over, timeout=2 * ttl + ttl / 3 + 2, what="the victim's partitions re-owned")
        took = loop.time() - started
        # and the loop is still detected: the new owner rebuilt the window from the stream.
        await publish(admin, find_file_loop(run_id, 6, repeats=3))
        stops = await eventually(ctl_seen.stops, timeout=15, what="the new owner's stop")
        assert stops[0].reason is StopReason.LOOP_DETECTED
        assert stops[0].evidence is not None
        assert min(stops[0].evidence.seqs) < before[-1].seq, "evidence reaches back before the crash"
        assert took <= 2 * ttl + ttl / 3 + 2
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await admin.close()


async def test_a_worker_catching_up_on_a_backlog_keeps_its_leases(fresh_server: EmbeddedServer) -> None:
    # A new owner replays its partitions from `lookback_s` back: after a failover that is a flood.
    # Its lease renewals must not queue behind that flood, or the leases expire under it, the worker
    # takes them again, replays again, and decides everything twice (seen in bench.replay --max).
    ttl = 2.0
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin, lease_ttl_s=ttl)
    config = SynthConfig(runs=1000, steps=20, mix={"healthy": 0.8, "loop": 0.2}, seed=5)
    events = [e for e in generate(config) if isinstance(e, StepEvent)]
    js = admin.jetstream()
    for event in events:
        await js.publish_async(subjects.step(event.run_id), codec.encode(event))
    await js.publish_async_completed()
    stops: list[str] = []

    async def on_ctl(msg: Msg) -> None:
        if codec.decode_command(msg.data).cmd == "stop":
            stops.append(subjects.run_id_of(msg.subject))

    await admin.subscribe(subjects.CTL_ALL, cb=on_ctl)
    lost: list[int] = []
    stop = asyncio.Event()
    w = SupervisorWorker(fresh_server.endpoint("supervisor"), worker_id="catch-up", lookback_s=3600)
    task = asyncio.create_task(w.run(stop))
    try:
        await eventually(lambda: w._leases is not None, what="the worker started")
        on_lose = w.leases.on_lose

        async def record_loss(partition: int) -> None:
            lost.append(partition)
            await on_lose(partition)

        w.leases.on_lose = record_loss
        await eventually(lambda: w.processed >= len(events), timeout=60, what="the backlog processed")
        await asyncio.sleep(2 * ttl)  # a late expiry would show now
        await admin.flush()
        assert lost == [], f"leases lost while catching up: {lost}"
        assert w.processed == len(events), "no event processed twice"
        assert stops, "the loops in the backlog were stopped"
        assert len(stops) == len(set(stops)), "each run stopped once"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await admin.close()


async def test_a_new_owner_does_not_repeat_decisions_already_acted_on(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A new owner rebuilds windows by replaying the stream, so it reaches every old decision again.
    # The stream de-duplicates the command, but core subscribers (the agent) would get it again:
    # a run the operator resumed would be paused again, a stopped run stopped twice.
    paused_run, stopped_run = f"{run_id}-p", f"{run_id}-s"
    seen = {paused_run: await watch(fresh_admin, paused_run), stopped_run: await watch(fresh_admin, stopped_run)}
    async with running_worker(fresh_server, "first") as first:  # its graceful stop gives the leases back
        start = StepEvent(run_id=paused_run, seq=0, ts=1e9, kind="start", policy=Policy(loop_action="pause"))
        # Three repeats: the third pauses, and the agent holds there (steps after a pause are the run
        # going on: the same loop again would stop it).
        sent = await publish(fresh_admin, iter([start, *find_file_loop(paused_run, 1, repeats=3)]))
        sent += await publish(fresh_admin, find_file_loop(stopped_run, 0, repeats=6))
        await eventually(lambda: [c for c in seen[paused_run].commands if c.cmd == "pause"], what="the pause")
        await eventually(seen[stopped_run].stops, what="the stop")
        await send_command(fresh_admin, paused_run, Command(cmd="resume"))
        await eventually(
            lambda: first.processed >= len(sent) and first.engine.state(paused_run).status is RunStatus.RUNNING
        )
    async with running_worker(fresh_server, "second") as second:
        await eventually(lambda: second.processed >= len(sent), what="the second worker caught up")
        await asyncio.sleep(0.5)
        await fresh_admin.flush()
        pauses = [c for c in seen[paused_run].commands if c.cmd == "pause"]
        assert [c.issuer for c in pauses] == ["supervisor:first"], "the resumed run is not paused again"
        assert [c.issuer for c in seen[stopped_run].stops()] == ["supervisor:first"], "one stop per run"
        assert second.engine.state(paused_run).status is RunStatus.RUNNING
        assert second.engine.state(stopped_run).status is RunStatus.STOPPED


async def test_a_paused_run_shows_paused_also_to_a_new_owner(fresh_server: EmbeddedServer, run_id: str) -> None:
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin)
    agent_nc = await connect(fresh_server.endpoint("agent"), "t-agent")
    said_one, go = asyncio.Event(), asyncio.Event()

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc, heartbeat_s=0.2) as run:
            await run.message("one")
            said_one.set()
            await go.wait()
            await eventually(lambda: run.paused, what="the pause received")  # else "two" may go out first
            await run.message("two")  # holds here while paused

    task: asyncio.Task[None] | None = None
    try:
        async with running_worker(fresh_server, "first"):
            task = asyncio.create_task(agent())
            await asyncio.wait_for(said_one.wait(), 10)
            await send_command(admin, run_id, Command(cmd="pause"))
            go.set()
            await eventually(lambda: _with_status(admin, run_id, RunStatus.PAUSED), what="PAUSED from the owner")
        # A new owner never saw the pause command; the agent's heartbeats in the stream say it.
        async with running_worker(fresh_server, "second") as new_owner:
            await eventually(
                lambda: new_owner.engine.state(run_id).status is RunStatus.PAUSED, what="PAUSED in the new owner"
            )
            reply = await admin.request(subjects.status(run_id), b"", timeout=5)  # answered by the new owner
            state = codec.decode_json(RunState, reply.data)
            assert (state.status, state.stop_reason) == (RunStatus.PAUSED, StopReason.USER_PAUSED)
            await send_command(admin, run_id, Command(cmd="resume"))
            await asyncio.wait_for(task, 10)
            await eventually(lambda: _with_status(admin, run_id, RunStatus.COMPLETED), what="COMPLETED")
    finally:
        go.set()
        if task is not None and not task.done():
            task.cancel()
        await agent_nc.close()
        await admin.close()


async def test_a_worker_rides_out_a_server_restart(fresh_server: EmbeddedServer, run_id: str) -> None:
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin)
    before = await publish(admin, find_file_loop(run_id, 0, repeats=2))  # a loop under way, below the threshold
    await admin.close()
    async with running_worker(fresh_server, "survivor") as worker:
        await eventually(lambda: worker.processed >= len(before), what="the first steps processed")
        # When nats-server restarts on the same port and store,
        await fresh_server.stop()
        await fresh_server.start()
        admin = await connect(fresh_server.endpoint("admin"), "t-admin-again")
        try:
            seen = await watch(admin, run_id)
            partition = subjects.partition_of(run_id, worker.partitions)
            await eventually(lambda: worker.leases.holds(partition), timeout=30, what="the lease held again")
            # the worker reconnects, keeps (or takes back) its partitions, and the loop is still stopped, once.
            await publish(admin, find_file_loop(run_id, 6, repeats=3))
            stops = await eventually(seen.stops, timeout=30, what="the stop after the restart")
            await asyncio.sleep(1.0)
            assert len(seen.stops()) == 1
            assert stops[0].evidence is not None
            assert min(stops[0].evidence.seqs) < before[-1].seq, "evidence reaches back before the restart"
        finally:
            await admin.close()


async def test_a_new_owner_never_commands_a_run_already_killed(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # The old owner saw the kill; the new one only replays the steps, and the killed agent is
    # silent. A TIMEOUT pause from the new owner would become the run's last stored command and
    # hide the kill from a later resume.
    seen = await watch(fresh_admin, run_id)
    async with running_worker(fresh_server, "first"):
        fast = Policy(stall_timeout_s=0.5, tool_timeout_s=0.5)
        start = StepEvent(run_id=run_id, seq=0, ts=1e9, kind="start", policy=fast)
        await publish(fresh_admin, iter([start, *find_file_loop(run_id, 1, repeats=1)]))
        await send_command(fresh_admin, run_id, Command(cmd="kill"))
        await eventually(lambda: _with_status(fresh_admin, run_id, RunStatus.STOPPED), what="STOPPED after the kill")
    kills = len(seen.commands)
    async with running_worker(fresh_server, "second") as second:
        await eventually(lambda: run_id in second.engine.windows, what="the new owner replayed the run")
        await eventually(
            lambda: second.engine.state(run_id).status is RunStatus.STOPPED, timeout=10, what="the kill applied"
        )
        await asyncio.sleep(0.5)
        await fresh_admin.flush()
        assert seen.commands[kills:] == [], "no command after the kill"
        assert second.engine.state(run_id).stop_reason is StopReason.USER_KILLED


async def test_a_run_already_silent_before_a_takeover_is_not_given_a_fresh_timeout(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # Replayed history is seen when it happened: the silence before the new owner started counts.
    seen = await watch(fresh_admin, run_id)
    stall = 4.0
    start = StepEvent(run_id=run_id, seq=0, ts=1e9, kind="start", policy=Policy(stall_timeout_s=stall))
    await publish(fresh_admin, iter([start, *find_file_loop(run_id, 1, repeats=1)]))
    await asyncio.sleep(stall + 0.5)  # the run falls silent while no worker is watching
    loop = asyncio.get_running_loop()

    def stall_warning() -> list[dict[str, object]]:
        return [e for e in seen.events if e.get("reason") == "TIMEOUT"]

    async with running_worker(fresh_server, "late") as worker:
        started = loop.time()
        warnings = await eventually(stall_warning, timeout=stall + 2, what="the stall warning")
        took = loop.time() - started
        assert took < stall / 2, f"the stall was found {took:.1f}s after the takeover: its clock restarted"
        assert "no event for" in str(warnings[0]["evidence"])
        assert worker.engine.state(run_id).status is RunStatus.RUNNING  # a warning first; the pause comes later


async def test_after_a_server_restart_a_quiet_partition_does_not_replay_old_steps(
    fresh_server: EmbeddedServer, run_id: str
) -> None:
    # A consumer re-created after a restart resumes where it started, not at the stream's first
    # sequence: a partition that had nothing new would otherwise replay its whole retention.
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin)
    old = await publish(admin, find_file_loop(run_id, 0, repeats=1))
    await admin.close()
    await asyncio.sleep(1.5)
    async with running_worker(fresh_server, "quiet", lookback_s=1.0) as worker:  # the old steps are behind it
        await asyncio.sleep(0.5)
        assert run_id not in worker.engine.windows
        await fresh_server.stop()
        await fresh_server.start()
        admin = await connect(fresh_server.endpoint("admin"), "t-admin-again")
        try:
            sentinel = next(
                f"{run_id}-{i}"
                for i in range(1000)
                if subjects.partition_of(f"{run_id}-{i}") != subjects.partition_of(run_id)
            )
            # Once the consumers are back (a new step elsewhere is read), the old ones were not replayed.
            await eventually(lambda: _published_and_seen(admin, worker, sentinel), timeout=30, what="consumers back")
            assert run_id not in worker.engine.windows, f"{len(old)} old steps replayed after the restart"
        finally:
            await admin.close()


async def _published_and_seen(admin: Client, worker: SupervisorWorker, run_id: str) -> bool:
    if run_id not in worker.engine.windows:
        await publish(admin, find_file_loop(run_id, 0, repeats=1))
        await asyncio.sleep(0.5)
    return run_id in worker.engine.windows


async def test_a_new_owner_catching_up_does_not_rewind_the_runs_it_replays(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A new owner rebuilds a run's window step by step. Until it has replayed all of it, what it
    # knows is older than what the previous owner last wrote: rv_runs, status answers and warnings
    # must not go back in time (a stopped run shown RUNNING, a warning published again).
    seen = await watch(fresh_admin, run_id)
    async with running_worker(fresh_server, "first") as first:
        sent = await publish(fresh_admin, find_file_loop(run_id, 0, repeats=6))
        await eventually(seen.stops, what="the stop")
        await eventually(lambda: first.processed >= len(sent), what="the first worker read everything")
    await eventually(lambda: _with_status(fresh_admin, run_id, RunStatus.STOPPED), what="STOPPED in rv_runs")
    verdicts_before = list(seen.events)
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    watcher = await kv.watch(run_id, include_history=False)
    written: list[RunState] = []

    async def collect() -> None:
        async for entry in watcher:
            if entry is not None and entry.value:
                written.append(codec.decode_json(RunState, entry.value))  # JSON, as people read it

    collecting = asyncio.create_task(collect())
    answers: list[RunState] = []

    def slow_replay(worker: SupervisorWorker) -> None:
        # After each replayed step: time for a flush, then the question an operator would ask.
        judge = worker._step

        async def step(partition: int, msg: Msg, stored_at: float | None) -> None:
            await judge(partition, msg, stored_at)
            await asyncio.sleep(0.1)
            state = await fetch_state(fresh_admin, run_id)
            if state is not None:
                answers.append(state)

        worker._step = step  # type: ignore[method-assign]

    async with running_worker(fresh_server, "second", before_start=slow_replay) as second:
        await eventually(lambda: second.processed >= len(sent), what="the second worker caught up")
        await asyncio.sleep(0.3)
        assert second.engine.state(run_id).status is RunStatus.STOPPED
    collecting.cancel()
    await watcher.stop()  # type: ignore[no-untyped-call]
    assert len(answers) == len(sent)
    assert [s.status for s in answers if s.status is not RunStatus.STOPPED] == [], "status answers rewound"
    assert written, "the state is written once the replay is complete"
    assert [s.status for s in written if s.status is not RunStatus.STOPPED] == [], "rv_runs rewound"
    assert seen.events == verdicts_before, "a verdict published again by the new owner"


async def test_a_worker_giving_a_partition_back_writes_its_runs_states_first(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A worker that joins takes half the partitions; the one giving them back has states not yet
    # written (rv_runs is written once per flush period). The newcomer's catch-up reads rv_runs, and
    # so do operators: what the old owner knew must be there before the lease changes hands.
    given_back = next(r for r in (f"{run_id}-{i}" for i in range(1000)) if subjects.partition_of(r) >= 16)
    seen = await watch(fresh_admin, given_back)
    async with running_worker(fresh_server, "old", flush_s=3600) as old:
        await publish(fresh_admin, find_file_loop(given_back, 0, repeats=4))
        await eventually(seen.stops, what="the stop")
        assert await stored_state(fresh_admin, given_back) is None, "not written yet: the flush is hours away"
        async with running_worker(fresh_server, "new", leases=16):
            await eventually(lambda: len(old.leases.owned) == 16, what="the old worker gave half back")
            state = await stored_state(fresh_admin, given_back)
            assert state is not None
            assert state.status is RunStatus.STOPPED


async def test_a_stop_is_not_lost_while_the_control_stream_is_unavailable(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # The stop is the whole point: if storing it fails (JetStream unavailable, the stream being
    # restored), the worker must keep trying, not mark the run decided and let the loop run on.
    js = fresh_admin.jetstream()
    async with running_worker(fresh_server, "solo") as worker:
        await js.delete_stream(subjects.CONTROL_STREAM)
        await publish(fresh_admin, find_file_loop(run_id, 0, repeats=4))
        await eventually(lambda: worker.engine.state(run_id).status is RunStatus.STOPPED, what="the decision")
        await asyncio.sleep(0.5)  # a first attempt to store it fails meanwhile
        await provision(fresh_admin)
        stored = await eventually(lambda: last_stored_command(js, run_id), timeout=20, what="the stored stop")
        assert stored.command.cmd == "stop"
        assert stored.command.reason is StopReason.LOOP_DETECTED


async def test_a_state_that_could_not_be_written_is_written_later(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A stopped run sends nothing more: if writing its final state fails once, nothing would
    # write it again, and rv_runs would show it running for ever.
    js = fresh_admin.jetstream()
    async with running_worker(fresh_server, "solo") as worker:
        await js.delete_key_value(subjects.RUNS_BUCKET)
        await publish(fresh_admin, find_file_loop(run_id, 0, repeats=4))
        await eventually(lambda: worker.engine.state(run_id).status is RunStatus.STOPPED, what="the decision")
        await asyncio.sleep(0.5)  # flushes fail meanwhile
        await provision(fresh_admin)
        state = await eventually(lambda: stored_state(fresh_admin, run_id), what="the state in rv_runs")
        assert state.status is RunStatus.STOPPED


async def test_a_decision_on_history_is_not_lost_while_the_control_stream_is_unavailable(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A new owner reads a run's last stored command before deciding on replayed history; if that
    # read fails, the decision must wait for it, not vanish.
    js = fresh_admin.jetstream()
    await publish(fresh_admin, find_file_loop(run_id, 0, repeats=4))  # nobody watching yet
    await js.delete_stream(subjects.CONTROL_STREAM)
    async with running_worker(fresh_server, "late") as worker:
        await eventually(lambda: worker.engine.state(run_id).status is RunStatus.STOPPED, what="the decision")
        await asyncio.sleep(0.5)  # the read of the last command and a first store fail meanwhile
        await provision(fresh_admin)
        stored = await eventually(lambda: last_stored_command(js, run_id), timeout=20, what="the stored stop")
        assert stored.command.cmd == "stop"


def _spending(run_id: str, seq: int, cost: float) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=1000, tokens_out=10, cost_usd=cost)


async def test_a_budget_and_its_policy_outlive_a_takeover_past_the_lookback(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    # A run longer than the lookback: a new owner replays none of its start (its policy) nor of
    # what it spent so far. Its budget must not start again from zero under the default policy.
    budget = Policy(max_cost_usd=1.0)
    start = StepEvent(run_id=run_id, seq=1, ts=1e9, kind="start", task="spend wisely", policy=budget)
    async with running_worker(fresh_server, "first"):
        await publish(fresh_admin, iter([start, _spending(run_id, 2, 0.7)]))
        await eventually(lambda: _with_cost(fresh_admin, run_id, 0.7), what="0.7 spent, in rv_runs")
    await asyncio.sleep(1.5)
    async with running_worker(fresh_server, "second", lookback_s=1.0) as second:
        seen = await watch(fresh_admin, run_id)
        await publish(
            fresh_admin, iter([_spending(run_id, 3, 0.2), _spending(run_id, 4, 0.2), _spending(run_id, 5, 0.1)])
        )
        stops = await eventually(seen.stops, what="the budget's stop from the new owner")
        assert stops[0].reason is StopReason.BUDGET_EXCEEDED
        assert stops[0].evidence is not None
        assert "1.2 of 1 (policy max_cost_usd)" in stops[0].evidence.summary
        state = second.engine.state(run_id)
        assert (state.task, state.started_at, state.counters.steps) == ("spend wisely", 1e9, 0)
        assert state.counters.tokens == 4 * 1010


async def test_an_evicted_run_that_comes_back_keeps_its_budget_and_a_stopped_one_stays_stopped(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:
    stopped_run = f"{run_id}-stopped"
    budget = Policy(max_cost_usd=1.0, warn_first=False)

    def evict_soon(w: SupervisorWorker) -> None:
        w.idle_s = w.finished_s = 0.5

    async with running_worker(fresh_server, "solo", before_start=evict_soon) as worker:
        seen = await watch(fresh_admin, run_id)
        # Given a run that spent 0.7 of its 1.0 and went quiet long enough to be evicted,
        start = StepEvent(run_id=run_id, seq=1, ts=1e9, kind="start", policy=budget)
        await publish(fresh_admin, iter([start, _spending(run_id, 2, 0.7)]))
        await eventually(lambda: _with_cost(fresh_admin, run_id, 0.7), what="0.7 spent, in rv_runs")
        await eventually(lambda: run_id not in worker.engine.windows, what="the quiet run evicted")
        # when it spends 0.4 more, that is over its budget: stopped.
        await publish(fresh_admin, iter([_spending(run_id, 3, 0.4)]))
        stops = await eventually(seen.stops, what="the stop of the run that came back")
        assert stops[0].reason is StopReason.BUDGET_EXCEEDED
        # A run stopped, evicted, and then heard from again (a step still in flight) stays stopped:
        stopped_seen = await watch(fresh_admin, stopped_run)
        start = StepEvent(run_id=stopped_run, seq=1, ts=1e9, kind="start", policy=budget)
        await publish(fresh_admin, iter([start, _spending(stopped_run, 2, 1.5)]))
        await eventually(lambda: _with_status(fresh_admin, stopped_run, RunStatus.STOPPED), what="STOPPED in rv_runs")
        await eventually(lambda: stopped_run not in worker.engine.windows, what="the stopped run evicted")
        await publish(fresh_admin, iter([_spending(stopped_run, 3, 0.1)]))
        await eventually(lambda: stopped_run in worker.engine.windows, what="the late step judged")
        assert worker.engine.state(stopped_run).status is RunStatus.STOPPED
        await asyncio.sleep(0.3)  # a flush or two
        stored = await stored_state(fresh_admin, stopped_run)
        assert stored is not None
        assert (stored.status, round(stored.counters.cost_usd, 9)) == (
            RunStatus.STOPPED,
            1.6,
        )  # the late step spent too
        assert len(stopped_seen.stops()) == 1, "never two stops for one run"


async def _with_cost(nc: Client, run_id: str, cost: float) -> RunState | None:
    state = await stored_state(nc, run_id)
    return state if state is not None and abs(state.counters.cost_usd - cost) < 1e-9 else None


async def test_a_finished_run_leaves_memory_soon_and_its_status_is_still_answered(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str
) -> None:

    def forget_finished_soon(w: SupervisorWorker) -> None:
        w.finished_s = 0.3

    async with running_worker(fresh_server, "solo", before_start=forget_finished_soon) as worker:
        done = [*find_file_loop(run_id, 1, repeats=1)]
        done.append(StepEvent(run_id=run_id, seq=4, ts=1e9 + 4, kind="final", observation="patch"))
        await publish(fresh_admin, iter(done))
        await eventually(lambda: _with_status(fresh_admin, run_id, RunStatus.COMPLETED), what="COMPLETED in rv_runs")
        await eventually(lambda: run_id not in worker.engine.windows, what="the finished run forgotten")
        reply = await fresh_admin.request(subjects.status(run_id), b"", timeout=5)  # the owner answers from rv_runs
        state = codec.decode_json(RunState, reply.data)
        assert (state.status, state.counters.tool_calls, state.last_seq) == (RunStatus.COMPLETED, 1, 4)
        # An operator's command for the forgotten run changes neither what it did nor how it ended
        # (it once rewrote a COMPLETED run as STOPPED/USER_KILLED, later its last step as `start`):
        # it is reported as ignored, and its state is not written again.
        runs = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
        before = (await runs.get(run_id)).revision or 0
        seen = await watch(fresh_admin, run_id)
        await send_command(fresh_admin, run_id, Command(cmd="kill", note="cleanup"))
        await eventually(lambda: seen.events, what="the kill reported as ignored")
        assert "kill ignored: run" in str(seen.events[0]["error"])
        assert run_id not in worker.engine.windows
        assert (await runs.get(run_id)).revision == before
        after = await stored_state(fresh_admin, run_id)
        assert after is not None
        assert (after.status, after.stop_reason, after.counters.tool_calls, after.counters.tokens) == (
            RunStatus.COMPLETED, state.stop_reason, 1, 940,
        )  # fmt: skip


async def test_a_worker_judges_runs_without_a_policy_by_its_policy_file(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"max_cost_usd": 1.0, "warn_first": false}')
    proc = await _spawn_worker(fresh_server, "by-file", "--policy", str(policy_file))
    try:
        seen = await watch(fresh_admin, run_id)
        await eventually(lambda: _all_owned_by(fresh_admin, "by-file"), timeout=20, what="the worker's leases")
        start = StepEvent(run_id=run_id, seq=1, ts=1e9, kind="start", task="no policy of its own")
        await publish(fresh_admin, iter([start, _spending(run_id, 2, 0.6), _spending(run_id, 3, 0.6)]))
        stops = await eventually(seen.stops, what="the stop the file's budget asks for")
        assert stops[0].reason is StopReason.BUDGET_EXCEEDED
        assert stops[0].evidence is not None
        assert "of 1 (policy max_cost_usd)" in stops[0].evidence.summary
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _all_owned_by(nc: Client, worker_id: str) -> bool:
    owners = await _owners(nc)
    return len(owners) == subjects.DEFAULT_PARTITIONS and set(owners.values()) == {worker_id}


def goto_reads(run_id: str, first_seq: int, lines: range) -> Iterator[StepEvent]:
    """``goto N`` in a file that fits on one screen: the same read apart from its number (DESIGN §4)."""
    seq = first_seq
    for line in lines:
        call = f"c{seq}"
        yield StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=1200, tokens_out=30, cost_usd=0.002)
        yield StepEvent(
            run_id=run_id, seq=seq + 1, ts=1e9 + seq + 1, kind="tool_call", tool="goto", call_id=call,
            args={"command": f"goto {line}"},
        )  # fmt: skip
        yield StepEvent(
            run_id=run_id, seq=seq + 2, ts=1e9 + seq + 2, kind="tool_result", tool="goto", call_id=call,
            observation="[File: /repo/setup.py (12 lines total)]\n1:from setuptools import setup\n2:setup()", ok=True,
        )  # fmt: skip
        seq += 3


async def test_a_run_resumed_after_a_loop_pause_is_judged_again_and_stopped(
    worker: SupervisorWorker, agent_nc: Client, operator: Client, run_id: str
) -> None:
    # The trial: paused for a loop (loop_action="pause"), resumed by the operator, then 46
    # more near-identical reads were never judged again.
    start = StepEvent(run_id=run_id, seq=0, ts=1e9, kind="start", task="fix setup", policy=Policy(loop_action="pause"))
    # Four reads: the third warns, the fourth pauses (an agent on our SDK holds there).
    await publish(agent_nc, iter([start, *goto_reads(run_id, 1, range(10, 14))]))
    paused = await eventually(lambda: _with_status(operator, run_id, RunStatus.PAUSED), what="the loop pause")
    assert paused.stop_reason is StopReason.LOOP_DETECTED
    assert paused.last_verdict is not None
    assert paused.last_verdict.evidence.spent is not None

    await send_command(operator, run_id, Command(cmd="resume"))
    await eventually(lambda: _with_status(operator, run_id, RunStatus.RUNNING), what="the resumed run")
    await publish(agent_nc, goto_reads(run_id, 100, range(20, 66)))
    stopped = await eventually(lambda: _with_status(operator, run_id, RunStatus.STOPPED), what="the stop")
    assert stopped.stop_reason is StopReason.LOOP_DETECTED
    verdict = stopped.last_verdict
    assert verdict is not None
    assert verdict.severity == "stop"
    # Judged afresh from the resume: the evidence is the reads after it, and it says what they cost.
    assert min(verdict.evidence.seqs) >= 100
    spent = verdict.evidence.spent
    assert spent is not None
    assert spent.since_seq >= 100
    assert spent.tokens >= 1230
    assert spent.cost_usd > 0
    assert stopped.signal is not None
    assert stopped.signal.source == "novelty"


async def test_a_lease_lost_says_whether_it_expired_or_was_taken(
    fresh_admin: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # After nats-server was down longer than the TTL, every lease had expired, and each was logged
    # "lost to another worker" when no other worker existed.
    js = fresh_admin.jetstream()
    kv = await js.key_value(subjects.LEASES_BUCKET)

    async def ignore(partition: int) -> None:
        del partition

    leases = Leases(js, kv, "w-says-why", partitions=2, ttl_s=30, on_gain=ignore, on_lose=ignore)
    await leases.round()
    await kv.delete(subjects.lease_key(0))  # as its TTL would
    await kv.put(subjects.lease_key(1), b"w-other")
    caplog.set_level(logging.WARNING, logger="runvisor.actors.supervisor.leases")
    await leases._renew()
    said = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("lease lost"))
    assert said == ["lease lost: it expired (the server was unreachable, or this worker stalled, for longer "
                    "than its TTL)", "lease lost: taken by w-other"]  # fmt: skip
