"""A nats-py client whose permission violations fail the call that caused them (README "Security").

nats-server answers a publish or subscription a user may not make with an asynchronous
``-ERR 'Permissions Violation for Publish to "<subject>"'``, which nats-py hands only to the
connection's ``error_cb`` (DESIGN §11). The caller sees a request time out after its full
timeout (a JetStream publish, a KV put, any JetStream API call), or a subscription that
silently receives nothing. :class:`GuardedClient` turns that into :class:`PermissionDenied`
at the call:

* a request (which JetStream publishes, KV reads and writes, and JetStream API calls are)
  fails at once, when the server's refusal of its subject arrives;
* a subscription to a subject other than an inbox waits one round trip (a flush) for a
  refusal, and fails if there is one.

A plain publish stays fire-and-forget: nats-py cannot know it was refused without a round
trip per message. runvisor's roles publish plainly only where they may (verdicts, stats,
replies to inboxes); the refusal of any other still reaches ``error_cb`` and the log.

This reaches into nats-py 2.16's request bookkeeping (``_resp_map``, ``_resp_sub_prefix``), as
pinned in pyproject.toml; without it a refused request still fails, as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_BYTES_LIMIT, DEFAULT_SUB_PENDING_MSGS_LIMIT, Subscription
from nats.errors import Error as NatsError

from runvisor.errors import PermissionDenied

#: How nats-py words the server's refusal (it lower-cases the server's text).
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')
#: How long a subscription waits for the server to refuse it, at most (whole seconds: nats-py's flush).
SUBSCRIBE_CHECK_S = 5
#: Refused subscriptions remembered for the subscribe waiting on them (a handful at a time).
_MAX_REMEMBERED = 256


def permission_violation(exc: BaseException) -> tuple[str, str] | None:
    """``("publish" | "subscription", subject)`` when ``exc`` is the server refusing one; else None.

    The subject comes lower-cased: nats-py lower-cases the server's whole message. Calls are
    matched to refusals by their lower-cased subject (two subjects that differ only in case,
    refused at the same moment, would be confused; runvisor's never do).
    """
    match = _VIOLATION.search(str(exc).lower()) if isinstance(exc, NatsError) else None
    return None if match is None else (match.group(1), match.group(2))


def denied(user: str, operation: str, subject: str) -> PermissionDenied:
    """The error for ``user`` refused ``operation`` ("publish" or "subscription") on ``subject``."""
    verb = "publish to" if operation == "publish" else "subscribe to"
    return PermissionDenied(
        f"the server refused it: user {user!r} may not {verb} {subject!r} (permissions violation). "
        'This role may not do that; README "Security" lists what each role may do'
    )


class GuardedClient(Client):
    """nats-py's ``Client``; :func:`runvisor.actors.connection.connect` makes one, and hands the
    server's permission violations to :meth:`refused`."""

    def __init__(self, user: str = "anonymous") -> None:
        super().__init__()
        self.user = user
        #: Requests in flight by the (lower-cased) subject they were sent to: their response futures.
        self._requests: dict[str, dict[asyncio.Future[Msg], str]] = {}
        #: Subscriptions the server refused, by lower-cased subject, until the ``subscribe`` waiting looks.
        self._refused_subs: set[str] = set()

    def refused(self, exc: BaseException) -> bool:
        """Take a server error; True when it was a permission violation, now raised where it belongs."""
        violation = permission_violation(exc)
        if violation is None:
            return False
        operation, subject = violation
        if operation == "subscription":
            if len(self._refused_subs) >= _MAX_REMEMBERED:
                self._refused_subs.clear()
            self._refused_subs.add(subject)
            return True
        for future, sent_to in self._requests.pop(subject, {}).items():
            if not future.done():
                future.set_exception(denied(self.user, operation, sent_to))
        return True

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        if reply:
            self._track(subject, reply)
        await super().publish(subject, payload, reply, headers)

    def _track(self, subject: str, reply: str) -> None:
        """Remember the response future of a request (nats-py's ``request`` publishes with its inbox)."""
        prefix = self._resp_sub_prefix
        if not prefix or not reply.startswith(prefix.decode()):
            return  # not a request through ``request()``: nothing to fail early
        future: asyncio.Future[Msg] | None = self._resp_map.get(reply[len(prefix) :])
        if future is None or future.done():
            return
        key = subject.lower()
        self._requests.setdefault(key, {})[future] = subject
        future.add_done_callback(lambda done: self._untrack(key, done))

    def _untrack(self, key: str, future: asyncio.Future[Msg]) -> None:
        waiting = self._requests.get(key)
        if waiting is not None:
            waiting.pop(future, None)
            if not waiting:
                del self._requests[key]

    async def subscribe(
        self,
        subject: str,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
        future: asyncio.Future[Any] | None = None,
        max_msgs: int = 0,
        pending_msgs_limit: int = DEFAULT_SUB_PENDING_MSGS_LIMIT,
        pending_bytes_limit: int = DEFAULT_SUB_PENDING_BYTES_LIMIT,
    ) -> Subscription:
        inbox = subject.startswith(self._inbox_prefix.decode())
        key = subject.lower()
        if not inbox:
            self._refused_subs.discard(key)  # an older refusal is not this subscription's
        sub = await super().subscribe(subject, queue, cb, future, max_msgs, pending_msgs_limit, pending_bytes_limit)
        if inbox or not self.is_connected:
            return sub  # our own inboxes are every role's to read; offline, nothing can be known now
        with contextlib.suppress(NatsError, TimeoutError):
            # The server answers a refused SUB before the PONG of a PING sent after it. nats-py's
            # flush() writes its PING at once, though, ahead of a SUB still queued for its flusher
            # task (the PONG came first in about one try of ten). By the first PONG the flusher has
            # written the SUB, so the second PING follows it.
            await self.flush(SUBSCRIBE_CHECK_S)
            await self.flush(SUBSCRIBE_CHECK_S)
        if key in self._refused_subs:
            self._refused_subs.discard(key)
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
            raise denied(self.user, "subscription", subject)
        return sub


__all__ = ["SUBSCRIBE_CHECK_S", "GuardedClient", "denied", "permission_violation"]
