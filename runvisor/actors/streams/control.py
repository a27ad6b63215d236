"""Stream ``RV_CONTROL``: commands stored for each run, sent and read back.

A run's last command, and when the server stored it, is read by an agent on start, resume
and reconnect (a command sent while it was away still counts) and by a supervisor that
replays history after taking a partition over (a decision already acted on, or overtaken by
a later command, is not sent again). Operators read all of a run's commands (at most 256 are
kept per run) to show who held or ended it and why (``runvisor why``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from runvisor.actors.streams._bucket import READ_TIMEOUT_S
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command

log = logging.getLogger(__name__)


async def send_command(nc: Client, run_id: str, command: Command, timeout: float = 5.0) -> PubAck:
    """Publish ``command`` to ``rv.ctl.<run>``, stored in ``RV_CONTROL`` so it is never lost."""
    ack: PubAck = await nc.jetstream().publish(
        subjects.ctl(run_id), codec.encode(command), timeout=timeout, headers=codec.MSGPACK_HEADERS
    )
    return ack


@dataclass(frozen=True)
class StoredCommand:
    """A command read back from ``RV_CONTROL``, with the server's time of storing it."""

    command: Command
    stored_at: dt.datetime | None


async def last_stored_command(js: JetStreamContext, run_id: str) -> StoredCommand | None:
    """The last command stored for ``run_id`` in ``RV_CONTROL``, or None.

    Only the last one is read (a direct get): if that one is undecodable, an earlier valid
    command is not looked for, and the live subscription remains the source of truth.
    """
    try:
        msg = await js.get_msg(subjects.CONTROL_STREAM, subject=subjects.ctl(run_id), direct=True)
    except NotFoundError:
        return None
    except (NoRespondersError, NatsTimeout) as exc:
        log.warning("cannot read stored commands from %s: %s", subjects.CONTROL_STREAM, exc, extra={"run_id": run_id})
        return None
    try:
        command = codec.decode_command(msg.data or b"", (msg.headers or {}).get(codec.CONTENT_TYPE))
    except ValueError as exc:
        log.warning("ignoring an undecodable stored command: %s", exc, extra={"run_id": run_id})
        return None
    return StoredCommand(command, msg.time)


async def stored_commands(js: JetStreamContext, run_id: str) -> list[StoredCommand]:
    """Every command stored for ``run_id`` in ``RV_CONTROL``, oldest first; undecodable ones left out.

    Raises:
        nats.errors.TimeoutError: the server stopped answering in the middle.
    """
    sub = await js.subscribe(subjects.ctl(run_id), stream=subjects.CONTROL_STREAM, ordered_consumer=True)
    commands: list[StoredCommand] = []
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return commands
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            try:
                command = codec.decode_command(msg.data or b"", (msg.headers or {}).get(codec.CONTENT_TYPE))
            except ValueError:
                pass  # a malformed `nats pub`: its supervisor reported it when it came
            else:
                commands.append(StoredCommand(command, msg.metadata.timestamp))
            if msg.metadata.num_pending == 0:
                return commands
    finally:
        await sub.unsubscribe()


__all__ = ["StoredCommand", "last_stored_command", "send_command", "stored_commands"]
