"""Runs as operators read and command them (``runvisor ps``, the ``nats`` CLI), and how long
``rv_runs`` keeps them, against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from runvisor.actors.operator import list_states
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.streams._bucket import latest_values
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Counters, RunState, StepEvent, StepKind
from runvisor.protocols.reasons import RunStatus
from runvisor.testing import eventually


async def test_list_states_reads_every_run_newest_first_and_skips_what_is_not_a_state(fresh_admin: Client) -> None:
    assert await list_states(fresh_admin) == []  # an empty bucket: nothing, at once
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    for i in range(300):  # more than nats-py's watcher queue holds (256)
        await kv.put(f"run-{i}", codec.encode(RunState(run_id=f"run-{i}", updated_at=1e9 + i)))
    await kv.put("run-5", codec.encode(RunState(run_id="run-5", updated_at=2e9, counters=Counters(steps=7))))
    await kv.delete("run-6")
    await kv.put("not-a-state", b"\xc1")
    states = await list_states(fresh_admin)
    assert len(states) == 299
    assert [s.run_id for s in states[:3]] == ["run-5", "run-299", "run-298"]
    assert states[0].counters.steps == 7  # the latest value of a key, not its history
    assert "run-6" not in {s.run_id for s in states}


async def test_latest_values_leaves_out_deleted_keys_and_finds_none_at_once_when_none_match(
    fresh_admin: Client,
) -> None:
    # How a worker counts the members of rv_leases: the m.* keys among the p* keys.
    js = fresh_admin.jetstream()
    kv = await js.key_value(subjects.LEASES_BUCKET)
    await kv.put("p1", b"w1")
    assert await asyncio.wait_for(latest_values(js, subjects.LEASES_BUCKET, "m.>"), 2) == {}
    await kv.put("m.w1", b"w1")
    await kv.put("m.w2", b"w2")
    await kv.delete("m.w2")  # a worker that stopped
    assert await latest_values(js, subjects.LEASES_BUCKET, "m.>") == {"m.w1": b"w1"}


async def test_ps_into_a_pipe_closed_early_ends_quietly(fresh_server: EmbeddedServer, fresh_admin: Client) -> None:
    # `runvisor ps | head -2` once ended in a BrokenPipeError traceback.
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    for i in range(3000):
        await kv.put(f"run-{i}", codec.encode(RunState(run_id=f"run-{i}")))
    env = {
        **os.environ,
        "NATS_URL": fresh_server.url,
        "RV_OPERATOR_PASSWORD": fresh_server.credentials.passwords["operator"],
    }
    shell = await asyncio.create_subprocess_shell(
        f"{shlex.quote(sys.executable)} -m runvisor.actors.cli ps --limit 3000 | head -2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert len(out.decode().splitlines()) == 2
    assert err.decode() == ""


@contextlib.asynccontextmanager
async def supervised(server: EmbeddedServer, **options: Any) -> AsyncIterator[SupervisorWorker]:
    """A supervisor worker holding every partition, with ``options``; stopped on exit."""
    stop = asyncio.Event()
    worker = SupervisorWorker(server.endpoint("supervisor"), worker_id="w", flush_s=0.05, tick_s=0.1, **options)
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: worker._leases is not None and len(worker.leases.owned) == worker.partitions)
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def step(run_id: str, seq: int, kind: StepKind, **fields: Any) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind=kind, **fields)


async def publish(nc: Client, *events: StepEvent) -> None:
    for event in events:
        await nc.jetstream().publish(subjects.step(event.run_id), codec.encode(event))


async def stored(nc: Client, run_id: str) -> KeyValue.Entry | None:
    try:
        return await (await nc.jetstream().key_value(subjects.RUNS_BUCKET)).get(run_id)
    except KeyNotFoundError:
        return None


async def reports(nc: Client, run_id: str) -> list[dict[str, Any]]:
    """What arrives on the run's ``rv.event`` from now on (a list that fills up)."""
    seen: list[dict[str, Any]] = []

    async def on_event(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    await nc.subscribe(subjects.event(run_id), cb=on_event)
    await nc.flush()
    return seen


async def test_a_kill_from_the_nats_cli_for_an_unknown_run_leaves_no_phantom_run(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # `nats pub rv.ctl.nosuchrun kill` once made `ps` list a phantom `nosuchrun STOPPED USER_KILLED`.
    async with supervised(fresh_server) as worker:
        said = await reports(fresh_admin, "nosuchrun")
        await fresh_admin.publish(subjects.ctl("nosuchrun"), b"kill")  # the bytes `nats pub` sends
        await eventually(lambda: said, what="the report on rv.event")
        assert said == [
            {
                "run_id": "nosuchrun",
                "error": "kill ignored: no run 'nosuchrun' is known",
                "command": said[0]["command"],
            }
        ]
        assert "nosuchrun" not in worker.engine.windows  # so nothing of it is ever written
    assert await stored(fresh_admin, "nosuchrun") is None


async def test_commands_from_the_nats_cli_never_rewrite_a_finished_run(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # Given a completed run that its worker wrote down and then forgot (finished_s=0),
    async with supervised(fresh_server, finished_s=0.0) as worker:
        await publish(fresh_admin, step("done", 1, "start", task="t", agent="a"), step("done", 2, "final", ok=True))
        await eventually(lambda: stored(fresh_admin, "done"), what="the state written")
        await eventually(lambda: "done" not in worker.engine.windows, what="the run forgotten")
        before = await stored(fresh_admin, "done")
        assert before is not None
        # when an operator sends it a kill and a pause with the nats CLI,
        said = await reports(fresh_admin, "done")
        await fresh_admin.publish(subjects.ctl("done"), b"kill")
        await fresh_admin.publish(subjects.ctl("done"), b'{"cmd": "pause", "note": "too late"}')
        await eventually(lambda: len(said) == 2, what="two reports")
        # then both are reported as ignored, and its stored state stays as it ended (once its last
        # event flipped from final to start and a kill rewrote it as USER_KILLED).
        assert [r["error"] for r in said] == [
            "kill ignored: run done has ended (COMPLETED): a kill would change nothing",
            "pause ignored: run done has ended (COMPLETED): a pause would change nothing",
        ]
        assert "done" not in worker.engine.windows
    after = await stored(fresh_admin, "done")
    assert after is not None
    assert after.revision == before.revision
    state = codec.decode_stored(RunState, after.value or b"")
    assert (state.status, state.last_kind) == (RunStatus.COMPLETED, "final")


async def test_a_finished_run_leaves_rv_runs_after_keep_finished_and_a_live_one_stays(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # rv_runs once kept every run ever. Given workers that keep finished runs for one second,
    async with supervised(fresh_server, keep_finished_s=1.0):
        await publish(fresh_admin, step("live", 1, "start", task="t"), step("live", 2, "message", observation="hi"))
        await publish(fresh_admin, step("held", 1, "start", task="t"))
        await fresh_admin.publish(subjects.ctl("held"), b"pause")
        await publish(fresh_admin, step("ended", 1, "start", task="t"), step("ended", 2, "final", ok=True))
        await eventually(lambda: _status(fresh_admin, "held", RunStatus.PAUSED), what="held paused")
        await eventually(lambda: _status(fresh_admin, "ended", RunStatus.COMPLETED), what="ended written")
        # the finished run's state expires on its own (a per-message TTL on its last write),
        raw = await fresh_admin.jetstream().get_msg(
            f"KV_{subjects.RUNS_BUCKET}", subject=subjects.kv_subject(subjects.RUNS_BUCKET, "ended"), direct=True
        )
        assert (raw.headers or {}).get("Nats-TTL") == "1"
        await eventually(lambda: _gone(fresh_admin, "ended"), timeout=15, what="the finished run gone")
    # while the live runs, running and paused, written as long ago, stay.
    assert await _status(fresh_admin, "live", RunStatus.RUNNING)
    assert await _status(fresh_admin, "held", RunStatus.PAUSED)


async def test_a_pause_sent_right_after_a_start_holds_when_the_worker_is_behind(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # CI saw the pause lost: a worker behind on steps takes a command at once, so it recalled the start
    # from RV_STEPS to pause it, and then took the same start, when it came, for the run going on.
    backlog = [step(f"busy-{i % 20}", i // 20 + 1, "message", observation=f"line {i}") for i in range(20_000)]
    for event in backlog:
        await fresh_admin.publish(subjects.step(event.run_id), codec.encode(event))
    await fresh_admin.flush()
    js = fresh_admin.jetstream()
    await eventually(lambda: _stored_steps(js, len(backlog)), what="the backlog stored")
    async with supervised(fresh_server) as worker:
        await publish(fresh_admin, step("held", 1, "start", task="t"))
        await fresh_admin.publish(subjects.ctl("held"), b"pause")
        await eventually(lambda: worker.processed > len(backlog), timeout=30, what="the backlog judged")
        await eventually(lambda: _status(fresh_admin, "held", RunStatus.PAUSED), what="held paused")
        await asyncio.sleep(0.3)  # a few flushes later, still paused
        assert await _status(fresh_admin, "held", RunStatus.PAUSED)
        assert worker.engine.state("held").status is RunStatus.PAUSED


async def _stored_steps(js: JetStreamContext, count: int) -> bool:
    return (await js.stream_info(subjects.STEPS_STREAM)).state.messages >= count


async def test_rv_stats_says_when_the_runs_a_worker_holds_are_forgotten(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # rv.stats was published only when a step arrived: runs forgotten in a quiet spell stayed counted.
    reports: list[dict[str, Any]] = []

    async def on_stats(msg: Msg) -> None:
        reports.append(json.loads(msg.data))

    await fresh_admin.subscribe(subjects.stats("w"), cb=on_stats)
    async with supervised(fresh_server, idle_s=0.5):
        await publish(fresh_admin, step("quiet", 1, "start", task="t"), step("quiet", 2, "message", observation="hi"))
        await eventually(lambda: reports and reports[-1]["runs"] == 1, what="one run held")
        processed = reports[-1]["processed"]
        await eventually(lambda: reports[-1]["runs"] == 0, what="the quiet run forgotten, said on rv.stats")
        assert reports[-1]["processed"] == processed  # nothing arrived meanwhile


async def _status(nc: Client, run_id: str, status: RunStatus) -> bool:
    entry = await stored(nc, run_id)
    return entry is not None and codec.decode_stored(RunState, entry.value or b"").status is status


async def _gone(nc: Client, run_id: str) -> bool:
    return await stored(nc, run_id) is None


async def test_a_bucket_without_per_message_ttls_is_fixed_by_provisioning_and_meanwhile_still_written(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # Given rv_runs as a deployment made before TTLs were used (no allow_msg_ttl),
    js = fresh_admin.jetstream()
    await js.delete_stream(f"KV_{subjects.RUNS_BUCKET}")
    await js.add_stream(
        StreamConfig(
            name=f"KV_{subjects.RUNS_BUCKET}", subjects=[f"$KV.{subjects.RUNS_BUCKET}.>"], max_msgs_per_subject=1,
            allow_direct=True, allow_rollup_hdrs=True, deny_delete=True, discard=DiscardPolicy.NEW,
        )
    )  # fmt: skip
    # a worker still writes finished states (a TTL there would have every write refused),
    async with supervised(fresh_server):
        await publish(fresh_admin, step("old", 1, "start", task="t"), step("old", 2, "final", ok=True))
        await eventually(lambda: _status(fresh_admin, "old", RunStatus.COMPLETED), what="the state written")
    # and provisioning turns TTLs on.
    report = await provision(fresh_admin)
    assert "allow_msg_ttl" in report[subjects.RUNS_BUCKET]
    assert (await js.stream_info(f"KV_{subjects.RUNS_BUCKET}")).config.allow_msg_ttl is True
