"""Reading what an operator looks at: a run's state, its commands, its steps, the runs to list."""

from __future__ import annotations

import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from runvisor.actors.streams.control import StoredCommand, stored_commands
from runvisor.actors.streams.runs import stored_state
from runvisor.actors.streams.steps import StoredStep, run_steps
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import RunState, Verdict
from runvisor.protocols.reasons import RunStatus


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


async def operator_command(nc: Client, run_id: str) -> StoredCommand | None:
    """The last command a person (not a supervisor) gave the run, with its note; None if none did."""
    commands = await stored_commands(nc.jetstream(), run_id)
    given = [c for c in commands if not c.command.issuer.startswith("supervisor:")]
    return given[-1] if given else None


@dataclass(frozen=True)
class Evidence:
    """The steps a verdict names, as stored in ``RV_STEPS``, and how many there are in all."""

    steps: list[StoredStep]
    total: int


async def evidence_steps(nc: Client, verdict: Verdict) -> Evidence:
    """The run's stored steps that ``verdict``'s evidence names (see :class:`Marker`)."""
    marker = Marker(verdict)
    history = [step async for step in run_steps(nc, verdict.run_id)]
    return Evidence([step for step in history if marker(step)], len(history))


class Marker:
    """Says, step by step in stream order, whether a step is one that ``verdict``'s evidence names:
    a step with one of its seqs, or the result of a tool call among them (they share a ``call_id``)."""

    def __init__(self, verdict: Verdict | None) -> None:
        self.seqs = frozenset(verdict.evidence.seqs) if verdict is not None else frozenset()
        self._calls: set[str] = set()

    def __call__(self, step: StoredStep) -> bool:
        event = step.event
        if event is None or not self.seqs:
            return False
        if event.seq in self.seqs:
            if event.kind == "tool_call" and event.call_id:
                self._calls.add(event.call_id)
            return True
        return event.kind == "tool_result" and event.call_id in self._calls


def select(
    states: list[RunState], *, statuses: frozenset[RunStatus] = frozenset(), since_s: float | None = None,
    now: float | None = None,
) -> list[RunState]:  # fmt: skip
    """The runs with one of ``statuses`` (any when empty) that were active in the last ``since_s`` seconds."""
    now = time.time() if now is None else now
    return [
        s
        for s in states
        if (not statuses or s.status in statuses) and (since_s is None or s.updated_at >= now - since_s)
    ]


__all__ = ["Evidence", "Marker", "evidence_steps", "fetch_state", "operator_command", "select"]
