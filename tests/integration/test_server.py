"""The embedded server, provisioning, partitioned storage and per-role permissions, for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Credentials, Role
from runvisor.actors.server import EmbeddedServer, free_port, provision
from runvisor.errors import ConnectError, PermissionDenied, ServerError
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, StepEvent
from runvisor.protocols.reasons import StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration


async def test_provisioning_is_idempotent_and_updates_outdated_config(fresh_server: EmbeddedServer) -> None:
    nc = await connect(fresh_server.endpoint("admin"), "t")
    try:
        first = await provision(nc)
        assert set(first.values()) == {"created"}
        assert set(first) == {
            "RV_STEPS", "RV_CONTROL", "rv_runs", "rv_checkpoints", "rv_leases", "rv_breakers", "rv_results",
            "rv_family",
        }  # fmt: skip
        # A second run changes nothing.
        assert set((await provision(nc)).values()) == {"unchanged"}
        # An outdated config (other partition count, other lease TTL) is updated in place.
        changed = await provision(nc, partitions=8, lease_ttl_s=3.0)
        assert changed["RV_STEPS"] == "updated subject_transform"
        assert changed["rv_leases"].startswith("updated")
        assert "max_age" in changed["rv_leases"]
        assert set((await provision(nc, partitions=8, lease_ttl_s=3.0)).values()) == {"unchanged"}
        info = await nc.jetstream().stream_info("KV_rv_leases")
        assert info.config.max_age == pytest.approx(3.0)
    finally:
        await nc.close()


async def test_step_event_is_stored_under_its_partition_subject(server: EmbeddedServer, run_id: str) -> None:
    agent = await connect(server.endpoint("agent"), "t-agent")
    admin = await connect(server.endpoint("admin"), "t-admin")
    try:
        event = StepEvent(run_id=run_id, seq=1, ts=1.0, kind="tool_call", tool="ls", args={"command": "ls"})
        ack = await agent.jetstream().publish(subjects.step(run_id), codec.encode(event))
        stored = await admin.jetstream().get_msg(subjects.STEPS_STREAM, ack.seq)
        assert stored.subject == subjects.stored_step(subjects.partition_of(run_id), run_id)
        assert stored.data is not None
        assert codec.decode(StepEvent, stored.data) == event
    finally:
        await agent.close()
        await admin.close()


async def test_plain_text_pause_on_the_control_subject_decodes_to_a_pause(server: EmbeddedServer, run_id: str) -> None:
    operator = await connect(server.endpoint("operator"), "t-operator")
    try:
        # As an operator types it: nats pub rv.ctl.<run> pause
        await operator.publish(subjects.ctl(run_id), b"pause")
        await operator.flush()

        async def stored() -> bytes | None:
            try:
                msg = await operator.jetstream().get_last_msg(subjects.CONTROL_STREAM, subjects.ctl(run_id))
            except nats.js.errors.NotFoundError:
                return None
            return msg.data

        data: bytes = await eventually(stored, what="the pause stored in RV_CONTROL")
        command = codec.decode_command(data)
        assert command == Command(cmd="pause", reason=StopReason.USER_PAUSED, ts=command.ts)
    finally:
        await operator.close()


class _Errors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    def violation(self, subject: str) -> bool:
        return any("permissions violation for publish" in e.lower() and subject.lower() in e.lower() for e in self.seen)


async def _as(server: EmbeddedServer, role: Role) -> tuple[Client, _Errors]:
    errors = _Errors()
    nc = await connect(server.endpoint(role), f"t-{role}", error_cb=errors.record, allow_reconnect=False)
    return nc, errors


async def _denied_publish(server: EmbeddedServer, role: Role, subject: str) -> None:
    nc, errors = await _as(server, role)
    try:
        await nc.publish(subject, b"x")
        await nc.flush()
        await eventually(lambda: errors.violation(subject), what=f"the server to refuse {role} publishing {subject}")
    finally:
        await nc.close()


async def _allowed_publish(server: EmbeddedServer, role: Role, subject: str) -> None:
    nc, errors = await _as(server, role)
    try:
        await nc.jetstream().publish(subject, b"pause", timeout=5)
        assert not errors.seen
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("agent", "rv.ctl.someone"),  # agents may not command runs
        ("agent", "$KV.rv_runs.someone"),  # nor write the supervisors' live state
        ("tool", "rv.ctl.someone"),
        ("tool", "rv.tool.other"),  # executors reply, they do not call tools
        ("operator", "rv.step.someone"),  # operators do not forge steps
        ("supervisor", "rv.step.someone"),
    ],
)
async def test_server_refuses_publish_outside_the_role(server: EmbeddedServer, role: Role, subject: str) -> None:
    await _denied_publish(server, role, subject)


@pytest.mark.parametrize(
    ("role", "subject"),
    [("agent", "rv.step.r1"), ("operator", "rv.ctl.r1"), ("supervisor", "rv.ctl.r1"), ("tool", "rv.step.r1")],
)
async def test_role_may_publish_what_it_needs(server: EmbeddedServer, role: Role, subject: str) -> None:
    await _allowed_publish(server, role, subject)


async def test_agent_can_keep_checkpoints_but_tool_cannot(server: EmbeddedServer, run_id: str) -> None:
    agent, _ = await _as(server, "agent")
    try:
        kv = await agent.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)
        await kv.put(run_id, b"state")
        assert (await kv.get(run_id)).value == b"state"
    finally:
        await agent.close()
    await _denied_publish(server, "tool", f"$KV.{subjects.CHECKPOINTS_BUCKET}.{run_id}")


async def test_tool_cannot_subscribe_to_control(server: EmbeddedServer) -> None:
    nc, errors = await _as(server, "tool")
    try:
        with pytest.raises(PermissionDenied, match=r"user 'tool' may not subscribe to 'rv\.ctl\.\*'"):
            await nc.subscribe("rv.ctl.*")
        assert any("permissions violation for subscription" in e.lower() for e in errors.seen)
    finally:
        await nc.close()


async def test_tool_replies_to_a_request(server: EmbeddedServer) -> None:
    tool, _ = await _as(server, "tool")
    agent, _ = await _as(server, "agent")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(b"re:" + msg.data)

        await tool.subscribe(subjects.tool("echo"), queue=subjects.tool_queue("echo"), cb=echo)
        await tool.flush()

        async def answered() -> Msg | None:
            # The first request to a queue group just subscribed (and flushed) now and then gets
            # "no responders" from nats-server: 2 of 300 fresh subjects in a scratch loop, 2 of 30
            # runs of this file. What this test checks is that the tool role may answer at all.
            try:
                return await agent.request(subjects.tool("echo"), b"hi", timeout=5)
            except NoRespondersError:
                return None

        reply: Msg = await eventually(answered, timeout=5, what="the tool's answer")
        assert reply.data == b"re:hi"
    finally:
        await tool.close()
        await agent.close()


async def test_denied_jetstream_publish_is_permission_denied_at_once_not_a_timeout(server: EmbeddedServer) -> None:
    nc, errors = await _as(server, "agent")
    try:
        started = time.monotonic()
        with pytest.raises(PermissionDenied, match=r"user 'agent' may not publish to 'rv\.ctl\.someone'"):
            await nc.jetstream().publish("rv.ctl.someone", b"kill", timeout=4)
        assert time.monotonic() - started < 2, "refused by the server's answer, not by the timeout"
        assert errors.violation("rv.ctl.someone")
    finally:
        await nc.close()


async def test_wrong_password_is_an_authorization_violation(server: EmbeddedServer) -> None:
    endpoint = server.endpoint("operator")
    bad = type(endpoint)(url=endpoint.url, user="operator", password="wrong")
    # Refused at once, though the client may otherwise keep trying: a wrong password never gets right.
    with pytest.raises(ConnectError, match=r"refused the login .*Authorization Violation"):
        await connect(bad, "t-bad", give_up_after_s=None, max_reconnect_attempts=-1)


async def test_restart_keeps_passwords_and_data(fresh_server: EmbeddedServer) -> None:
    mode = stat.S_IMODE((fresh_server.home / "credentials.json").stat().st_mode)
    assert mode == 0o600
    nc = await connect(fresh_server.endpoint("admin"), "t")
    await provision(nc)
    await nc.jetstream().publish(subjects.step("survivor"), b"x")
    await nc.close()
    await fresh_server.stop()
    # A restart on the same data dir keeps the generated passwords and the stored steps.
    async with EmbeddedServer(fresh_server.home) as again:
        assert again.credentials == fresh_server.credentials
        nc = await connect(again.endpoint("admin"), "t")
        try:
            info = await nc.jetstream().stream_info(subjects.STEPS_STREAM)
            assert info.state.messages == 1
        finally:
            await nc.close()


async def test_a_taken_port_names_the_server_on_it_and_leaves_it_alone(server: EmbeddedServer, tmp_path: Path) -> None:
    # Another server's port: once a raw nats-server log line, or, for the monitoring port, that
    # server's health answer taken for this one's.
    for port, monitor_port in ((server.port, None), (None, server.monitor_port)):
        with pytest.raises(ServerError, match=r"the \w+ port \d+ is taken by pid \d+ \(.*nats-server.*\): give"):
            async with EmbeddedServer(tmp_path / "other", port=port, monitor_port=monitor_port):
                pass
    nc = await connect(server.endpoint("admin"), "t-still-serving")
    await nc.close()


async def _up(home: Path, port: int, monitor_port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "up", "--home", str(home), "--port", str(port),
        "--monitor-port", str(monitor_port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )  # fmt: skip


@pytest.mark.timeout(90)
async def test_a_second_up_on_the_same_home_or_ports_names_the_first_and_exits_non_zero(tmp_path: Path) -> None:
    # Given `runvisor up` serving,
    first_home, other_home = tmp_path / "first", tmp_path / "other"
    port, monitor_port = free_port(), free_port()
    first = await _up(first_home, port, monitor_port)
    try:
        assert first.stdout is not None
        while b"runvisor is up" not in (line := await asyncio.wait_for(first.stdout.readline(), 30)):
            assert line, "the first runvisor up ended before it was up"
        info = json.loads((first_home / "server.json").read_text())
        who = f"(runvisor up pid {first.pid}, nats-server pid {info['pid']}, at nats://127.0.0.1:{port})"
        # a second one on its data directory, its client port or its monitoring port says so and exits,
        for home, ports, said in (
            (first_home, (free_port(), free_port()), f"another runvisor server is using {first_home} {who}"),
            (other_home, (port, free_port()), f"runvisor is already running on {first_home} {who}, on the client port"),
            (other_home, (free_port(), monitor_port), f"runvisor is already running on {first_home} {who}, on the "
             "monitoring port"),
        ):  # fmt: skip
            second = await _up(home, *ports)
            out, err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 2, (out, err)
            assert said in err.decode(), err
            assert b"runvisor is up" not in out
        # leaving the first one serving, and findable: its server.json is its own still.
        assert json.loads((first_home / "server.json").read_text()) == info
        assert not (other_home / "server.json").exists()
        nc = await connect(Credentials.load_or_create(first_home).endpoint(info["url"], "admin"), "t-first")
        await nc.close()
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGTERM)
            await asyncio.wait_for(first.communicate(), 20)
    assert not (first_home / "server.json").exists(), "the first one removes its own server.json on exit"


async def test_server_json_is_removed_only_by_the_process_that_wrote_it(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, publish=True)
    await server.start()
    ours = json.loads((tmp_path / "server.json").read_text())
    assert ours["runvisor_pid"] == os.getpid()
    # Another process's server.json in its place (written by hand, or by a later server):
    theirs = {**ours, "runvisor_pid": ours["runvisor_pid"] + 1}
    (tmp_path / "server.json").write_text(json.dumps(theirs))
    await server.stop()
    assert json.loads((tmp_path / "server.json").read_text()) == theirs


async def test_a_second_server_on_the_same_data_directory_is_refused(fresh_server: EmbeddedServer) -> None:
    # Two nats-servers on one JetStream store corrupt it ("Stream state outdated ... will rebuild").
    with pytest.raises(ServerError, match=r"another runvisor server is using .*: use that one, stop it first"):
        await EmbeddedServer(fresh_server.home).start()
    nc = await connect(fresh_server.endpoint("admin"), "t-still-serving")  # the first one is untouched
    await nc.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.timeout(60)
async def test_kill_9_of_runvisor_up_takes_its_nats_server_with_it(tmp_path: Path) -> None:
    # Given `runvisor up` serving,
    home = tmp_path / "home"
    server_pid = 0
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "up", "--home", str(home), "--port", str(free_port()),
        "--monitor-port", str(free_port()), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )  # fmt: skip
    try:
        assert up.stdout is not None
        while b"runvisor is up" not in (line := await asyncio.wait_for(up.stdout.readline(), 30)):
            assert line, "runvisor up ended before it was up"
        server_pid = json.loads((home / "server.json").read_text())["pid"]
        assert _alive(server_pid)
        # when it is killed with SIGKILL (no chance to stop its server),
        up.kill()
        await up.wait()
        # then its nats-server stops too, and a new `up` may take the data directory.
        await eventually(lambda: not _alive(server_pid), what="the orphaned nats-server gone")
        async with EmbeddedServer(home) as again:
            nc = await connect(again.endpoint("admin"), "t-after")
            await nc.close()
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        if server_pid and _alive(server_pid):  # never leave a server behind, even when the test fails
            os.kill(server_pid, signal.SIGKILL)
