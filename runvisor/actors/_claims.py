"""What one runvisor server claims on a machine: its data directory (a lock on ``store.lock``),
its ports, and ``server.json``, where other local processes find it.

A second server is refused a claim with a line naming the one that holds it (its pids and URL),
rather than starting a nats-server that dies on the port (or, worse, takes the other one's
health answer for its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from runvisor.actors.endpoint import SERVER_FILE
from runvisor.errors import ServerError

_LISTEN = "0A"  # the TCP state "listening" in /proc/net/tcp


def lock_store(home: Path, name: str) -> int:
    """Take the data directory's lock, or say who holds it; returns the lock's file descriptor."""
    fd = os.open(home / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServerError(
            f"another runvisor server is using {home}{_described_owner(home)}: use that one, stop it first, "
            "or give this one a data directory of its own (--home, RUNVISOR_HOME)"
        ) from None
    return fd


def _described_owner(home: Path) -> str:
    """`` (runvisor up pid N, nats-server pid M, at URL)`` from the server's ``server.json``; "" without one."""
    try:
        info = json.loads((home / SERVER_FILE).read_text())
        up = f"runvisor up pid {info['runvisor_pid']}, " if info.get("runvisor_pid") else ""
        return f" ({up}nats-server pid {info['pid']}, at {info['url']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


def taken(port: int, what: str) -> str:
    """What to tell about a port another process listens on: a runvisor server by its data dir."""
    holder = listener(port)
    store = holder.option("-sd") if holder is not None else None
    if store is not None and (owner := _described_owner(Path(store).parent)):
        return (
            f"runvisor is already running on {Path(store).parent}{owner}, on the {what} port {port}: use that one, "
            "stop it first, or give this one other ports (--port, --monitor-port; 0 picks free ones)"
        )
    by = f" by pid {holder.pid} ({' '.join(holder.argv)[:80]})" if holder is not None else ""
    return (
        f"the {what} port {port} is taken{by}: give this server other ports (--port, --monitor-port; 0 picks free ones)"
    )


def remove_server_file(home: Path) -> None:
    """Remove ``server.json`` if it is still this process's (a server started since may have written its own)."""
    path = home / SERVER_FILE
    try:
        if json.loads(path.read_text()).get("runvisor_pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def in_use(port: int) -> bool:
    """Whether something listens on ``127.0.0.1:port`` (or on every address at that port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As nats-server binds: connections of an earlier server still in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@dataclass(frozen=True)
class Listener:
    """The process listening on a port, as far as ``/proc`` tells (Linux; processes of this user)."""

    pid: int
    argv: tuple[str, ...]

    def option(self, name: str) -> str | None:
        """The value after ``name`` on its command line (``-sd``, ``-p``), if any."""
        with contextlib.suppress(ValueError, IndexError):
            return self.argv[self.argv.index(name) + 1]
        return None


def listener(port: int, proc: Path = Path("/proc")) -> Listener | None:
    """The process that listens on ``port``; None when it cannot be told (not Linux, another user's)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in inodes:
                        argv = (pid_dir / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                        return Listener(int(pid_dir.name), tuple(a.decode(errors="replace") for a in argv))
    return None


__all__ = ["Listener", "in_use", "listener", "lock_store", "remove_server_file", "taken"]
