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
from pathlib import Path
from typing import NoReturn, TypeVar

from runvisor.actors.connection import ONE_SHOT_CONNECT_S, connect
from runvisor.actors.endpoint import CREDENTIALS_FILE, Endpoint, default_home
from runvisor.actors.metrics import Metrics, MetricsServer, parse_address
from runvisor.actors.operator import _cli as operator_cli
from runvisor.actors.operator._cli import CliError, emit
from runvisor.actors.runtime import configure_logging, run_main
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.errors import RunvisorError
from runvisor.protocols.policy import Policy, parse_policy
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.protocols.subjects import DEFAULT_LEASE_TTL_S, KEEP_FINISHED_S

log = logging.getLogger("runvisor")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        try:
            return run_main(lambda stop: args.handler(args, stop), use_uvloop=not args.no_uvloop)
        except RunvisorError as exc:
            print(f"runvisor: {exc}", file=sys.stderr, flush=True)
            if getattr(args, "json", False):
                emit({"error": str(exc)})  # the same, for the script reading stdout
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
    demo.add_argument(
        "--json", action="store_true", help="print the outcome of each scenario as a JSON list (narration on stderr)"
    )
    demo.set_defaults(handler=_demo)

    for name, text in (("pause", "pause a run at its next step (state is checkpointed)"),
                       ("resume", "resume a paused run"),
                       ("kill", "kill a run and its sub-agents: calls in flight are cancelled; never resumed"),
                       ("stop", "end a run and its sub-agents at their next step; never resumed")):  # fmt: skip
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("run_id")
        cmd.add_argument("note", nargs="*", help="why, for the record (e.g. 'runaway costs')")
        if name == "stop":
            cmd.add_argument(
                "--reason", type=_reason, default=StopReason.USER_KILLED, metavar="REASON",
                help="the stop reason recorded (default USER_KILLED), one of " + ", ".join(StopReason),
            )  # fmt: skip
        _add_json_option(cmd)
        cmd.set_defaults(handler=operator_cli.command, cmd=name)

    why = sub.add_parser(
        "why", help="a run's status, stop reason, the steps that prove it, its progress, and what to do next"
    )
    why.add_argument("run_id")
    _add_json_option(why)
    why.set_defaults(handler=operator_cli.why)

    steps = sub.add_parser("steps", help="a run's step events, the last verdict's evidence marked with >")
    steps.add_argument("run_id")
    steps.add_argument("--follow", "-f", action="store_true", help="then show new steps as they come, until Ctrl-C")
    steps.add_argument("--last", type=_at_least_one, default=None, metavar="N", help="only the last N stored steps")
    _add_json_option(steps, "one JSON object a line")
    steps.set_defaults(handler=operator_cli.steps)

    ps = sub.add_parser(
        "ps",
        help="list runs, most recently active first: status, reason, agent, age, spend; sub-agents under their parent",
    )
    ps.add_argument(
        "--status", type=_status, action="append", default=[], metavar="STATUS",
        help="only runs with this status (repeatable): running, paused, stopped, completed",
    )  # fmt: skip
    ps.add_argument(
        "--since", type=_duration, default=None, metavar="AGE", help="only runs active since, e.g. 10m, 2h, 1d"
    )
    ps.add_argument("--limit", type=_at_least_one, default=50, help="runs shown (default 50)")
    _add_json_option(ps)
    ps.set_defaults(handler=operator_cli.ps)

    top = sub.add_parser("top", help="live view of the most recently active runs, until q or Ctrl-C")
    top.add_argument("--interval", type=_above_zero, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument("--limit", type=_at_least_one, default=30, help="runs shown (default 30)")
    top.set_defaults(handler=operator_cli.watch)
    return parser


def _add_json_option(parser: argparse.ArgumentParser, what: str = "JSON") -> None:
    parser.add_argument("--json", action="store_true", help=f"machine-readable output ({what}); same exit status")


def _status(text: str) -> RunStatus:
    """A run status (an argparse type), in any case."""
    try:
        return RunStatus(text.upper())
    except ValueError:
        choices = ", ".join(s.lower() for s in RunStatus)
        raise argparse.ArgumentTypeError(f"not a status: {text!r} (one of {choices})") from None


def _reason(text: str) -> StopReason:
    """A stop reason (an argparse type), in any case."""
    try:
        return StopReason(text.upper())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a stop reason: {text!r} (one of {', '.join(StopReason)})") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    """A duration (an argparse type): ``90`` or ``90s``, ``10m``, ``2h``, ``1d``, ``1w``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


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


def _add_keep_finished_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-finished", type=_duration, default=KEEP_FINISHED_S, metavar="AGE",
        help="how long a stopped or completed run stays in rv_runs after its last write, e.g. 2d "
        "(default 7d, as long as RV_STEPS keeps its steps); a live run's state never expires",
    )  # fmt: skip


def _add_metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port", type=_metrics_address, default=None, metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST 127.0.0.1 unless given; 0 picks a "
        "free port); off by default",
    )  # fmt: skip


def _metrics_address(text: str) -> tuple[str, int]:
    """Where to serve metrics (an argparse type): ``PORT`` or ``HOST:PORT``."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _serve_metrics(stack: contextlib.AsyncExitStack, address: tuple[str, int] | None) -> Metrics | None:
    """Serve Prometheus metrics at ``address`` until ``stack`` closes; None when not asked for."""
    if address is None:
        return None
    metrics = Metrics()
    server = await stack.enter_async_context(MetricsServer(metrics, *address))
    print(f"Prometheus metrics at {server.url}", flush=True)
    return metrics


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
    _add_metrics_option(parser)
    _add_policy_option(parser)
    _add_keep_finished_option(parser)


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
    _add_metrics_option(parser)
    _add_policy_option(parser)
    _add_keep_finished_option(parser)


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
        metrics = await _serve_metrics(stack, args.metrics_port)
        workers = [
            SupervisorWorker(
                _supervisor_endpoint(server),
                metrics=metrics,
                partitions=args.partitions,
                lease_ttl_s=args.lease_ttl,
                policy=args.policy,
                keep_finished_s=args.keep_finished,
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
    async with contextlib.AsyncExitStack() as stack:
        metrics = await _serve_metrics(stack, args.metrics_port)
        worker = SupervisorWorker(
            worker_id=args.worker_id, partitions=args.partitions, lease_ttl_s=args.lease_ttl, lookback_s=args.lookback,
            idle_s=args.idle, policy=args.policy, keep_finished_s=args.keep_finished, metrics=metrics,
        )  # fmt: skip
        print(f"supervisor {worker.worker_id} starting; Ctrl-C stops it", flush=True)
        await worker.run(stop)
    return 0


def _print_connect_help(server: EmbeddedServer) -> None:
    # No password on stdout, in a log or on a command line (README "Security"): the operator's goes
    # from the 0600 file into the nats CLI's context through the environment of one command.
    creds = server.home / CREDENTIALS_FILE
    read_pw = f"python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"operator\"])' {creds}"
    print(
        f"nats-server {server.url}  (monitoring {server.monitor_url}, data {server.home})\n"
        f"role passwords: {creds} (mode 0600; the operator's user is 'operator')\n"
        "operators, with the nats CLI (the password goes from that file into the CLI's context):\n"
        f'  NATS_PASSWORD="$({read_pw})" nats context save runvisor --server {server.url} --user operator --select\n'
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
    return await run_demo(stop, as_json=args.json)


async def _tools(args: argparse.Namespace, stop: asyncio.Event) -> int:
    registry = load_registry(args.registry)
    executor = ToolExecutor(registry, max_concurrency=args.concurrency)
    print(f"tool executor serving {', '.join(t.name for t in registry)}; Ctrl-C stops it", flush=True)
    await executor.run(stop)
    return 0


def load_registry(spec: str) -> ToolRegistry:
    """``module:attribute`` naming a ``ToolRegistry``, e.g. ``mytools:tools``."""
    module_name, _, attr = spec.partition(":")
    # A console script's sys.path begins with its own bin directory, not the directory it was run
    # from: `runvisor tools mytools:tools` must find mytools.py there, as `python -m` would.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        registry = getattr(importlib.import_module(module_name), attr or "tools")
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot load tools from {spec!r}: {exc}") from exc
    if not isinstance(registry, ToolRegistry):
        raise CliError(f"{spec!r} is a {type(registry).__name__}, not a ToolRegistry")
    return registry


if __name__ == "__main__":
    sys.exit(main())
