"""The agent's ``Run`` handle against a real nats-server, with the agent role's credentials.

A tiny in-test tool executor stands in for ``runvisor.actors.tools``: it serves one tool in its queue
group as the ``tool`` role, and (like the real one) returns the recorded result for an
idempotency key it has already executed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from runvisor.actors.agent import Run, RunError, RunKilled, RunNotFound, RunNotResumable, RunStopped
from runvisor.actors.connection import connect
from runvisor.actors.operator import send_command
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Checkpoint, Command, Evidence, Policy, StepEvent, ToolRequest, ToolResult
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


class Executor:
    """Serves one tool; records what it ran by idempotency key and replays a repeated key."""

    def __init__(self, nc: Client, name: str) -> None:
        self.nc = nc
        self.name = name
        self.requests: list[ToolRequest] = []
        self.executions = 0
        self.results: dict[str, ToolResult] = {}
        #: When set, requests wait here before the reply (a slow tool); the result is recorded first.
        self.hold: asyncio.Event | None = None

    async def serve(self) -> None:
        await self.nc.subscribe(subjects.tool(self.name), queue=subjects.tool_queue(self.name), cb=self._handle)
        await self.nc.flush()

    async def _handle(self, msg: Msg) -> None:
        request = codec.decode(ToolRequest, msg.data)
        self.requests.append(request)
        recorded = self.results.get(request.idempotency_key)
        if recorded is not None:
            await msg.respond(codec.encode(recorded.model_copy(update={"replayed": True})))
            return
        self.executions += 1
        result = ToolResult(call_id=request.call_id, ok=True, observation=f"ran {request.args}")
        self.results[request.idempotency_key] = result
        if self.hold is not None:
            await self.hold.wait()
        await msg.respond(codec.encode(result))


@pytest_asyncio.fixture
async def executor(server: EmbeddedServer, run_id: str) -> AsyncIterator[Executor]:
    nc = await connect(server.endpoint("tool"), "test-tool")
    tool = Executor(nc, f"t-{run_id[-8:]}")
    await tool.serve()
    yield tool
    if tool.hold is not None:
        tool.hold.set()
    await nc.close()


async def checkpoint(admin: Client, run_id: str) -> Checkpoint | None:
    kv = await admin.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)
    try:
        entry = await kv.get(run_id)
    except KeyNotFoundError:
        return None
    return codec.decode(Checkpoint, entry.value) if entry.value else None


async def has_status(admin: Client, run_id: str, status: RunStatus) -> bool:
    cp = await checkpoint(admin, run_id)
    return cp is not None and cp.status == status


def status_is(admin: Client, run_id: str, status: RunStatus) -> Callable[[], Awaitable[Checkpoint | None]]:
    async def probe() -> Checkpoint | None:
        cp = await checkpoint(admin, run_id)
        return cp if cp is not None and cp.status == status else None

    return probe


async def stored_steps(admin: Client, run_id: str) -> list[StepEvent]:
    """Every stored step of the run, read back from RV_STEPS up to its ``final`` event."""
    subject = subjects.stored_step(subjects.partition_of(run_id), run_id)
    sub = await admin.jetstream().subscribe(subject, stream=subjects.STEPS_STREAM, ordered_consumer=True)
    events: list[StepEvent] = []
    try:
        while not events or events[-1].kind != "final":
            msg = await sub.next_msg(timeout=WAIT_S)
            events.append(codec.decode(StepEvent, msg.data))
    finally:
        await sub.unsubscribe()
    return events


async def all_stored_steps(admin: Client, run_id: str) -> list[StepEvent]:
    """Every stored step of the run, in stream order (a step sent again comes after newer ones)."""
    subject = subjects.stored_step(subjects.partition_of(run_id), run_id)
    sub = await admin.jetstream().subscribe(subject, stream=subjects.STEPS_STREAM, ordered_consumer=True)
    events: list[StepEvent] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=WAIT_S)
            events.append(codec.decode(StepEvent, msg.data))
            if msg.metadata.num_pending == 0:
                return events
    finally:
        await sub.unsubscribe()


async def test_steps_are_stored_with_increasing_seq(agent_nc: Client, admin: Client, run_id: str) -> None:
    ticks = iter(range(1000, 2000))
    policy = Policy(max_steps=200)
    async with Run.start(
        goal="fix the parser", policy=policy, run_id=run_id, nc=agent_nc, agent="my-agent",
        clock=lambda: float(next(ticks)),
    ) as run:  # fmt: skip
        await run.llm(tokens_in=1200, tokens_out=80, cost_usd=0.004)
        await run.message("thinking...")
        await run.progress(0.3)
        run.state["notes"] = ["parser is in json.py"]

    events = await stored_steps(admin, run_id)
    assert [e.kind for e in events] == ["start", "llm", "message", "message", "final"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e.ts >= 1000 for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    start, llm, _, progress, final = events
    assert (start.task, start.policy, start.agent) == ("fix the parser", policy, "my-agent")
    assert (llm.tokens_in, llm.tokens_out, llm.cost_usd) == (1200, 80, 0.004)
    assert progress.progress == 0.3
    assert final.ok is True
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason, cp.state) == (RunStatus.COMPLETED, StopReason.COMPLETED, run.state)


async def test_tool_call_checkpoints_intent_and_reports_call_and_result(
    agent_nc: Client, admin: Client, run_id: str, executor: Executor
) -> None:
    async with Run.start(goal="search", run_id=run_id, nc=agent_nc) as run:
        result = await run.call_tool(executor.name, {"q": "JsonParser"}, timeout=5)
        assert run.open_intent is None

    assert result.ok
    assert result.observation == "ran {'q': 'JsonParser'}"
    [request] = executor.requests
    assert request.idempotency_key == f"{run_id}:{request.call_id}"
    events = await stored_steps(admin, run_id)
    call, done = [e for e in events if e.kind in ("tool_call", "tool_result")]
    assert (call.tool, call.call_id, call.args, call.seq) == (
        executor.name,
        request.call_id,
        {"q": "JsonParser"},
        request.seq,
    )
    assert (done.call_id, done.ok, done.observation) == (request.call_id, True, result.observation)
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert cp.intent is not None
    assert (cp.intent.call_id, cp.intent.state) == (request.call_id, "done")


async def test_call_without_executor_or_answer_is_a_failed_result(
    agent_nc: Client, run_id: str, executor: Executor
) -> None:
    executor.hold = asyncio.Event()  # never answers
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        nobody = await run.call_tool(f"none-{run_id[-8:]}", {}, timeout=1)
        silent = await run.call_tool(executor.name, {"n": 1}, timeout=0.1)
        huge = await run.call_tool(executor.name, {"blob": "x" * 70_000})

    assert (nobody.ok, nobody.error_type) == (False, "NoResponders")
    assert nobody.error is not None
    assert "within 1s" in nobody.error  # it waited for an executor as long as the call's timeout allowed
    assert (silent.ok, silent.error_type) == (False, "TimeoutError")
    assert (huge.ok, huge.error_type) == (False, "ArgsTooLarge")


async def test_a_call_waits_a_moment_for_an_executor_to_appear(server: EmbeddedServer, run_id: str) -> None:
    # A lone executor restarting: the call is made while nothing serves the tool, and an
    # executor subscribes a moment later. Nobody received the first sends, so sending again is safe.
    agent_nc = await connect(server.endpoint("agent"), "t-agent")
    tool_nc = await connect(server.endpoint("tool"), "t-tool")
    late = Executor(tool_nc, f"late-{run_id[-8:]}")
    try:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            call = asyncio.create_task(run.call_tool(late.name, {"n": 1}, timeout=10))
            await asyncio.sleep(0.8)
            assert not call.done(), "the call gave up before an executor could appear"
            await late.serve()
            result = await asyncio.wait_for(call, WAIT_S)
        assert (result.ok, result.observation, late.executions) == (True, "ran {'n': 1}", 1)
    finally:
        await tool_nc.close()
        await agent_nc.close()


async def test_heartbeats_while_a_tool_call_is_pending(
    agent_nc: Client, admin: Client, run_id: str, executor: Executor
) -> None:
    executor.hold = asyncio.Event()
    subject = subjects.stored_step(subjects.partition_of(run_id), run_id)
    seen = await admin.jetstream().subscribe(subject, stream=subjects.STEPS_STREAM, ordered_consumer=True)

    async def release_on_heartbeat() -> None:
        while True:
            event = codec.decode(StepEvent, (await seen.next_msg(timeout=WAIT_S)).data)
            if event.kind == "heartbeat" and event.call_id:
                assert executor.hold is not None
                executor.hold.set()
                return

    async with Run.start(goal="g", run_id=run_id, nc=agent_nc, heartbeat_s=0.05) as run:
        watcher = asyncio.create_task(release_on_heartbeat())
        result = await run.call_tool(executor.name, {"slow": True}, timeout=WAIT_S)
        await watcher
    await seen.unsubscribe()
    assert result.ok


async def test_pause_holds_at_next_step_and_resume_continues_with_same_state(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    first_done, go = asyncio.Event(), asyncio.Event()

    async def agent() -> dict[str, Any]:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            run.state["notes"] = ["a", {"b": 1}]
            await run.message("one")
            first_done.set()
            await go.wait()
            # The pause is sent on another connection: wait until it has arrived, or "two" may go out first.
            await eventually(lambda: run.paused, what="the pause received")
            await run.message("two")  # holds here while paused
            run.state["after"] = True
            return run.state

    task = asyncio.create_task(agent())
    await asyncio.wait_for(first_done.wait(), WAIT_S)
    await send_command(operator, run_id, Command(cmd="pause"))
    go.set()
    paused: Checkpoint = await eventually(status_is(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    assert paused.stop_reason == StopReason.USER_PAUSED
    assert paused.state == {"notes": ["a", {"b": 1}]}
    assert not task.done()

    await send_command(operator, run_id, Command(cmd="resume"))
    state = await asyncio.wait_for(task, WAIT_S)
    assert state == {"notes": ["a", {"b": 1}], "after": True}
    done = await checkpoint(admin, run_id)
    assert done is not None
    assert (done.status, done.state) == (RunStatus.COMPLETED, state)
    kinds = [(e.kind, e.observation) for e in await stored_steps(admin, run_id)]
    assert ("message", "two") in kinds
    assert kinds.index(("heartbeat", "resumed")) < kinds.index(("message", "two"))


async def test_kill_cancels_a_slow_call_at_once_and_refuses_later_resume(
    agent_nc: Client, admin: Client, operator: Client, run_id: str, executor: Executor
) -> None:
    # Given a tool that holds every request until the test ends
    executor.hold = asyncio.Event()

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            await run.call_tool(executor.name, {"slow": True}, timeout=60)

    task = asyncio.create_task(agent())
    await eventually(lambda: executor.requests, what="the slow request")
    # When an operator kills the run, the pending call returns before the tool does
    await send_command(operator, run_id, Command(cmd="kill", note="runaway"))
    with pytest.raises(RunKilled, match="runaway"):
        await asyncio.wait_for(task, WAIT_S)
    assert not executor.hold.is_set()

    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    events = await stored_steps(admin, run_id)
    assert events[-1].ok is False
    assert [e.ok for e in events if e.kind == "tool_result"] == [False]
    with pytest.raises(RunNotResumable, match="USER_KILLED"):
        async with Run.resume(run_id, nc=agent_nc):
            pass


async def test_kill_recorded_only_in_control_stream_refuses_resume(
    agent_nc: Client, operator: Client, run_id: str
) -> None:
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        await run.message("x")
    # A run that ended normally is not resumable either.
    with pytest.raises(RunNotResumable, match="COMPLETED"):
        async with Run.resume(run_id, nc=agent_nc):
            pass

    other = f"{run_id}-2"
    crashed = Run.start(goal="g", run_id=other, nc=agent_nc)
    with pytest.raises(ZeroDivisionError):
        async with crashed:
            _ = 1 / 0
    await send_command(operator, other, Command(cmd="kill"))
    with pytest.raises(RunNotResumable, match="USER_KILLED"):
        async with Run.resume(other, nc=agent_nc):
            pass


async def test_resume_of_unknown_run_is_run_not_found(agent_nc: Client, run_id: str) -> None:
    with pytest.raises(RunNotFound, match=run_id):
        async with Run.resume(run_id, nc=agent_nc):
            pass


async def test_starting_an_existing_run_again_is_refused(agent_nc: Client, run_id: str) -> None:
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
        pass
    with pytest.raises(RunError, match=r"Run\.resume"):
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc):
            pass


async def test_pause_sent_before_the_agent_subscribed_is_applied(
    agent_nc: Client, admin: Client, operator: Client, run_id: str
) -> None:
    await send_command(operator, run_id, Command(cmd="pause"))

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            await run.message("held")

    task = asyncio.create_task(agent())
    await eventually(status_is(admin, run_id, RunStatus.PAUSED), what="a PAUSED checkpoint")
    assert not task.done()
    await send_command(operator, run_id, Command(cmd="resume"))
    await asyncio.wait_for(task, WAIT_S)


async def test_supervisor_stop_raises_run_stopped_with_reason_and_evidence(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str
) -> None:
    supervisor = await connect(server.endpoint("supervisor"), "test-supervisor")
    evidence = Evidence(summary="seq 2-4: `find_file JsonParser` x3, each 'No matches found'", seqs=(2, 3, 4))
    stop = Command(cmd="stop", reason=StopReason.LOOP_DETECTED, issuer="supervisor", evidence=evidence)

    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            await run.message("looping")
            await send_command(supervisor, run_id, stop)
            await eventually(lambda: run.last_command, what="the stop command to arrive")
            await run.message("next step")

    try:
        with pytest.raises(RunStopped) as stopped:
            await agent()
    finally:
        await supervisor.close()
    assert (stopped.value.reason, stopped.value.evidence) == (StopReason.LOOP_DETECTED, evidence)
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED)
    assert [e.kind for e in await stored_steps(admin, run_id)] == ["start", "message", "final"]


async def test_undecodable_command_is_ignored(
    agent_nc: Client, operator: Client, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runvisor.actors.agent")
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
        await operator.publish(subjects.ctl(run_id), b"\xc1\x00 not a command")
        await operator.publish(subjects.ctl(run_id), b"frobnicate now")
        await send_command(operator, run_id, Command(cmd="resume"))
        command: Command = await eventually(lambda: run.last_command, what="the valid command after the junk")
        assert command.cmd == "resume"
        await run.message("still running")
    assert sum("undecodable command" in r.getMessage() for r in caplog.records) == 2


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from runvisor.actors.agent import Run

    async def main() -> None:
        async with Run.start(goal="crash me", run_id=sys.argv[1], agent="doomed") as run:
            run.state["notes"] = ["before the call"]
            await run.call_tool(sys.argv[2], {"path": "out.txt"}, timeout=60)
            run.state["notes"].append("unreachable")

    asyncio.run(main())
    """
)


async def test_crashed_agent_resumes_with_open_intent_and_tool_runs_once(
    server: EmbeddedServer, agent_nc: Client, admin: Client, run_id: str, executor: Executor
) -> None:
    # Given an agent process stuck in a tool call that has executed but not yet answered
    executor.hold = asyncio.Event()
    env = {**os.environ, "NATS_URL": server.url, "RV_AGENT_PASSWORD": server.credentials.passwords["agent"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, run_id, executor.name, env=env, cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: executor.requests or proc.returncode is not None, what="the agent's tool request")
        assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
    finally:
        # When the process dies without a word
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    executor.hold.set()

    # Then a new process resuming the run sees the call that was in flight
    async with Run.resume(run_id, nc=agent_nc) as run:
        assert run.state == {"notes": ["before the call"]}
        intent = run.open_intent
        assert intent is not None
        [first] = executor.requests
        assert (intent.tool, intent.call_id, intent.idempotency_key) == (
            executor.name,
            first.call_id,
            first.idempotency_key,
        )
        # And re-issuing it with the same idempotency key returns the recorded result
        result = await run.retry_open_intent(timeout=WAIT_S)
        assert run.open_intent is None
    assert result.ok
    assert result.replayed
    assert executor.executions == 1
    assert [r.idempotency_key for r in executor.requests] == [first.idempotency_key] * 2
    events = await stored_steps(admin, run_id)
    starts = [e for e in events if e.kind == "start"]
    assert len(starts) == 2
    assert starts[1].seq > first.seq
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def test_agent_exception_ends_run_and_may_be_resumed(agent_nc: Client, admin: Client, run_id: str) -> None:
    async def agent() -> None:
        async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as run:
            run.state["step"] = 3
            raise ValueError("bad plan")

    with pytest.raises(ValueError, match="bad plan"):
        await agent()
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.stop_reason) == (RunStatus.STOPPED, StopReason.AGENT_CRASHED)
    final = (await stored_steps(admin, run_id))[-1]
    assert (final.ok, final.error) == (False, "ValueError: bad plan")
    async with Run.resume(run_id, nc=agent_nc) as again:
        assert again.state == {"step": 3}
        assert again.open_intent is None


async def test_second_resume_of_a_live_run_fences_the_first_process(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    async with Run.start(goal="g", run_id=run_id, nc=agent_nc) as first:
        first.state["by"] = "first"
        await first.checkpoint()
        async with Run.resume(run_id, nc=agent_nc) as second:
            assert second.state == {"by": "first"}
            second.state["by"] = "second"
            # The first process no longer owns the run: it is refused, not silently overwriting.
            with pytest.raises(RunError, match="taken over"):
                await first.checkpoint()
    cp = await checkpoint(admin, run_id)
    assert cp is not None
    assert (cp.status, cp.state) == (RunStatus.COMPLETED, {"by": "second"})


@pytest.mark.timeout(90)
async def test_steps_jetstream_refused_are_sent_again_and_stored_once(
    fresh_server: EmbeddedServer, run_id: str
) -> None:
    # Steps JetStream refused (here: RV_STEPS missing for a while; in life, a server restarting)
    # were once dropped with a log line, and a loop among them was never seen. Now they are sent
    # again until stored, under a message id the stream de-duplicates by.
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    try:
        await provision(admin)
        said = [f"while refused {i}" for i in range(20)]
        async with Run.start(goal="ride it out", run_id=run_id, endpoint=fresh_server.endpoint("agent")) as run:
            await run.checkpoint()
            await admin.jetstream().delete_stream(subjects.STEPS_STREAM)
            for text in said:
                await run.message(text)
            await provision(admin)  # the stream is back
        steps = await all_stored_steps(admin, run_id)
    finally:
        await admin.close()
    assert [e.observation for e in steps if e.kind == "message"] == said, "each refused step stored, once"
    assert [e.seq for e in steps] == sorted({e.seq for e in steps})


@pytest.mark.timeout(90)
async def test_steps_sent_around_a_server_restart_are_stored_once_each(
    fresh_server: EmbeddedServer, run_id: str
) -> None:
    # Steps the server did not acknowledge (it went away) were once dropped, with a log line: a loop
    # among them was never seen. Now they are sent again, under a message id the stream de-duplicates by.
    admin = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(admin)
    await admin.close()
    said = [f"{phase} {i}" for phase in ("before", "while down", "after") for i in range(20)]
    async with Run.start(goal="ride out a restart", run_id=run_id, endpoint=fresh_server.endpoint("agent")) as run:
        for text in said[:20]:
            await run.message(text)
        # Stopped, not killed: a SIGKILL within milliseconds of acknowledged writes can lose them in
        # the server itself (seen here: 21 acked steps not restored), which no client can mend.
        await fresh_server.stop()
        for text in said[20:40]:
            await run.message(text)
        await fresh_server.start()
        for text in said[40:]:
            await run.message(text)
    # A step sent again is stored after newer ones: read them all, not up to the final event.
    admin = await connect(fresh_server.endpoint("admin"), "t-admin-after")
    try:
        events = await all_stored_steps(admin, run_id)
    finally:
        await admin.close()
    seqs = sorted(e.seq for e in events)
    assert seqs == list(range(1, len(said) + 3)), "every step stored once: start, the messages, final"
    assert [e.observation for e in sorted(events, key=lambda e: e.seq) if e.kind == "message"] == said
