"""`python -m bench.record` against a real server: what agents publish is what lands in the file."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bench.traffic import read_events
from runvisor.actors.connection import connect
from runvisor.actors.endpoint import password_env
from runvisor.actors.server import EmbeddedServer
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent

pytestmark = pytest.mark.integration

WAIT_S = 20


def _steps(run_id: str, n: int) -> list[StepEvent]:
    return [
        StepEvent(run_id=run_id, seq=0, ts=1.0, kind="start", task="record me", policy={"max_steps": 50}),
        *(
            StepEvent(run_id=run_id, seq=k, ts=1.0 + k, kind="tool_call", tool="grep", call_id=f"c{k}",
                      args={"command": f"grep -n x f{k}.py"})
            for k in range(1, n)
        ),
    ]  # fmt: skip


@asynccontextmanager
async def recorder(server: EmbeddedServer, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``bench.record`` as a subprocess logged in as admin through NATS_URL, once it is subscribed."""
    env = {k: v for k, v in os.environ.items() if k != password_env("admin") and k != "NATS_CREDS"}
    env |= {"NATS_URL": server.url, "NATS_USER": "admin", "NATS_PASSWORD": server.credentials.passwords["admin"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.record", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        seen: list[str] = []
        while not any("recording" in line for line in seen):  # printed once the server has the subscription
            line = (await asyncio.wait_for(proc.stderr.readline(), WAIT_S)).decode()
            assert line, f"bench.record exited early: {''.join(seen)}"
            seen.append(line)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _publish_as_agent(server: EmbeddedServer, run_id: str, payloads: list[bytes]) -> None:
    nc = await connect(server.endpoint("agent"), "test-agent")
    try:
        js = nc.jetstream()
        for data in payloads:  # as the agent SDK does: through the stream, which stores them partitioned
            await js.publish(subjects.step(run_id), data, headers=codec.MSGPACK_HEADERS)
    finally:
        await nc.close()


async def test_sigterm_writes_every_event_published_before_it(
    server: EmbeddedServer, run_id: str, tmp_path: Path
) -> None:
    # Given a recorder on the default subject, rv.step.>
    out = tmp_path / "live.jsonl"
    steps = _steps(run_id, 6)
    async with recorder(server, "--out", str(out)) as proc:
        # When an agent publishes steps and one undecodable message, then the recorder is stopped
        await _publish_as_agent(server, run_id, [codec.encode(s) for s in steps[:3]] + [b"\x00garbage"]
                                + [codec.encode(s) for s in steps[3:]])  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
    # Then the file holds exactly those events, in order, and the summary counts the bad one
    assert proc.returncode == 0, stderr.decode()
    # Other tests share the server, so only this run's events are compared.
    assert [e for e in read_events(out) if e.run_id == run_id] == steps
    summary = stdout.decode().strip()
    assert summary.startswith("recorded ")
    assert "skipped 1" in summary
    assert str(out) in summary


async def test_max_events_stops_by_itself_after_that_many(server: EmbeddedServer, run_id: str, tmp_path: Path) -> None:
    out = tmp_path / "live.msgpack"
    steps = _steps(run_id, 5)
    args = ("--out", str(out), "--subject", subjects.step(run_id), "--max-events", "3")
    async with recorder(server, *args) as proc:
        await _publish_as_agent(server, run_id, [codec.encode(s) for s in steps])
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, stderr.decode()
    assert list(read_events(out)) == steps[:3]
    assert stdout.decode().strip() == f"recorded 3 events of 1 runs, skipped 0, to {out}"


async def test_a_bad_output_name_is_refused_before_connecting(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.record", "--out", str(tmp_path / "x.csv"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 2
    assert "unknown traffic format" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_duration_ends_a_quiet_recording_with_an_empty_file(server: EmbeddedServer, tmp_path: Path) -> None:
    out = tmp_path / "quiet.jsonl"
    async with recorder(server, "--out", str(out), "--subject", "rv.step.nobody-here", "--duration", "0.2") as proc:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, stderr.decode()
    assert out.read_bytes() == b""
    assert stdout.decode().strip() == f"recorded 0 events of 0 runs, skipped 0, to {out}"
