"""Where a run keeps what survives its process: the checkpoint, and reads of stored commands and steps.

Checkpoints are compare-and-set updates on the revision this process last wrote, so a
second process resuming the same run fences the first off instead of both acting as the run.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from runvisor.actors.streams.control import last_stored_command
from runvisor.errors import RunError, RunNotFound
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Checkpoint, Command, StepEvent

log = logging.getLogger(__name__)

#: Reserved key carrying the arguments of each open call (call id -> arguments) in the checkpoint's
#: state, because an ``Intent`` holds only their digest and a resumed run must be able to re-issue it.
OPEN_CALLS_KEY = "__runvisor_open_calls__"
#: The same for the one open call of checkpoints written before parallel calls (read, never written).
OPEN_ARGS_KEY = "__runvisor_open_args__"

#: The arguments of each open call, by call id.
OpenArgs = dict[str, dict[str, Any] | None]


class CheckpointStore:
    """One run's checkpoint in KV ``rv_checkpoints``."""

    def __init__(self, kv: KeyValue, run_id: str) -> None:
        self.kv = kv
        self.run_id = run_id
        self.revision = 0
        #: Set once another process wrote the checkpoint: this one no longer speaks for the run.
        self.fenced = False

    async def create(self, checkpoint: Checkpoint) -> None:
        """Write the first checkpoint of a new run; a run id in use is refused."""
        try:
            self.revision = await self.kv.create(self.run_id, encode(checkpoint))
        except KeyWrongLastSequenceError:
            raise RunError(f"run {self.run_id} already exists; continue it with Run.resume({self.run_id!r})") from None

    async def load(self) -> Checkpoint:
        """The run's checkpoint, taking its revision as the one to update."""
        try:
            entry = await self.kv.get(self.run_id)
        except KeyNotFoundError:
            raise RunNotFound(self.run_id) from None
        if not entry.value or entry.revision is None:
            raise RunNotFound(self.run_id)
        self.revision = entry.revision
        return codec.decode(Checkpoint, entry.value)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Update the checkpoint, unless another process wrote it since (then raise ``RunError``)."""
        data = encode(checkpoint)
        try:
            self.revision = await self.kv.update(self.run_id, data, last=self.revision)
        except KeyWrongLastSequenceError:
            self.fenced = True
            raise RunError(
                f"run {self.run_id} was taken over: its checkpoint was written by another process "
                "(a second Run.resume?); this one must stop"
            ) from None


def encode(checkpoint: Checkpoint) -> bytes:
    try:
        return codec.encode(checkpoint)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run.state must hold only JSON-able values: {exc}") from exc


def pack_state(state: dict[str, Any], open_args: OpenArgs) -> dict[str, Any]:
    """The checkpoint's state: the agent's, plus the open calls' arguments while any is open."""
    return {**state, OPEN_CALLS_KEY: dict(open_args)} if open_args else dict(state)


def unpack_state(state: dict[str, Any], legacy_call_id: str | None = None) -> tuple[dict[str, Any], OpenArgs]:
    """The agent's state and the open calls' arguments, from a checkpoint's state.

    Args:
        state: the checkpoint's state.
        legacy_call_id: the call id of a one-intent checkpoint's open ``intent``, whose arguments
            are under ``OPEN_ARGS_KEY``.
    """
    own = dict(state)
    calls = own.pop(OPEN_CALLS_KEY, None)
    legacy = own.pop(OPEN_ARGS_KEY, None)
    args: OpenArgs = {}
    if isinstance(calls, dict):
        args = {str(call_id): value if isinstance(value, dict) else None for call_id, value in calls.items()}
    if legacy_call_id is not None and legacy_call_id not in args:
        args[legacy_call_id] = legacy if isinstance(legacy, dict) else None
    return own, args


async def last_command(js: JetStreamContext, run_id: str) -> Command | None:
    """The last command stored for ``run_id`` in ``RV_CONTROL``, or None (see ``streams.control``)."""
    stored = await last_stored_command(js, run_id)
    return stored.command if stored is not None else None


async def last_step_seq(js: JetStreamContext, run_id: str) -> int:
    """The seq of the run's last stored step (an executor's retry event may be newer than a checkpoint)."""
    subject = subjects.stored_step(subjects.partition_of(run_id), run_id)
    try:
        msg = await js.get_msg(subjects.STEPS_STREAM, subject=subject, direct=True)
        return codec.decode(StepEvent, msg.data or b"").seq
    except (NotFoundError, NoRespondersError, NatsTimeout, codec.DecodeError):
        return 0  # e.g. a stream partitioned differently: the checkpoint's seq must do
