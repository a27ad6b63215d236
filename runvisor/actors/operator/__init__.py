"""What an operator does to a run: command it, ask its state, list runs, read its steps (DESIGN §8).

Used by the ``runvisor`` CLI (``_cli``: ``ps``, ``top``, ``why``, ``steps``, ``pause``, ``resume``,
``kill``, ``stop``); the same things work with the ``nats`` CLI (``nats pub rv.ctl.RUN pause``,
``nats req rv.status.RUN ''``, ``nats kv watch rv_runs``). ``_read`` reads (a run's state, its
commands, its steps), ``_render`` lays them out for a terminal, ``_top`` redraws them live.
"""

from __future__ import annotations

from runvisor.actors.operator._read import Marker, evidence_steps, fetch_state, operator_command, select
from runvisor.actors.operator._render import describe, runs_table, step_line
from runvisor.actors.streams.control import send_command
from runvisor.actors.streams.runs import list_states, read_state, stored_state
from runvisor.actors.streams.steps import run_steps

__all__ = [
    "Marker", "describe", "evidence_steps", "fetch_state", "list_states", "operator_command", "read_state",
    "run_steps", "runs_table", "select", "send_command", "step_line", "stored_state",
]  # fmt: skip
