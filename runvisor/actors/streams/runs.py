"""KV ``rv_runs``: every run's live state, written by its supervisor, read by everyone (DESIGN §2).

Reads live here; the one writer is the supervisor worker that owns the run (``_write_states``).
Values are JSON, so ``nats kv get rv_runs RUN`` and ``nats kv watch rv_runs`` are readable;
msgpack values from older workers are still read.

Retention: a stopped or completed run's state is written with a per-message TTL (the
``Nats-TTL`` header, nats-server 2.11+, on a bucket that allows it), so it leaves the bucket
that long after its last write (:func:`finished_ttl`, a week by default, as long as ``RV_STEPS``
keeps the steps). A live run's state is written without one and never expires; each write of a
key replaces the previous one (history 1), TTL and all, so a run that goes on after being
written as finished is live again. Chosen over a TTL on the whole bucket, which would also
remove a paused run nobody touched for a week, and over a sweep by the supervisors, which
would need an owner per key and a scan of the bucket: the server expires each key on its own.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from runvisor.actors.streams._bucket import latest_values
from runvisor.protocols import codec, subjects
from runvisor.protocols.commands import ENDED
from runvisor.protocols.messages import RunState

log = logging.getLogger(__name__)


async def stored_state(nc: Client, run_id: str) -> RunState | None:
    """The run's state as its supervisor last wrote it to KV ``rv_runs``; None if it never did."""
    return await read_state(await nc.jetstream().key_value(subjects.RUNS_BUCKET), run_id)


async def read_state(runs: KeyValue, run_id: str) -> RunState | None:
    """The run's state in the ``rv_runs`` bucket ``runs``; None if there is none."""
    try:
        entry = await runs.get(run_id)
    except KeyNotFoundError:
        return None
    return codec.decode_stored(RunState, entry.value) if entry.value else None


async def list_states(nc: Client) -> list[RunState]:
    """Every run in ``rv_runs``, newest update first.

    One pass over the bucket (see ``latest_values``), not a ``get`` per key: 10,000 runs take
    one stream read, not 10,000 round trips.
    """
    states = []
    for key, value in (await latest_values(nc.jetstream(), subjects.RUNS_BUCKET)).items():
        try:
            states.append(codec.decode_stored(RunState, value))
        except codec.DecodeError as exc:  # one bad entry must not hide every other run
            log.warning("rv_runs entry %r is not a run state: %s", key, exc)
    return sorted(states, key=lambda s: s.updated_at, reverse=True)


def finished_ttl(state: RunState, keep_finished_s: float) -> int | None:
    """The TTL, in whole seconds (at least 1: the server ignores 0), to write ``state`` with; None for a live run."""
    return max(1, round(keep_finished_s)) if state.status in ENDED else None


async def allows_ttl(nc: Client) -> bool:
    """Whether the ``rv_runs`` bucket takes per-message TTLs (one provisioned before they were used may not)."""
    info = await nc.jetstream().stream_info(f"KV_{subjects.RUNS_BUCKET}")
    return bool(info.config.allow_msg_ttl)


__all__ = ["allows_ttl", "finished_ttl", "list_states", "read_state", "stored_state"]
