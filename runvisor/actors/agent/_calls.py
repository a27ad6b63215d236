"""One pending tool request: wait for the reply, heartbeat meanwhile, give up at once on a kill.

Failures of the request itself (no executor, no answer in time, an undecodable reply) become
a ``ToolResult`` with ``ok=False``, so the agent's code handles them like any failed tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from runvisor.actors.retry.backoff import Backoff
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import ToolRequest, ToolResult

#: Extra wait past a tool's timeout: an executor answers at its own deadline (with its error
#: and attempt count), and that answer should win over our bare request timeout.
REPLY_GRACE_S = 0.5
#: How long a call waits for an executor to appear before it fails as ``NoResponders`` (within
#: the tool's own timeout). "No responders" means nobody received the request, so sending it
#: again is safe; it happens while a lone executor restarts, and now and then to a request sent
#: right as an executor subscribes (nats-server 2.15.1).
NO_EXECUTOR_WAIT_S = 3.0
_NO_EXECUTOR_BACKOFF = Backoff(0.05, 2.0, 0.5)


async def request_tool(
    nc: Client,
    request: ToolRequest,
    *,
    killed: asyncio.Event,
    heartbeat_s: float,
    heartbeat: Callable[[], Awaitable[object]],
) -> ToolResult | None:
    """Send ``request`` and return the tool's result, or None as soon as ``killed`` is set.

    Args:
        nc: the agent's connection.
        request: what to ask; its ``timeout_s`` bounds the wait (plus ``REPLY_GRACE_S``).
        killed: set when the run is killed; the request is then abandoned.
        heartbeat_s: interval between calls of ``heartbeat`` while the reply is pending.
        heartbeat: publishes one heartbeat step.
    """
    reply = asyncio.ensure_future(_ask(nc, request))
    kill = asyncio.ensure_future(killed.wait())
    try:
        while True:
            done, _ = await asyncio.wait({reply, kill}, timeout=heartbeat_s, return_when="FIRST_COMPLETED")
            if reply in done:
                return result_of(request, reply)
            if kill in done:
                return None
            await heartbeat()
    finally:
        kill.cancel()
        if not reply.done():
            reply.cancel()


async def _ask(nc: Client, request: ToolRequest) -> Msg:
    """Send the request; while no executor serves the tool, send it again for a moment."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + request.timeout_s + REPLY_GRACE_S
    give_up_at = started + min(request.timeout_s, NO_EXECUTOR_WAIT_S)
    payload = codec.encode(request)
    attempt = 0
    while True:
        try:
            return await nc.request(
                subjects.tool(request.tool), payload, timeout=max(deadline - loop.time(), 0.001),
                headers=codec.MSGPACK_HEADERS,
            )  # fmt: skip
        except NoRespondersError:
            delay = _NO_EXECUTOR_BACKOFF.delay(attempt)
            if loop.time() + delay >= give_up_at:
                raise
            await asyncio.sleep(delay)
            attempt += 1


def result_of(request: ToolRequest, reply: asyncio.Future[Msg]) -> ToolResult:
    """The executor's answer, or the failure of the request itself, as a ``ToolResult``."""
    try:
        msg = reply.result()
    except NoRespondersError:
        return ToolResult(
            call_id=request.call_id, ok=False, attempts=0, error_type="NoResponders",
            error=f"no tool executor serves {request.tool!r} (nothing subscribed to {subjects.tool(request.tool)} "
            f"within {min(request.timeout_s, NO_EXECUTOR_WAIT_S):g}s)",
        )  # fmt: skip
    except NatsTimeout:
        return ToolResult(
            call_id=request.call_id, ok=False, error_type="TimeoutError",
            error=f"tool {request.tool!r} did not answer within {request.timeout_s:g}s",
        )  # fmt: skip
    try:
        return codec.decode(ToolResult, msg.data)
    except codec.DecodeError as exc:
        return ToolResult(call_id=request.call_id, ok=False, error_type="BadReply", error=str(exc))
