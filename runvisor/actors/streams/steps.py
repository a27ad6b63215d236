"""Stream ``RV_STEPS``: every step event of every run, stored by partition (DESIGN §2, §3).

Agents and tool executors publish steps (``agent/_steps.py``, ``tools/_attempt.py``); supervisors
follow partitions with ordered consumers (``supervisor/_follow.py``) and, for single steps,
use the direct gets here. Operators read one run's steps with :func:`run_steps`
(``runvisor steps``, ``runvisor why``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from runvisor.actors.streams._bucket import READ_TIMEOUT_S
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent


@dataclass(frozen=True, slots=True)
class StoredStep:
    """One message of a run in ``RV_STEPS``: its step event, or why it could not be decoded."""

    stream_seq: int
    event: StepEvent | None
    error: str | None = None
    #: Whether the run's history, as stored when the read began, ends here (``runvisor steps --last``).
    history_ends: bool = False


async def run_steps(
    nc: Client, run_id: str, *, follow: bool = False, stop: asyncio.Event | None = None
) -> AsyncIterator[StoredStep]:
    """The run's stored steps in order; with ``follow``, then each new one until ``stop`` is set.

    The run's subject in ``RV_STEPS`` is ``rv.step.<partition>.<run>``, with P read from the
    stream (so it matches what was provisioned). One ordered consumer on that subject: reading a
    run of thousands of steps is one stream read.

    Raises:
        nats.js.errors.NotFoundError: ``RV_STEPS`` does not exist.
        nats.errors.TimeoutError: the server stopped answering in the middle of the history.
    """
    js = nc.jetstream()
    subject = await _stored_subject(nc, run_id)
    sub = await js.subscribe(subject, stream=subjects.STEPS_STREAM, ordered_consumer=True)
    stopped = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        info = await sub.consumer_info()
        if not follow and info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return  # no step of this run is stored
        while True:
            if follow:
                next_msg = asyncio.create_task(sub.next_msg(timeout=None))
                await asyncio.wait((next_msg, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not next_msg.done():
                    next_msg.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await next_msg
                    return
                msg = next_msg.result()
            else:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            yield _stored(msg)
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        stopped.cancel()
        with contextlib.suppress(Exception):  # a connection the server dropped may fail to unsubscribe
            await sub.unsubscribe()


async def has_steps(nc: Client, run_id: str) -> bool:
    """Whether ``RV_STEPS`` holds any step of the run (one direct get)."""
    return await direct_get_step(nc, {"last_by_subj": await _stored_subject(nc, run_id)}) is not None


async def _stored_subject(nc: Client, run_id: str) -> str:
    """The run's subject in ``RV_STEPS``, with P as the stream has it."""
    config = (await nc.jetstream().stream_info(subjects.STEPS_STREAM)).config
    partitions = subjects.partitions_in(config) or subjects.DEFAULT_PARTITIONS
    return subjects.stored_step(subjects.partition_of(run_id, partitions), run_id)


def _stored(msg: Msg) -> StoredStep:
    seq, pending = msg.metadata.sequence.stream, msg.metadata.num_pending
    try:
        return StoredStep(seq, codec.decode(StepEvent, msg.data), history_ends=pending == 0)
    except codec.DecodeError as exc:
        return StoredStep(seq, None, str(exc), history_ends=pending == 0)


async def direct_get_step(nc: Client, request: dict[str, str]) -> Msg | None:
    """The step of ``RV_STEPS`` that a direct get finds (``last_by_subj``, ``next_by_subj``,
    ``start_time``); None when there is none.

    Raises:
        RuntimeError: the server answered with an error other than "not found".
    """
    reply = await nc.request(subjects.direct_get(subjects.STEPS_STREAM), codec.json_bytes(request), timeout=5)
    headers = reply.headers or {}
    if headers.get("Nats-Sequence") is not None:
        return reply
    if headers.get("Status") == "404":
        return None
    raise RuntimeError(f"direct get {request} failed: {headers}")


async def first_step(nc: Client, partition: int, run_id: str) -> Msg | None:
    """The run's first step in ``RV_STEPS`` (one direct get); None when it has none."""
    return await direct_get_step(nc, {"next_by_subj": subjects.stored_step(partition, run_id)})


def stream_sequence(found: Msg) -> int:
    """The stream sequence of a step that :func:`direct_get_step` found."""
    return int((found.headers or {})["Nats-Sequence"])


__all__ = ["StoredStep", "direct_get_step", "first_step", "has_steps", "run_steps", "stream_sequence"]
