"""Reaching NATS, with real processes and a real server: a worker started before its server, or
before it is provisioned, waits and then serves; told to stop meanwhile, it stops; a wrong password
or a missing server is one clear line, never a traceback, a flood of log lines or a hang."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from runvisor.actors.agent import ConnectError, Run
from runvisor.actors.connection import ConnectStoppedError, connect
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.server import EmbeddedServer, free_port, provision
from runvisor.errors import NotProvisionedError
from runvisor.protocols import subjects
from runvisor.testing import eventually


def _env(server: EmbeddedServer, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NATS_URL": server.url, **server.credentials.environment(), "RUNVISOR_LOG": "INFO"}
    return {**env, **extra}


async def _start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _finish(proc: asyncio.subprocess.Process, timeout: float = 20) -> tuple[int, str]:
    """Wait for ``proc`` to exit; its status and stderr."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def _leases_held_by(admin: Client, worker_id: str) -> int:
    kv = await admin.jetstream().key_value(subjects.LEASES_BUCKET)
    held = 0
    for p in range(subjects.DEFAULT_PARTITIONS):
        try:
            entry = await kv.get(subjects.lease_key(p))
        except Exception:
            continue
        held += entry.value == worker_id.encode()
    return held


async def test_a_worker_started_before_its_server_serves_once_it_is_up(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats")  # its port and passwords are known; it is not running yet
    proc = await _start(_env(server), "supervisor", "--id", "early")
    admin: Client | None = None
    try:
        # Given a worker that has been trying to reach its server for a while (each half second),
        await asyncio.sleep(2.5)
        assert proc.returncode is None, "the worker gave up"
        # when the server comes up and is provisioned,
        await server.start()
        admin = await connect(server.endpoint("admin"), "t-admin")
        await provision(admin)

        # then the worker takes the partitions,
        async def all_held() -> bool:
            assert admin is not None
            return await _leases_held_by(admin, "early") == subjects.DEFAULT_PARTITIONS

        await eventually(all_held, timeout=30, what="the early worker holding every partition")
        # and stops cleanly when told to;
        proc.send_signal(signal.SIGTERM)
        rc, err = await _finish(proc)
        assert rc == 0, err
        # the wait said where it could not connect, once (not once per attempt), without a traceback.
        assert err.count(f"cannot reach NATS at {server.url}") == 1, err
        assert "Traceback" not in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if admin is not None:
            await admin.close()
        await server.stop()


async def test_a_worker_told_to_stop_before_its_server_is_up_stops(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats")  # never started
    proc = await _start(_env(server), "supervisor")
    await asyncio.sleep(1.5)
    assert proc.returncode is None, "the worker gave up instead of waiting for its server"
    proc.send_signal(signal.SIGTERM)
    rc, err = await _finish(proc, timeout=10)
    assert rc == 0, err
    assert "stopped before a connection" in err, err
    assert "Traceback" not in err, err


async def test_a_worker_waits_for_its_server_to_be_provisioned(fresh_server: EmbeddedServer) -> None:
    proc = await _start(_env(fresh_server), "supervisor", "--id", "patient")
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    try:
        assert proc.stderr is not None
        # Given a worker that found its server without runvisor's streams and buckets,
        said = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"is not provisioned for runvisor" in said, said
        assert b"waiting for it" in said, said
        # when the server is provisioned, the worker serves: it takes the partitions.
        await provision(admin)

        async def all_held() -> bool:
            return await _leases_held_by(admin, "patient") == subjects.DEFAULT_PARTITIONS

        await eventually(all_held, timeout=30, what="the worker holding every partition after provisioning")
        proc.send_signal(signal.SIGTERM)
        rc, err = await _finish(proc)
        assert rc == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await admin.close()


@pytest.mark.parametrize("args", [("ps",), ("why", "run-1"), ("pause", "run-1"), ("supervisor",)])
async def test_a_wrong_password_is_one_clear_error_at_once(server: EmbeddedServer, args: tuple[str, ...]) -> None:
    role = "supervisor" if args[0] == "supervisor" else "operator"
    env = _env(server, **{f"RV_{role.upper()}_PASSWORD": "wrong"})
    # A minute to connect: refused at once, it never waits for that (the test would time out).
    rc, err = await _finish(await _start(env, "--connect-timeout", "60", *args), timeout=20)
    assert rc == 2, err
    assert f"cannot connect to {server.url} as {role}: the server refused the login" in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("args", [("ps",), ("kill", "run-1"), ("top",)])
async def test_an_operator_command_without_a_server_is_one_clear_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "NATS_URL": url, "RV_OPERATOR_PASSWORD": "x"}
    rc, err = await _finish(await _start(env, "--connect-timeout", "1.5", *args))
    assert rc == 2, err
    assert f"runvisor: cannot connect to {url} as operator: no connection within 1.5 s" in err, err
    assert "Is nats-server running there?" in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("args", [("ps",), ("why", "run-1"), ("resume", "run-1")])
async def test_an_operator_command_on_an_unprovisioned_server_says_so(
    fresh_server: EmbeddedServer, args: tuple[str, ...]
) -> None:
    rc, err = await _finish(await _start(_env(fresh_server), *args))
    assert rc == 2, err
    assert f"runvisor: {fresh_server.url} is not provisioned for runvisor" in err, err
    assert "`runvisor up` provisions it" in err, err
    assert "Traceback" not in err, err


async def test_connect_stops_trying_when_told_to(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.5, stop.set)
    with caplog.at_level(logging.WARNING, logger="runvisor.actors.connection"), pytest.raises(ConnectStoppedError):
        await connect(Endpoint(url=url), "t-stop", give_up_after_s=None, stop=stop, reconnect_time_wait=0.1)
    # About fifteen attempts in 1.5 s, one line about them.
    lines = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"t-stop: cannot reach NATS at {url} ([Errno 111] "), lines


async def test_a_lost_server_is_one_log_line_while_it_is_away(
    fresh_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await connect(
        fresh_server.endpoint("admin"),
        "t-lost",
        give_up_after_s=None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )
    try:
        with caplog.at_level(logging.INFO, logger="runvisor.actors.connection"):
            # Given a connection whose server goes away for two seconds (twenty failed reconnections),
            await fresh_server.stop()
            await asyncio.sleep(2)
            await fresh_server.start()
            await eventually(lambda: nc.is_connected, timeout=20, what="the reconnection")
        said = [r.getMessage() for r in caplog.records]
        # then the absence is one line, and the return another.
        assert sum("cannot reach NATS" in line for line in said) == 1, said
        assert sum("reconnected to NATS" in line for line in said) == 1, said
    finally:
        await nc.close()


async def test_a_connection_that_cannot_be_made_in_time_says_how_long_it_tried() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError, match=r"no connection within 0\.5 s \(\d+ attempts?; the last: \[Errno 111\]"):
        await connect(Endpoint(url=url, user="agent", password="x"), "t-late", give_up_after_s=0.5)


async def test_an_agent_without_a_server_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Run, "connect_for_s", 0.5)
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError, match=rf"cannot connect to {url} as agent: no connection within 0\.5 s"):
        async with Run.start(goal="g", endpoint=Endpoint(url=url, user="agent", password="x")):
            pytest.fail("the run started without a server")


async def test_an_agent_on_an_unprovisioned_server_gets_a_clear_error(fresh_server: EmbeddedServer) -> None:
    with pytest.raises(NotProvisionedError, match="is not provisioned for runvisor"):
        async with Run.start(goal="g", endpoint=fresh_server.endpoint("agent")):
            pytest.fail("the run started without its streams")


async def test_top_rides_out_a_server_restart(fresh_server: EmbeddedServer, fresh_admin: Client) -> None:
    proc = await _start(_env(fresh_server), "top", "--interval", "0.3")
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append((loop.time(), line.decode()))

    reader = asyncio.create_task(read())

    def header_since(since: float) -> bool:
        return any(at > since and line.startswith("runvisor top: 0 runs") for at, line in lines)

    try:
        await eventually(lambda: header_since(0), timeout=20, what="top's first screen")
        # When the server goes away for longer than a read of rv_runs waits (5 s) and comes back,
        await fresh_server.stop()
        await asyncio.sleep(6.5)
        assert proc.returncode is None, "top ended when the server went away"
        await fresh_server.start()
        restarted = loop.time()
        # top is still there, said it could not read meanwhile, and shows the runs again;
        await eventually(lambda: header_since(restarted), timeout=20, what="top's screen after the restart")
        assert any(line.startswith("runvisor top: cannot read rv_runs") for _, line in lines), lines
        reader.cancel()
        proc.send_signal(signal.SIGTERM)
        rc, err = await _finish(proc)
        assert rc == 0, err
        # the absence was one line in its log, without a traceback.
        assert err.count("cannot reach NATS") == 1, err
        assert "Traceback" not in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
