"""The actor base: connect with a role's credentials, serve, stop gracefully, drain.

An actor is an ``async with``: entering connects and runs ``on_start`` (subscribe there);
``run(stop)`` also runs the actor's long-lived ``loops()`` in an ``asyncio.TaskGroup``
until ``stop`` is set, gives them ``graceful_s`` to finish, cancels the rest, then
drains the connection. A crash runs ``on_failure`` instead of ``on_stop`` (pykka's hooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self

from nats.aio.client import Client

from runvisor.actors.connection import ConnectStoppedError, Sparing, connect
from runvisor.actors.endpoint import Endpoint, Role
from runvisor.actors.server import is_not_provisioned, not_provisioned

log = logging.getLogger(__name__)

#: How often a long-lived actor looks again whether its server has been provisioned.
PROVISIONING_POLL_S = 1.0
#: While it waits, one log line about it at most this often.
WAITING_LOG_EVERY_S = 30.0

#: Extra ``logging`` fields shown after the message when a record carries them.
LOG_FIELDS = ("run_id", "reason", "partition", "worker", "tool", "seq")


class FieldsFormatter(logging.Formatter):
    """Appends structured fields (``run_id=... reason=...``) given through ``extra=``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{name}={getattr(record, name)}" for name in LOG_FIELDS if hasattr(record, name)]
        return f"{text} {' '.join(fields)}" if fields else text


def configure_logging(level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Actor:
    """Base class of every runvisor actor (supervisor worker, tool executor, agent run)."""

    role: ClassVar[Role] = "admin"
    #: Whether leaving the ``async with`` through cancellation runs ``on_failure`` (else ``on_stop``).
    cancel_is_failure: ClassVar[bool] = False
    #: How long connecting may take before it fails; None: until the actor is told to stop (a
    #: long-lived actor started before its server waits for it, and stops when told to).
    connect_for_s: ClassVar[float | None] = None

    def __init__(
        self, endpoint: Endpoint | None = None, *, nc: Client | None = None, name: str | None = None,
        graceful_s: float = 5.0,
    ) -> None:  # fmt: skip
        """Args:
        endpoint: where and as whom to connect; discovered for ``role`` when None.
        nc: an existing connection to use instead (it is then not drained on exit).
        name: the connection name shown by the server's monitoring.
        graceful_s: how long ``loops()`` get to finish after stop before being cancelled.
        """
        self._endpoint = endpoint
        self._given_nc = nc
        self._nc: Client | None = nc
        self._more: list[Client] = []  # connections from connect_more(), closed before the main one
        self.name = name or type(self).__name__
        self.graceful_s = graceful_s
        self.stopping = asyncio.Event()
        self._closing = False

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError(f"{self.name} is not started: use `async with` or run()")
        return self._nc

    # -- hooks -------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Subscribe and set up; called once connected."""

    async def on_stop(self) -> None:
        """Clean up after a normal stop; the connection is still open."""

    async def on_failure(self, exc: BaseException) -> None:
        """Called instead of ``on_stop`` when the actor crashed."""
        log.error("%s failed: %s", self.name, exc, exc_info=exc)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """Long-lived coroutines run beside the subscriptions; they should return once
        ``self.stopping`` is set."""
        return []

    # -- lifecycle ---------------------------------------------------------------------

    async def connect_more(self, purpose: str) -> Client:
        """Another connection with this actor's role, for traffic that must not queue behind the main one's.

        A connection is one ordered byte stream: a reply to a lease renewal arrives only after
        every stream message the server sent before it. An actor that reads a flood (a worker
        catching up on a partition) reads it on its own connection, so its small requests stay
        fast. With a given ``nc`` (no endpoint to connect with), that connection is shared.
        The connection is closed after ``on_stop``/``on_failure``, before the main one drains.
        """
        if self._given_nc is not None:
            return self._given_nc
        nc = await self._connect(f"{self.name}-{purpose}")
        self._more.append(nc)
        return nc

    async def _connect(self, name: str) -> Client:
        endpoint = self._endpoint or Endpoint.discover(self.role)
        self._endpoint = endpoint  # discovered once: every connection of the actor goes to the same server
        return await connect(
            endpoint, name, give_up_after_s=self.connect_for_s, stop=self.stopping, error_cb=self._on_error,
            disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        waiting = Sparing(WAITING_LOG_EVERY_S)
        while True:
            if self._nc is None:
                self._nc = await self._connect(self.name)
            self._closing = False
            try:
                await self.on_start()
                return self
            except BaseException as exc:
                await self._close()
                if not is_not_provisioned(exc):
                    raise
                missing = not_provisioned(self._url, self.name)
                if self.connect_for_s is not None or self._given_nc is not None:
                    raise missing from exc
            # A long-lived actor started before the server was provisioned (a deployment rolling
            # out) waits for it, as it waits for the server to come up.
            if waiting.due():
                log.warning("%s; waiting for it", missing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), PROVISIONING_POLL_S)
            if self.stopping.is_set():
                raise ConnectStoppedError(f"stopped while waiting for {self._url} to be provisioned")

    @property
    def _url(self) -> str:
        return self._endpoint.url if self._endpoint is not None else "the server"

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopping.set()
        try:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if exc is not None and (self.cancel_is_failure or not cancelled):
                await self.on_failure(exc)
            else:
                await self.on_stop()
        finally:
            await self._close()

    async def _close(self) -> None:
        self._closing = True  # the connection closing now is not news
        # Further connections carry derived traffic (a consumer's backlog the stream keeps): closed, not drained.
        more, self._more = self._more, []
        for extra in more:
            with contextlib.suppress(Exception):
                await extra.close()
        nc, self._nc = self._nc, self._given_nc
        if nc is not None and nc is not self._given_nc and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), self.graceful_s)
            except (TimeoutError, Exception) as exc:
                log.warning("%s: drain did not finish (%s); closing", self.name, exc)
                with contextlib.suppress(Exception):  # nats-py 2.16 may write to the transport a lost server closed
                    await nc.close()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` (or ``self.stopping``) is set, then stop gracefully.

        Set before the actor has connected (its server is not up yet), it stops trying and returns.
        """
        stop = stop or self.stopping
        relay = asyncio.ensure_future(self._stop_connecting_when(stop))
        try:
            async with self, asyncio.TaskGroup() as tg:
                loops = [tg.create_task(coro) for coro in self.loops()]
                tg.create_task(self._shutdown_when(stop, loops))
        except ConnectStoppedError as exc:
            log.info("%s: %s", self.name, exc)
        finally:
            relay.cancel()

    async def _stop_connecting_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping.set()

    async def _shutdown_when(self, stop: asyncio.Event, loops: list[asyncio.Task[None]]) -> None:
        await stop.wait()
        self.stopping.set()
        if loops:
            _, pending = await asyncio.wait(loops, timeout=self.graceful_s)
            for task in pending:
                task.cancel()

    # -- connection callbacks ----------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        # Permission violations reach nats-py only here (DESIGN §11): say so plainly. Failures to
        # reach the server are not errors of the actor: ``connect`` reports those, sparingly.
        log.error("%s: NATS error: %s", self.name, exc)

    async def _on_disconnect(self) -> None:
        if not self._closing:  # a drain at stop also disconnects: that is not news
            log.warning("%s: disconnected from NATS; reconnecting", self.name)

    async def _on_reconnect(self) -> None:
        """Called after a reconnection (``connect`` has logged it)."""


def run_main(main: Callable[[asyncio.Event], Awaitable[int]], *, use_uvloop: bool = True) -> int:
    """Run ``main(stop)`` on uvloop; SIGINT and SIGTERM set ``stop`` instead of killing."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    if use_uvloop:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported only where a loop is started

        result: int = uvloop.run(wrapper())
        return result
    return asyncio.run(wrapper())
