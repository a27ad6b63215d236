"""No secret on stdout, in a log or on a command line: `runvisor up` says where the credentials are.

README "Security", item "Secrets".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from runvisor.actors.endpoint import CREDENTIALS_FILE
from runvisor.actors.server import free_port

pytestmark = pytest.mark.integration


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process arguments from /proc")
async def test_up_says_where_the_credentials_are_and_never_shows_a_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "up", "--home", str(home), "--port", str(free_port()),
        "--monitor-port", str(free_port()), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )  # fmt: skip
    said: list[bytes] = []
    try:
        assert up.stdout is not None
        while b"runvisor is up" not in (line := await asyncio.wait_for(up.stdout.readline(), 30)):
            assert line, "runvisor up ended before it was up"
            said.append(line)
        passwords = json.loads((home / CREDENTIALS_FILE).read_text()).values()
        server_pid = json.loads((home / "server.json").read_text())["pid"]
        processes = {"runvisor up": _cmdline(up.pid), "nats-server": _cmdline(server_pid)}
    finally:
        up.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(up.communicate(), 20)
    shown = b"".join(said).decode() + out.decode() + err.decode()
    log = (home / "nats-server.log").read_text()
    # Where the credentials are, readable by their owner only,
    assert f"role passwords: {home / CREDENTIALS_FILE} (mode 0600" in shown
    assert stat.S_IMODE((home / CREDENTIALS_FILE).stat().st_mode) == 0o600
    # and no password on stdout or stderr, in the server's log or on a command line.
    for password in passwords:
        assert password not in shown
        assert password not in log
        for name, cmdline in processes.items():
            assert password not in cmdline, name
