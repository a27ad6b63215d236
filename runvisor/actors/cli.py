"""The ``runvisor`` command: run the system, and let an operator look at and command runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError

from runvisor.actors.connection import ONE_SHOT_CONNECT_S, connect
from runvisor.actors.endpoint import Endpoint, default_home
from runvisor.actors.operator import describe, fetch_state, list_states, send_command
from runvisor.actors.runtime import configure_logging, run_main
from runvisor.actors.server import EmbeddedServer, is_not_provisioned, not_provisioned, provision
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.errors import RunvisorError
from runvisor.protocols.commands import CommandState, fold
from runvisor.protocols.messages import Command, RunState, check_run_id
from runvisor.protocols.policy import Policy, parse_policy
from runvisor.protocols.reasons import RunStatus
from runvisor.protocols.subjects import DEFAULT_LEASE_TTL_S

log = logging.getLogger("runvisor")


class CliError(RunvisorError):
    """A user-facing failure: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return run_main(lambda stop: args.handler(args, stop), use_uvloop=not args.no_uvloop)
    except RunvisorError as exc:
        print(f"runvisor: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`runvisor ps | head -3`): not an error. Python would otherwise
        # complain once more when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a misspelt command and without a bogus required ``note``."""

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice is not None:
            commands = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), commands, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown command {choice.group(1)!r}{hint} (commands: {', '.join(commands)})"
        # ``note`` is optional (nargs="*"), but argparse lists it with a missing run_id.
        message = message.replace("required: run_id, note", "required: run_id")
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runvisor",
        description="Runtime supervision for AI agents over NATS JetStream: detects loops, stalls, "
        "retry storms, hidden tool failures and budget overruns, and pauses, resumes or kills runs.",
        epilog="Without NATS_URL the embedded server started by `runvisor up` is used (found through "
        "$RUNVISOR_HOME, default ~/.runvisor). With NATS_URL set, an existing server is used: give the "
        "role's password in RV_<ROLE>_PASSWORD or NATS_USER/NATS_PASSWORD, or a creds file in NATS_CREDS.",
    )
    parser.add_argument("--log-level", default=os.environ.get("RUNVISOR_LOG", "INFO"), help="default INFO")
    parser.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio loop")
    parser.add_argument(
        "--connect-timeout", type=_above_zero, default=ONE_SHOT_CONNECT_S, metavar="S",
        help=f"how long pause, resume, kill, why, ps and top try to reach NATS (default {ONE_SHOT_CONNECT_S:g} s); "
        "workers and executors keep trying until stopped",
    )  # fmt: skip
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the embedded NATS server, provision it and run until Ctrl-C")
    _add_server_options(up)
    up.set_defaults(handler=_up)

    sup = sub.add_parser("supervisor", help="run one supervisor worker (run several: they share the partitions)")
    sup.add_argument("--id", dest="worker_id", default=None, help="worker name in rv_leases (default: random)")
    _add_supervisor_options(sup)
    sup.set_defaults(handler=_supervisor)

    tools = sub.add_parser("tools", help="run a tool executor serving a registry of tools")
    tools.add_argument("registry", help="module:attribute of a ToolRegistry (e.g. runvisor.actors.sim:demo_tools)")
    tools.add_argument("--concurrency", type=_at_least_one, default=32, help="requests handled at once per tool (32)")
    tools.set_defaults(handler=_tools)

    demo = sub.add_parser(
        "demo", help="run agents that loop, overspend, fail and stall on a private server, and watch them caught"
    )
    demo.set_defaults(handler=_demo)

    for name, text in (("pause", "pause a run at its next step (state is checkpointed)"),
                       ("resume", "resume a paused run"),
                       ("kill", "kill a run: its in-flight call is cancelled; it can never resume")):  # fmt: skip
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("run_id")
        cmd.add_argument("note", nargs="*", help="why, for the record (e.g. 'runaway costs')")
        cmd.set_defaults(handler=_command, cmd=name)

    why = sub.add_parser("why", help="a run's status, stop reason, evidence and what to do next")
    why.add_argument("run_id")
    why.set_defaults(handler=_why)

    ps = sub.add_parser("ps", help="list runs with their status and counters")
    ps.set_defaults(handler=_ps)

    top = sub.add_parser("top", help="live view of the most recently active runs, refreshed until Ctrl-C")
    top.add_argument("--interval", type=_above_zero, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument("--limit", type=_at_least_one, default=30, help="runs shown (default 30)")
    top.set_defaults(handler=_top)
    return parser


def _above_zero(text: str) -> float:
    """A number of seconds (an argparse type): more than 0."""
    value = _parse(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _at_least_zero_s(text: str) -> float:
    """A number of seconds (an argparse type): 0 or more."""
    value = _parse(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _at_least_one(text: str) -> int:
    """A count (an argparse type): 1 or more."""
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _at_least_zero(text: str) -> int:
    """A count (an argparse type): 0 or more."""
    value = _parse(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _port(text: str) -> int:
    """A TCP port (an argparse type); 0 picks a free one."""
    value = _parse(int, text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text}")
    return value


_Number = TypeVar("_Number", int, float)


def _policy_file(text: str) -> Policy:
    """A policy file (an argparse type): read and checked before anything starts."""
    try:
        content = Path(text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc}") from None
    try:
        return parse_policy(content, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse(kind: type[_Number], text: str) -> _Number:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'a whole number' if kind is int else 'a number'}: {text!r}") from None


def _add_policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", type=_policy_file, default=None, metavar="FILE",
        help="default policy, a JSON object of Policy fields, for runs whose start event carries none",
    )  # fmt: skip


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None, help="data dir (default $RUNVISOR_HOME or ~/.runvisor)")
    parser.add_argument("--port", type=_port, default=4222, help="client port (default 4222; 0 picks a free one)")
    parser.add_argument("--monitor-port", type=_port, default=8222, help="HTTP monitoring port (0: a free one)")
    parser.add_argument("--partitions", type=_at_least_one, default=32, help="partitions of RV_STEPS (default 32)")
    parser.add_argument(
        "--supervisors", type=_at_least_zero, default=1, help="supervisor workers to run in-process (default 1)"
    )
    parser.add_argument(
        "--tools", action="append", default=[], metavar="MODULE:ATTR",
        help="also serve this ToolRegistry (repeatable), e.g. runvisor.actors.sim:demo_tools",
    )  # fmt: skip
    parser.add_argument("--lease-ttl", type=_above_zero, default=DEFAULT_LEASE_TTL_S, help="lease TTL in seconds")
    _add_policy_option(parser)


def _add_supervisor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=_at_least_one, default=None, help="partitions (default: as RV_STEPS has them)"
    )
    parser.add_argument(
        "--lease-ttl", type=_above_zero, default=None, help="lease TTL (default: the rv_leases bucket's)"
    )
    parser.add_argument(
        "--lookback", type=_at_least_zero_s, default=900.0, help="seconds of steps a new owner replays (900)"
    )
    parser.add_argument(
        "--idle", type=_above_zero, default=3600.0, metavar="S",
        help="forget runs silent this long (3600); their state stays in rv_runs and is recalled if they go on",
    )  # fmt: skip
    _add_policy_option(parser)


async def _up(args: argparse.Namespace, stop: asyncio.Event) -> int:
    home: Path = args.home or default_home()
    server: EmbeddedServer | None = None
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("NATS_URL"):
            admin = Endpoint.discover("admin")
            url = admin.url
            print(f"using the existing NATS server at {url} (NATS_URL); nothing is started")
        else:
            server = EmbeddedServer(home, port=args.port or None, monitor_port=args.monitor_port or None, publish=True)
            await stack.enter_async_context(server)
            admin, url = server.endpoint("admin"), server.url
            _print_connect_help(server)
        nc = await connect(admin, "runvisor-up", stop=stop)
        stack.push_async_callback(nc.close)
        report = await provision(nc, partitions=args.partitions, lease_ttl_s=args.lease_ttl)
        print("provisioned: " + ", ".join(f"{name} {what}" for name, what in report.items()))
        workers = [
            SupervisorWorker(
                _supervisor_endpoint(server), partitions=args.partitions, lease_ttl_s=args.lease_ttl, policy=args.policy
            )
            for _ in range(args.supervisors)
        ]
        executors = [
            ToolExecutor(load_registry(spec), server.endpoint("tool") if server else None) for spec in args.tools
        ]
        served = ", ".join(t.name for e in executors for t in e.tools) or "none (add --tools MODULE:ATTR)"
        print(
            f"runvisor is up at {url}: {len(workers)} supervisor worker(s), tools: {served}; Ctrl-C stops it",
            flush=True,
        )
        async with asyncio.TaskGroup() as tg:
            for actor in (*workers, *executors):
                tg.create_task(actor.run(stop))
        print("stopped", flush=True)
    return 0


def _supervisor_endpoint(server: EmbeddedServer | None) -> Endpoint:
    """The supervisor role's endpoint: from the embedded server, or discovered for NATS_URL."""
    return server.endpoint("supervisor") if server is not None else Endpoint.discover("supervisor")


async def _supervisor(args: argparse.Namespace, stop: asyncio.Event) -> int:
    worker = SupervisorWorker(
        worker_id=args.worker_id, partitions=args.partitions, lease_ttl_s=args.lease_ttl, lookback_s=args.lookback,
        idle_s=args.idle, policy=args.policy,
    )  # fmt: skip
    print(f"supervisor {worker.worker_id} starting; Ctrl-C stops it", flush=True)
    await worker.run(stop)
    return 0


def _print_connect_help(server: EmbeddedServer) -> None:
    pw = server.credentials.passwords["operator"]
    print(
        f"nats-server {server.url}  (monitoring {server.monitor_url}, data {server.home})\n"
        f"role passwords: {server.home / 'credentials.json'} (mode 0600)\n"
        "operators, with the nats CLI:\n"
        f"  nats context save runvisor --server {server.url} --user operator --password '{pw}' --select\n"
        "  nats pub rv.ctl.RUN pause          # or resume, kill, 'kill runaway costs'\n"
        "  nats req rv.status.RUN ''          # one run's live state as JSON\n"
        "  nats kv watch rv_runs              # every run, live\n"
        "other processes on this machine find this server through "
        f"{server.home / 'server.json'}; elsewhere set NATS_URL={server.url}",
        flush=True,
    )


async def _demo(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from runvisor.actors.demo import run_demo  # noqa: PLC0415 - the demo pulls in the scripted agents; only it needs them

    # The demo narrates what happens; the actors' own logs would drown it (errors still show).
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    return await run_demo(stop)


async def _tools(args: argparse.Namespace, stop: asyncio.Event) -> int:
    registry = load_registry(args.registry)
    executor = ToolExecutor(registry, max_concurrency=args.concurrency)
    print(f"tool executor serving {', '.join(t.name for t in registry)}; Ctrl-C stops it", flush=True)
    await executor.run(stop)
    return 0


def load_registry(spec: str) -> ToolRegistry:
    """``module:attribute`` naming a ``ToolRegistry``, e.g. ``mytools:tools``."""
    module_name, _, attr = spec.partition(":")
    try:
        registry = getattr(importlib.import_module(module_name), attr or "tools")
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot load tools from {spec!r}: {exc}") from exc
    if not isinstance(registry, ToolRegistry):
        raise CliError(f"{spec!r} is a {type(registry).__name__}, not a ToolRegistry")
    return registry


async def _operator(args: argparse.Namespace, work: Callable[[Client], Awaitable[int]], stop: asyncio.Event) -> int:
    endpoint = Endpoint.discover("operator")
    nc = await connect(
        endpoint, "runvisor-cli", give_up_after_s=args.connect_timeout, stop=stop, max_reconnect_attempts=-1
    )  # ``top`` watches for as long as it runs: a server restarting for minutes is not its end
    try:
        return await work(nc)
    except Exception as exc:
        if is_not_provisioned(exc):
            raise not_provisioned(endpoint.url) from exc
        raise
    finally:
        with contextlib.suppress(Exception):  # a connection the server dropped may fail to close
            await nc.close()


async def _command(args: argparse.Namespace, stop: asyncio.Event) -> int:
    run_id = check_run_id(args.run_id)
    command = Command(
        cmd=args.cmd, issuer=f"cli:{os.environ.get('USER', 'operator')}", note=" ".join(args.note) or None
    )

    async def work(nc: Client) -> int:
        state = await fetch_state(nc, run_id)
        refusal = refuse(run_id, state, command)
        if refusal is not None:
            raise CliError(refusal)
        ack = await send_command(nc, run_id, command)
        print(f"{command.cmd} sent to {run_id} (RV_CONTROL seq {ack.seq})")
        return 0

    return await _operator(args, work, stop)


def refuse(run_id: str, state: RunState | None, command: Command) -> str | None:
    """Why ``command`` must not be sent to the run in ``state`` (None: send it).

    A command for a run nobody knows would create a phantom run in ``rv_runs``; one that would
    change nothing (``protocols.commands.fold``) would only mislead: a stopped run cannot be
    resumed, and a finished one is not killed after the fact.
    """
    if state is None:
        return f"no run {run_id!r} is known (not in rv_runs, and no supervisor answered); nothing sent"
    before = CommandState(state.status, state.stop_reason)
    if fold(before, command) != before:
        return None
    if before.ended:
        how = f"{state.status}" + (f", {state.stop_reason}" if state.stop_reason else "")
        return f"run {run_id} has ended ({how}): a {command.cmd} would change nothing; nothing sent"
    return f"run {run_id} is {state.status}: a {command.cmd} would change nothing; nothing sent"


async def _why(args: argparse.Namespace, stop: asyncio.Event) -> int:
    run_id = check_run_id(args.run_id)

    async def work(nc: Client) -> int:
        state = await fetch_state(nc, run_id)
        if state is None:
            raise CliError(f"no run {run_id!r} is known (not in rv_runs, and no supervisor answered)")
        print(describe(state))
        return 0

    return await _operator(args, work, stop)


def ps_table(states: list[RunState]) -> str:
    """Runs as ``runvisor ps`` and ``runvisor top`` print them."""
    lines = [f"{'RUN':40} {'STATUS':9} {'REASON':20} {'STEP':>6} {'TOKENS':>9} {'COST':>9} TOOL"]
    for s in states:
        lines.append(
            f"{s.run_id[:40]:40} {s.status:9} {s.stop_reason or '-':20} {s.last_seq:>6} "
            f"{s.counters.tokens:>9} {s.counters.cost_usd:>9.4f} {s.current_tool or '-'}"
        )
    return "\n".join(lines)


async def _ps(args: argparse.Namespace, stop: asyncio.Event) -> int:
    async def work(nc: Client) -> int:
        print(ps_table(await list_states(nc)))
        return 0

    return await _operator(args, work, stop)


async def _top(args: argparse.Namespace, stop: asyncio.Event) -> int:
    async def work(nc: Client) -> int:
        while not stop.is_set():
            # Clear the screen and home the cursor, like top; plain lines when not on a terminal.
            prefix = "\x1b[2J\x1b[H" if sys.stdout.isatty() else ""
            now = time.strftime("%H:%M:%S")
            try:
                states = await list_states(nc)
            except (NatsError, TimeoutError) as exc:
                if is_not_provisioned(exc):
                    raise
                # The server restarting, or a moment unreachable: say so and keep watching.
                print(f"{prefix}runvisor top: cannot read rv_runs ({exc}), {now}; trying again", flush=True)
            else:
                running = sum(s.status == RunStatus.RUNNING for s in states)
                header = f"runvisor top: {len(states)} runs, {running} running, {now}  (Ctrl-C quits)"
                print(f"{prefix}{header}\n{ps_table(states[: args.limit])}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
        return 0

    return await _operator(args, work, stop)


if __name__ == "__main__":
    sys.exit(main())
