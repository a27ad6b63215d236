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

from protocols import codec, subjects
from protocols.messages import ToolRequest, ToolResult

#: Extra wait past a tool's timeout: an executor answers at its own deadline (with its error
#: and attempt count), and that answer should win over our bare request timeout.
REPLY_GRACE_S = 0.5


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
    reply = asyncio.ensure_future(
        nc.request(
            subjects.tool(request.tool), codec.encode(request), timeout=request.timeout_s + REPLY_GRACE_S,
            headers=codec.MSGPACK_HEADERS,
        )
    )  # fmt: skip
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


def result_of(request: ToolRequest, reply: asyncio.Future[Msg]) -> ToolResult:
    """The executor's answer, or the failure of the request itself, as a ``ToolResult``."""
    try:
        msg = reply.result()
    except NoRespondersError:
        return ToolResult(
            call_id=request.call_id, ok=False, attempts=0, error_type="NoResponders",
            error=f"no tool executor serves {request.tool!r} (nothing subscribed to {subjects.tool(request.tool)})",
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
