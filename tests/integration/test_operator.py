"""Reading runs as operators do (``runvisor ps`` and ``top``), against a real server."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys

from nats.aio.client import Client

from runvisor.actors.operator import list_states
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams._bucket import latest_values
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Counters, RunState


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
        f"{shlex.quote(sys.executable)} -m runvisor.actors.cli ps | head -2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert len(out.decode().splitlines()) == 2
    assert err.decode() == ""
