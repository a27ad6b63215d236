"""What an operator does to a run: command it, ask its state, list runs (DESIGN §8).

Used by the ``runvisor`` CLI; the same things work with the ``nats`` CLI
(``nats pub rv.ctl.RUN pause``, ``nats req rv.status.RUN ''``, ``nats kv watch rv_runs``).
"""

from __future__ import annotations

import time

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from runvisor.actors.streams.control import send_command
from runvisor.actors.streams.runs import list_states, read_state, stored_state
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import RunState
from runvisor.protocols.reasons import RECOVERY_HINTS


async def fetch_state(nc: Client, run_id: str, timeout: float = 2.0) -> RunState | None:
    """The run's live state: asked of its supervisor, else read from KV ``rv_runs``."""
    try:
        reply = await nc.request(subjects.status(run_id), b"", timeout=timeout)
    except (NoRespondersError, NatsTimeout):
        return await stored_state(nc, run_id)
    answer = codec.json_object(reply.data, "status reply") if reply.data else {"error": "no answer"}
    if "error" in answer:  # its supervisor knows no such run (or an older one answered empty)
        return await stored_state(nc, run_id)
    return codec.from_obj(RunState, answer)


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


__all__ = ["describe", "fetch_state", "list_states", "read_state", "send_command", "stored_state"]
