"""The operator's commands of the ``runvisor`` CLI: ``ps``, ``top``, ``why``, ``steps``, and
``pause``, ``resume``, ``kill``, ``stop``. Each connects as the operator role, says what it found
in one line when it cannot (exit status 2), and prints JSON with ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.operator._read import Evidence, Marker, evidence_steps, fetch_state, operator_command, select
from runvisor.actors.operator._render import PS_COLUMNS, describe, runs_table, step_json, step_line
from runvisor.actors.operator._top import top
from runvisor.actors.server import is_not_provisioned, not_provisioned
from runvisor.actors.streams.control import StoredCommand, send_command
from runvisor.actors.streams.runs import list_states
from runvisor.actors.streams.steps import has_steps, run_steps
from runvisor.errors import RunvisorError
from runvisor.protocols import codec
from runvisor.protocols.commands import refusal
from runvisor.protocols.messages import Command, check_run_id
from runvisor.protocols.reasons import next_step

#: How many evidence steps ``why`` shows (the latest ones); ``runvisor steps RUN`` shows them all.
WHY_STEPS = 8


class CliError(RunvisorError):
    """A user-facing failure: printed as one line, exit status 2."""


def emit(obj: Any) -> None:
    """Print ``obj`` as JSON (``--json``)."""
    print(json.dumps(obj, ensure_ascii=False, indent=2))


async def session(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]], stop: asyncio.Event) -> int:
    """Connect as the operator, run ``work``, close; a missing stream or bucket is said as such."""
    endpoint = Endpoint.discover("operator")
    nc = await connect(
        endpoint, "runvisor-cli", give_up_after_s=args.connect_timeout, stop=stop, max_reconnect_attempts=-1
    )  # ``top`` and ``steps --follow`` watch for as long as they run: a server restarting is not their end
    try:
        return await work(nc)
    except Exception as exc:
        if is_not_provisioned(exc):
            raise not_provisioned(endpoint.url) from exc
        raise
    finally:
        with contextlib.suppress(Exception):  # a connection the server dropped may fail to close
            await nc.close()


async def command(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``pause``, ``resume``, ``kill`` or ``stop`` a run: refused when it would change nothing."""
    run_id = check_run_id(args.run_id)
    cmd = Command(
        cmd=args.cmd, reason=getattr(args, "reason", None), issuer=f"cli:{os.environ.get('USER', 'operator')}",
        note=" ".join(args.note) or None,
    )  # fmt: skip

    async def work(nc: Client) -> int:
        refused = refusal(run_id, await fetch_state(nc, run_id), cmd)
        if refused is not None:
            raise CliError(f"{refused}; nothing sent")
        ack = await send_command(nc, run_id, cmd)
        if args.json:
            emit({"run_id": run_id, "sent": codec.to_wire(cmd), "stream": ack.stream, "stream_seq": ack.seq})
        else:
            print(f"{cmd.cmd} sent to {run_id} (RV_CONTROL seq {ack.seq})")
        return 0

    return await session(args, work, stop)


async def why(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """A run's state, why it is held or ended, the steps that prove it, and what to do next."""
    run_id = check_run_id(args.run_id)

    async def work(nc: Client) -> int:
        state = await fetch_state(nc, run_id)
        if state is None:
            raise CliError(f"no run {run_id!r} is known (not in rv_runs, and no supervisor answered)")
        said = await operator_command(nc, run_id)
        verdict = state.last_verdict
        evidence = await evidence_steps(nc, verdict) if verdict and verdict.evidence.seqs else Evidence([], 0)
        shown = evidence.steps[-WHY_STEPS:]
        if args.json:
            emit({
                "run": codec.to_wire(state), "operator_command": _command_json(said),
                "evidence": [step_json(step, marked=True) for step in shown],
                "next": next_step(state.status, state.stop_reason, run_id),
            })  # fmt: skip
        else:
            print(describe(state, evidence=shown, command=said))
            if len(evidence.steps) > len(shown):
                print(f"  ({len(evidence.steps) - len(shown)} earlier evidence steps: runvisor steps {run_id})")
        return 0

    return await session(args, work, stop)


def _command_json(stored: StoredCommand | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    at = stored.stored_at.timestamp() if stored.stored_at else None
    return {**codec.to_wire(stored.command), "stored_at": at}


async def ps(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """The runs in ``rv_runs``, newest first, filtered; sub-agents indented under their parent."""

    async def work(nc: Client) -> int:
        states = select(await list_states(nc), statuses=frozenset(args.status), since_s=args.since)
        shown = states[: args.limit]
        if args.json:
            emit([codec.to_wire(s) for s in shown])
        else:
            # Fitted to a terminal; in a pipe run ids stay whole (for grep, xargs).
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
            print(runs_table(shown, PS_COLUMNS, width, tree=True))
        if len(states) > len(shown):
            print(f"{len(states) - len(shown)} more runs not shown (--limit, --status, --since)", file=sys.stderr)
        return 0

    return await session(args, work, stop)


async def steps(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """A run's step events from ``RV_STEPS``, the last verdict's evidence marked; ``--follow`` goes on."""
    run_id = check_run_id(args.run_id)

    async def work(nc: Client) -> int:
        state = await fetch_state(nc, run_id)
        if state is None and not await has_steps(nc, run_id):
            raise CliError(f"no run {run_id!r} is known (not in rv_runs, and no step of it in RV_STEPS)")
        marker = Marker(state.last_verdict if state else None)
        held: deque[str] = deque(maxlen=args.last)  # the history, until its end is known (--last)
        live = args.last is None
        async for step in run_steps(nc, run_id, follow=args.follow, stop=stop):
            marked = marker(step)
            line = json.dumps(step_json(step, marked), ensure_ascii=False) if args.json else step_line(step, marked)
            if live:
                print(line, flush=args.follow)
                continue
            held.append(line)
            if step.history_ends:
                print("\n".join(held), flush=True)
                held.clear()
                live = True
        if held:
            print("\n".join(held))
        return 0

    return await session(args, work, stop)


async def watch(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """``runvisor top``."""
    return await session(args, lambda nc: top(nc, stop, interval=args.interval, limit=args.limit), stop)


__all__ = ["CliError", "command", "emit", "ps", "session", "steps", "watch", "why"]
