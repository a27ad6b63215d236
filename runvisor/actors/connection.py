"""Connecting to NATS: how long to keep trying, when to give up, and what to log meanwhile.

nats-py alone handles a server it cannot reach badly for a production process:

* a refused first connection is retried for two minutes by default (for ever with
  ``max_reconnect_attempts=-1``, what long-lived actors need for later reconnects), and the
  ``connect`` call cannot be told to stop: a worker told to stop (SIGTERM) before the server
  is up would not stop;
* a refused login ("Authorization Violation") is retried the same way, though a wrong
  password never gets right;
* without an ``error_cb`` every failed attempt is logged with a traceback, and with one it is
  reported every ``reconnect_time_wait`` (half a second for our actors), for as long as it lasts.

:func:`connect` keeps nats-py's reconnection machinery and adds the rest: trying ends when
``stop`` is set or after ``give_up_after_s``, a refused login ends it at once, and failures to
reach the server (losing it, and each failed attempt at the first connection or at reconnecting)
are one log line, then one every ``NOISE_EVERY_S`` while they last. Other errors go to the
caller's ``error_cb``; a permission violation also fails the call that caused it, with
``PermissionDenied`` (see ``_guarded.GuardedClient``), instead of a timeout or silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, StaleConnectionError, UnexpectedEOF

from runvisor.actors._guarded import GuardedClient
from runvisor.actors.endpoint import Endpoint
from runvisor.errors import ConnectError, ConnectStoppedError

log = logging.getLogger(__name__)

#: How long a one-shot client (an operator command, a bench tool) tries to reach the server.
ONE_SHOT_CONNECT_S = 10.0
#: While the server cannot be reached, one log line about it at most this often.
NOISE_EVERY_S = 30.0

ErrorCallback = Callable[[Exception], Awaitable[None]]


def is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` is the connection failing (the server gone or unreachable), not a protocol error."""
    return isinstance(exc, (OSError, TimeoutError, UnexpectedEOF, StaleConnectionError, ConnectionClosedError))


def is_refused_login(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing the credentials (not worth trying again)."""
    return "authorization violation" in str(exc).lower()


class Sparing:
    """When a condition that lasts is worth a log line: at once, then at most every ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        #: ``time.monotonic()`` of the last line, None before the first (or after ``reset``).
        self.logged_at: float | None = None

    def due(self, now: float | None = None) -> bool:
        """Whether to log now (``time.monotonic()`` unless given); if so, now counts as logged."""
        now = time.monotonic() if now is None else now
        if self.logged_at is not None and now - self.logged_at < self.every_s:
            return False
        self.logged_at = now
        return True

    def reset(self) -> None:
        self.logged_at = None


class _Unreachable:
    """Counts failed attempts to reach the server and logs them sparingly."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.failures = 0
        self.last: BaseException | None = None
        self._sparing = Sparing(NOISE_EVERY_S)
        self._logged_failures = 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last = exc
        previous = self._sparing.logged_at
        if not self._sparing.due():
            return
        if previous is None:
            log.warning("%s: cannot reach NATS at %s (%s); trying again", self.name, self.url, _brief(exc))
        else:
            log.warning(
                "%s: still cannot reach NATS at %s: %d failed attempts in %.0f s, the last: %s",
                self.name, self.url, self.failures - self._logged_failures, time.monotonic() - previous, _brief(exc),
            )  # fmt: skip
        self._logged_failures = self.failures

    def reset(self) -> None:
        self.failures = 0
        self._sparing.reset()
        self._logged_failures = 0


def _brief(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def connect(
    endpoint: Endpoint,
    name: str,
    *,
    give_up_after_s: float | None = ONE_SHOT_CONNECT_S,
    stop: asyncio.Event | None = None,
    error_cb: ErrorCallback | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    **options: Any,
) -> Client:
    """Connect as ``endpoint``'s role, trying again while the server cannot be reached.

    Args:
        endpoint: where, and as whom.
        name: the connection's name in the server's monitoring.
        give_up_after_s: stop trying after this long; None tries until ``stop`` is set.
        stop: set it to stop trying (a process told to stop while the server is down).
        error_cb: errors other than failing to reach the server (nats-py's ``error_cb``).
        reconnected_cb: called after a reconnection (nats-py's ``reconnected_cb``).
        options: further ``nats.connect`` options (``max_reconnect_attempts``, ...).

    Returns:
        The connected client.

    Raises:
        ConnectError: the server refused the login, or could not be reached in time.
        ConnectStoppedError: ``stop`` was set first.
    """
    nc = GuardedClient(endpoint.user or "anonymous")
    unreachable = _Unreachable(endpoint.url, name)
    refused = asyncio.Event()
    refusals: list[Exception] = []
    connected = False

    async def on_error(exc: Exception) -> None:
        refused_login = is_refused_login(exc)
        if nc.is_connected and not refused_login and not is_connection_loss(exc):
            nc.refused(exc)  # a permission violation: the call it belongs to raises PermissionDenied
            if error_cb is not None:
                await error_cb(exc)
            else:
                log.error("%s: NATS error: %s", name, _brief(exc))
        elif refused_login and not connected:
            refusals.append(exc)
            refused.set()  # ends the first connection at once: see _why_not
        else:
            unreachable.failed(exc)  # a refused login while reconnecting too: the password was changed

    async def on_reconnected() -> None:
        log.info("%s: reconnected to NATS at %s", name, endpoint.url)
        unreachable.reset()
        if reconnected_cb is not None:
            await reconnected_cb()

    attempt = asyncio.ensure_future(
        nc.connect(name=name, error_cb=on_error, reconnected_cb=on_reconnected, **endpoint.connect_options(), **options)
    )
    waits: list[asyncio.Future[Any]] = [attempt, asyncio.ensure_future(refused.wait())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=give_up_after_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits[1:]:
            waiting.cancel()
        attempt.cancel()  # no effect once it is done
        with contextlib.suppress(BaseException):
            await attempt
        failed = attempt.cancelled() or attempt.exception() is not None
        if failed:
            with contextlib.suppress(Exception):
                await nc.close()  # nats-py leaves the socket of a refused connection open
    if failed:
        raise _why_not(endpoint, attempt, unreachable, refusals, stop, give_up_after_s)
    connected = True
    unreachable.reset()
    return nc


def _why_not(
    endpoint: Endpoint,
    attempt: asyncio.Future[None],
    unreachable: _Unreachable,
    refusals: list[Exception],
    stop: asyncio.Event | None,
    give_up_after_s: float | None,
) -> ConnectError:
    where = f"{endpoint.url} as {endpoint.user or 'anonymous'}"
    if refusals:
        said = _brief(refusals[0])
        return ConnectError(f"cannot connect to {where}: the server refused the login ({said}); check the password")
    if stop is not None and stop.is_set():
        return ConnectStoppedError(f"stopped before a connection to {where} was made")
    error = None if attempt.cancelled() else attempt.exception()
    last = unreachable.last or error
    if attempt.cancelled():
        tries = f"{unreachable.failures} attempt{'s' if unreachable.failures != 1 else ''}"
        return ConnectError(
            f"cannot connect to {where}: no connection within {give_up_after_s:g} s ({tries}; the last: "
            f"{_brief(last) if last else 'no answer'}). Is nats-server running there?"
        )
    return ConnectError(f"cannot connect to {where}: {_brief(last) if last else 'failed'}")


__all__ = [
    "ONE_SHOT_CONNECT_S",
    "ConnectError",
    "ConnectStoppedError",
    "connect",
    "is_connection_loss",
    "is_refused_login",
]
