"""What an operator does to a run: command it, ask its state, list runs (DESIGN §8).

Used by the ``runvisor`` CLI; the same things work with the ``nats`` CLI
(``nats pub rv.ctl.RUN pause``, ``nats req rv.status.RUN ''``, ``nats kv watch rv_runs``).
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from actors._kv import latest_values
from protocols import codec, subjects
from protocols.messages import Command, RunState
from protocols.reasons import RECOVERY_HINTS

log = logging.getLogger(__name__)


async def send_command(nc: Client, run_id: str, command: Command, timeout: float = 5.0) -> PubAck:
    """Publish ``command`` to ``rv.ctl.<run>``, stored in ``RV_CONTROL`` so it is never lost."""
    ack: PubAck = await nc.jetstream().publish(
        subjects.ctl(run_id), codec.encode(command), timeout=timeout, headers=codec.MSGPACK_HEADERS
    )
    return ack


async def fetch_state(nc: Client, run_id: str, timeout: float = 2.0) -> RunState | None:
    """The run's live state: asked of its supervisor, else read from KV ``rv_runs``."""
    try:
        reply = await nc.request(subjects.status(run_id), b"", timeout=timeout)
        if reply.data:
            return codec.decode_json(RunState, reply.data)
    except (NoRespondersError, NatsTimeout):
        pass
    return await stored_state(nc, run_id)


async def stored_state(nc: Client, run_id: str) -> RunState | None:
    """The run's state as its supervisor last wrote it to KV ``rv_runs``; None if it never did."""
    return await read_state(await nc.jetstream().key_value(subjects.RUNS_BUCKET), run_id)


async def read_state(runs: KeyValue, run_id: str) -> RunState | None:
    """The run's state in the ``rv_runs`` bucket ``runs``; None if there is none."""
    try:
        entry = await runs.get(run_id)
    except KeyNotFoundError:
        return None
    return codec.decode(RunState, entry.value) if entry.value else None


async def list_states(nc: Client) -> list[RunState]:
    """Every run in ``rv_runs``, newest update first.

    One pass over the bucket (see ``latest_values``), not a ``get`` per key: 10,000 runs take
    one stream read, not 10,000 round trips.
    """
    states = []
    for key, value in (await latest_values(nc.jetstream(), subjects.RUNS_BUCKET)).items():
        try:
            states.append(codec.decode(RunState, value))
        except codec.DecodeError as exc:  # one bad entry must not hide every other run
            log.warning("rv_runs entry %r is not a run state: %s", key, exc)
    return sorted(states, key=lambda s: s.updated_at, reverse=True)


def describe(state: RunState) -> str:
    """A run's state as an operator reads it."""
    c = state.counters
    lines = [
        f"run {state.run_id}: {state.status}" + (f" ({state.stop_reason})" if state.stop_reason else ""),
        f"  task: {state.task or '-'}",
        f"  now: step {state.last_seq} {state.last_kind or ''} tool={state.current_tool or '-'}",
        f"  counters: steps={c.steps} tokens={c.tokens} cost=${c.cost_usd:.4f} tool_calls={c.tool_calls} "
        f"retries={c.retries} errors={c.errors}",
        f"  updated {time.strftime('%H:%M:%S', time.localtime(state.updated_at))}",
    ]
    if state.last_verdict is not None:
        v = state.last_verdict
        lines.append(f"  last verdict: {v.severity} {v.reason}: {v.evidence.summary}")
    if state.stop_reason is not None:
        lines.append(f"  next: {RECOVERY_HINTS[state.stop_reason]}")
    return "\n".join(lines)
