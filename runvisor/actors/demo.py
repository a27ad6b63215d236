"""``runvisor demo``: every failure runvisor exists for, caught live on the real runtime.

Starts a private nats-server, one supervisor worker and one tool executor, then runs the
scripted agents of ``runvisor.actors.sim`` side by side (one per failure mode, plus a healthy
run, one an operator pauses and resumes, one an operator kills and one that crashes). It
narrates verdicts and commands as they happen, with a line of run counts every few seconds,
and ends with a table of every run's status, reason and evidence as ``rv_runs`` holds them.
``--json`` prints that table as a JSON list instead (the narration goes to stderr). The exit
status is 0 only when every scenario ended with its expected status and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from nats.aio.client import Client
from nats.aio.msg import Msg

from runvisor import Run, RunKilled, RunStopped, ToolExecutor
from runvisor.actors.connection import connect
from runvisor.actors.operator import fetch_state
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.sim import SCENARIOS, Scenario, demo_tools
from runvisor.actors.streams.control import last_stored_command
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.commands import ENDED, end_reason
from runvisor.protocols.messages import Evidence, RunState, ToolRequest, ToolResult
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import embedded_server, eventually

#: The agents' time limit: every scenario ends within seconds; past this one is reported as it stands.
PLAY_TIMEOUT_S = 45.0
#: How often the narration shows how many runs are in each status.
PROGRESS_EVERY_S = 2.0
#: How long after its agent ended a run may take to reach its final state in ``rv_runs``.
SETTLE_S = 5.0


class Narrator:
    """Lines stamped with the seconds since the demo began."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        print(f"{self.elapsed:5.1f}s  {text}", file=self.out, flush=True)


@dataclass(frozen=True)
class Outcome:
    """How one scenario's run ended, as operators see it, and what its agent saw."""

    scenario: Scenario
    run_id: str
    state: RunState | None
    evidence: Evidence | None
    agent_saw: str

    @property
    def status(self) -> RunStatus | None:
        return self.state.status if self.state else None

    @property
    def reason(self) -> StopReason | None:
        """The stop reason; a completed run's is COMPLETED (DESIGN §5), as its checkpoint says."""
        if self.state is None:
            return None
        if self.state.stop_reason is None and self.state.status is RunStatus.COMPLETED:
            return StopReason.COMPLETED
        return self.state.stop_reason

    @property
    def ok(self) -> bool:
        return self.status is self.scenario.status and self.reason is self.scenario.reason

    def as_json(self) -> dict[str, object]:
        evidence = self.evidence.model_dump(mode="json") if self.evidence else None
        return {"run_id": self.run_id, "scenario": self.scenario.name, "status": self.status,
                "reason": self.reason, "evidence": evidence}  # fmt: skip


@contextlib.asynccontextmanager
async def demo_stack(server: EmbeddedServer, narrate: Callable[[str], None]) -> AsyncIterator[Client]:
    """A supervisor worker and a tool executor serving ``demo_tools`` on ``server``, both ready;
    yields an operator's connection, which also narrates verdicts and commands as they happen."""
    stop = asyncio.Event()
    # Quick ticks and flushes: a demo's stalls are seconds long, and its table is read at once.
    supervisor = SupervisorWorker(server.endpoint("supervisor"), worker_id="demo", tick_s=0.2, flush_s=0.1)
    # The job the killed run left behind need not be waited for when the demo ends.
    executor = ToolExecutor(demo_tools, server.endpoint("tool"), graceful_s=0.5)
    operator = await connect(server.endpoint("operator"), "demo-operator")
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(supervisor.run(stop))
            tg.create_task(executor.run(stop))
            try:
                await _ready(supervisor, server)
                await _narrate_verdicts(operator, narrate)
                yield operator
            finally:
                stop.set()
    finally:
        await operator.close()


async def play(
    server: EmbeddedServer, operator: Client, scenarios: Sequence[Scenario], say: Callable[[str], None], suffix: str
) -> list[Outcome]:
    """Run the scenarios' agents (and operators) side by side; each run's outcome once it has settled."""
    runs = {s.name: f"{s.name}-{suffix}" for s in scenarios}
    saw: dict[str, str] = {}

    async def agent(scenario: Scenario) -> None:
        run_id = runs[scenario.name]
        try:
            async with Run.start(
                goal=f"demo: {scenario.story}", policy=scenario.policy, run_id=run_id,
                endpoint=server.endpoint("agent"), agent=f"sim-{scenario.name}",
            ) as run:  # fmt: skip
                await scenario.agent(run)
            saw[scenario.name] = "completed"
        except RunStopped as exc:
            saw[scenario.name] = f"RunStopped({exc.reason})"
        except RunKilled:
            saw[scenario.name] = "RunKilled"
        except Exception as exc:  # the crash scenario's own bug, or anything the demo did not foresee
            saw[scenario.name] = f"{type(exc).__name__}: {exc}"
        say(f"[{scenario.name}] agent ended: {saw[scenario.name]}")

    async def operator_part(scenario: Scenario) -> None:
        assert scenario.operator is not None
        try:
            await scenario.operator(operator, runs[scenario.name], say)
        except Exception as exc:  # reported; the run's outcome then says what went wrong
            say(f"[{scenario.name}] operator could not act: {exc}")

    say(f"starting {len(scenarios)} agents: {', '.join(runs.values())}")
    tasks = [asyncio.create_task(agent(s)) for s in scenarios]
    tasks += [asyncio.create_task(operator_part(s)) for s in scenarios if s.operator is not None]
    progress = asyncio.create_task(_progress(operator, list(runs.values()), say))
    _, late = await asyncio.wait(tasks, timeout=PLAY_TIMEOUT_S)
    for task in late:
        task.cancel()
    if late:
        say(f"{len(late)} agents or operators still busy after {PLAY_TIMEOUT_S:g}s: cancelled")
        await asyncio.wait(late)
    progress.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await progress
    outcomes = []
    for scenario in scenarios:
        run_id = runs[scenario.name]
        state = await _settled(operator, run_id)
        evidence = await _evidence(operator, state) if state else None
        outcomes.append(Outcome(scenario, run_id, state, evidence, saw.get(scenario.name, "-")))
    return outcomes


async def run_demo(stop: asyncio.Event, *, as_json: bool = False) -> int:
    """The whole demo (``runvisor demo``); 0 when every scenario ended as expected."""
    narrator = Narrator(sys.stderr if as_json else sys.stdout)
    say = narrator.say
    async with embedded_server() as server:
        say(f"nats-server started at {server.url}, provisioned (JetStream in {server.home})")
        async with demo_stack(server, say) as operator:
            say("a supervisor worker and a tool executor are up: " + ", ".join(t.name for t in demo_tools))
            play_task = asyncio.create_task(play(server, operator, SCENARIOS, say, time.strftime("%H%M%S")))
            interrupted = asyncio.create_task(stop.wait())
            await asyncio.wait({play_task, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if not play_task.done():
                play_task.cancel()
                say("interrupted")
                return 130
            outcomes = play_task.result()
    failures = [o for o in outcomes if not o.ok]
    if as_json:
        print(json.dumps([o.as_json() for o in outcomes], indent=2))
    else:
        print(f"\n{table(outcomes)}\n")
    verdict = f"{len(failures)} unexpected: {', '.join(o.scenario.name for o in failures)}" if failures else (
        "every run ended as expected")  # fmt: skip
    say(f"demo finished: {len(outcomes)} scenarios in {narrator.elapsed:.1f}s, {verdict}")
    return 1 if failures else 0


def table(outcomes: Sequence[Outcome]) -> str:
    """The demo's final table: one line per scenario, the evidence cut to fit."""
    lines = [f"{'SCENARIO':15} {'STATUS':9} {'REASON':20} {'':3} EVIDENCE"]
    for o in outcomes:
        status = o.status or "-"
        reason = o.reason or "-"
        mark = "ok" if o.ok else "!!"
        evidence = o.evidence.summary if o.evidence else "-"
        lines.append(f"{o.scenario.name:15} {status:9} {reason:20} {mark:3} {_cut(evidence, 70)}")
        if not o.ok:
            lines.append(f"{'':15} expected {o.scenario.expected}; the agent saw {o.agent_saw}")
    return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _ready(supervisor: SupervisorWorker, server: EmbeddedServer) -> None:
    await eventually(lambda: supervisor._leases is not None and supervisor.leases.owned, what="supervisor leases")
    agent = await connect(server.endpoint("agent"), "demo-probe")

    async def tools_answer() -> bool:
        probe = ToolRequest(
            run_id="demo-probe", call_id="probe", tool="search", args={"term": "x"}, idempotency_key="demo-probe"
        )
        with contextlib.suppress(Exception):
            reply = await agent.request(subjects.tool("search"), codec.encode(probe), timeout=1)
            return codec.decode(ToolResult, reply.data).call_id == "probe"
        return False

    try:
        await eventually(tools_answer, what="the tool executor to answer")
    finally:
        await agent.close()


async def _narrate_verdicts(operator: Client, say: Callable[[str], None]) -> None:
    """Say every verdict and command as it happens (what ``nats sub 'rv.event.>'`` shows)."""

    async def on_event(msg: Msg) -> None:
        data = json.loads(msg.data)
        run = subjects.run_id_of(msg.subject)
        if "error" in data:
            say(f"  [{run}] rejected: {data['error']}")
        else:
            summary = _cut(data["evidence"]["summary"], 90)
            say(f"  [{run}] {data['severity']} {data['reason']} ({data['detector']}): {summary}")

    async def on_ctl(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            cmd = codec.decode_command(msg.data)
            reason = f" {cmd.reason}" if cmd.reason else ""
            say(f"  [{subjects.run_id_of(msg.subject)}] <- {cmd.cmd}{reason} from {cmd.issuer}")

    await operator.subscribe(subjects.EVENT_ALL, cb=on_event)
    await operator.subscribe(subjects.CTL_ALL, cb=on_ctl)


async def _progress(operator: Client, run_ids: list[str], say: Callable[[str], None]) -> None:
    """Every few seconds, how many runs are in each status."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        try:
            states = await asyncio.gather(*(fetch_state(operator, r, timeout=0.5) for r in run_ids))
        except Exception as exc:  # a line of narration is not worth ending the demo for
            say(f"runs: cannot read their states now ({exc})")
            continue
        counts = Counter(s.status.value if s else "STARTING" for s in states)
        say("runs: " + ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())))


async def _settled(operator: Client, run_id: str) -> RunState | None:
    """The run's state once it has ended (or, past ``SETTLE_S``, as it stands)."""

    async def ended() -> RunState | None:
        state = await fetch_state(operator, run_id, timeout=0.5)
        return state if state is not None and state.status in ENDED else None

    with contextlib.suppress(AssertionError):
        found: RunState = await eventually(ended, timeout=SETTLE_S, interval=0.05)
        return found
    return await fetch_state(operator, run_id)


async def _evidence(operator: Client, state: RunState) -> Evidence | None:
    """What proves the run's reason: the verdict behind it (a crash's error too), or the operator's command."""
    verdict = state.last_verdict
    if verdict is not None and verdict.reason == state.stop_reason:
        return verdict.evidence
    if state.stop_reason is None:
        return None
    stored = await last_stored_command(operator.jetstream(), state.run_id)
    command = stored.command if stored is not None else None
    if command is not None and command.cmd in ("kill", "stop") and end_reason(command) is state.stop_reason:
        return command.evidence or Evidence(summary=command.describe())
    return None


__all__ = ["Narrator", "Outcome", "demo_stack", "play", "run_demo", "table"]
