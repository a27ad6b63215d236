"""The actor lifecycle and `runvisor up`, as real processes against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from runvisor import Run
from runvisor.actors.endpoint import Credentials
from runvisor.actors.runtime import Actor
from runvisor.actors.server import EmbeddedServer
from runvisor.testing import eventually

pytestmark = pytest.mark.integration


class Echo(Actor):
    role = "supervisor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[str] = []

    async def on_start(self) -> None:
        self.events.append("start")
        await self.nc.subscribe("rv.status.echo", cb=self._reply)

    async def _reply(self, msg: Msg) -> None:
        await msg.respond(b"alive")

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self._beat()]

    async def _beat(self) -> None:
        await self.stopping.wait()
        self.events.append("loop-exit")

    async def on_stop(self) -> None:
        self.events.append("stop")

    async def on_failure(self, exc: BaseException) -> None:
        self.events.append(f"failure:{type(exc).__name__}")


async def test_actor_serves_until_stop_then_stops_gracefully(server: EmbeddedServer) -> None:
    actor = Echo(server.endpoint("supervisor"))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    await eventually(lambda: "start" in actor.events)
    reply = await _ask(server, "rv.status.echo")
    assert reply == b"alive"
    stop.set()
    await asyncio.wait_for(task, 10)
    assert actor.events == ["start", "loop-exit", "stop"]


class Crashing(Echo):
    async def _beat(self) -> None:
        raise RuntimeError("boom")


async def test_a_crashing_loop_runs_on_failure_not_on_stop(server: EmbeddedServer) -> None:
    actor = Crashing(server.endpoint("supervisor"))
    with pytest.raises(ExceptionGroup):
        await asyncio.wait_for(actor.run(asyncio.Event()), 10)
    assert actor.events == ["start", "failure:ExceptionGroup"]


async def _ask(server: EmbeddedServer, subject: str) -> bytes:
    from runvisor.actors.connection import connect  # noqa: PLC0415

    nc = await connect(server.endpoint("operator"), "t")
    try:
        return (await nc.request(subject, b"", timeout=5)).data
    finally:
        await nc.close()


async def test_runvisor_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "RUNVISOR_HOME": str(tmp_path)}
    env.pop("NATS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "up", "--port", "0", "--monitor-port", "0",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []
    try:
        while not any("runvisor is up" in line for line in output):
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, f"runvisor up exited early: {''.join(output)}"
            output.append(line.decode())
        # Other local processes find the server and the operator's login in the data dir.
        info = json.loads((tmp_path / "server.json").read_text())
        assert info["url"].startswith("nats://127.0.0.1:")
        assert any("nats context save runvisor" in line for line in output)
        server_pid = info["pid"]
        # An operator in another terminal finds the server through the data dir. A command for a
        # run nobody knows is refused, and leaves no phantom run in `ps` (it once did).
        rc, _, err = await _cli(env, "kill", "run-7")
        assert (rc, "no run 'run-7' is known" in err, "nothing sent" in err) == (2, True, True)
        agent = Credentials.load_or_create(tmp_path).endpoint(info["url"], "agent")
        async with Run.start(goal="be supervised", run_id="run-7", endpoint=agent) as run:
            await run.message("working")
            await eventually(lambda: _cli_says(env, "RUNNING", "why", "run-7"), what="run-7 known")
            # A resume of a run that is not paused would change nothing: refused.
            rc, _, err = await _cli(env, "resume", "run-7")
            assert (rc, "run run-7 is RUNNING: a resume would change nothing" in err) == (2, True)
            assert (await _cli(env, "pause", "run-7", "budget", "review"))[0:2] == (
                0,
                "pause sent to run-7 (RV_CONTROL seq 1)",
            )
        # A run that has ended is not killed after the fact (its history once was rewritten).
        await eventually(lambda: _cli_says(env, "COMPLETED", "why", "run-7"), what="run-7 completed")
        rc, _, err = await _cli(env, "kill", "run-7")
        assert (rc, "run run-7 has ended (COMPLETED" in err) == (2, True)
        assert "run-7" in (await _cli(env, "ps"))[1]
        rc, out, err = await _cli(env, "why", "nosuchrun")
        assert (rc, "no run 'nosuchrun' is known" in err, "Traceback" in err) == (2, True, False)
        rc, out, err = await _cli(env, "why", "bad.id")
        assert (rc, "run_id must be one subject token" in err) == (2, True)
        rc, out, _ = await _cli(env, "ps")
        assert rc == 0
        assert out.startswith("RUN")
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, rest.decode()
        assert not (tmp_path / "server.json").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _cli_says(env: dict[str, str], text: str, *args: str) -> bool:
    rc, out, _ = await _cli(env, *args)
    return rc == 0 and text in out


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode()
