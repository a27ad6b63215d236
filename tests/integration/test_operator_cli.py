"""The operator's commands (`runvisor steps|why|ps|top|pause|resume|kill|stop`) as an operator runs
them: the CLI as a subprocess, against a real server, a real supervisor worker and runs whose steps
are published as an agent publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from test_operator import supervised

from runvisor import Run
from runvisor.actors.operator import fetch_state
from runvisor.actors.server import EmbeddedServer
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Counters, Evidence, ProgressSignal, RunState, Spent, StepEvent, Verdict
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

CLI = (sys.executable, "-m", "runvisor.actors.cli")


def cli_env(server: EmbeddedServer) -> dict[str, str]:
    """The environment of an operator's shell pointed at ``server``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "NATS_URL": server.url, "RV_OPERATOR_PASSWORD": server.credentials.passwords["operator"]}


async def cli(server: EmbeddedServer, *args: str) -> tuple[int, str, str]:
    """Run ``runvisor ARGS`` to its end: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, env=cli_env(server), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def loop_steps(run_id: str, repeats: int) -> Iterator[StepEvent]:
    """A run that searches again and again for a term that is not there."""
    yield StepEvent(run_id=run_id, seq=1, ts=time.time(), kind="start", agent="finder", task="fix the parser")
    seq = 2
    for _ in range(repeats):
        call = f"c{seq}"
        yield StepEvent(
            run_id=run_id, seq=seq, ts=time.time(), kind="llm", tokens_in=2000, tokens_out=40, cost_usd=0.003
        )
        yield StepEvent(
            run_id=run_id, seq=seq + 1, ts=time.time(), kind="tool_call", tool="search", call_id=call,
            args={"term": "JsonParser"},
        )  # fmt: skip
        yield StepEvent(
            run_id=run_id, seq=seq + 2, ts=time.time(), kind="tool_result", tool="search", call_id=call,
            observation='No matches found for "JsonParser" in /repo/src', ok=True,
        )  # fmt: skip
        seq += 3


async def publish(nc: Client, events: Iterator[StepEvent]) -> None:
    js = nc.jetstream()
    for event in events:
        await js.publish(subjects.step(event.run_id), codec.encode(event))


async def state_of(nc: Client, run_id: str, status: RunStatus) -> RunState | None:
    state = await fetch_state(nc, run_id)
    return state if state is not None and state.status is status else None


async def test_steps_marks_the_evidence_of_the_verdict_and_why_shows_those_steps(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # Given a loop that its supervisor stopped,
    async with supervised(fresh_server):
        await publish(fresh_admin, loop_steps("loop-1", repeats=8))
        stopped = await eventually(lambda: state_of(fresh_admin, "loop-1", RunStatus.STOPPED), what="the stop")
    assert stopped.last_verdict is not None
    evidence = set(stopped.last_verdict.evidence.seqs)
    assert evidence
    # `runvisor steps` shows every step, one line each, the evidence marked.
    rc, out, err = await cli(fresh_server, "steps", "loop-1")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    marked = {int(line.split()[1]) for line in lines if line.startswith(">")}
    assert evidence <= marked, (evidence, out)
    calls = [line for line in lines if " tool_call " in line]
    assert calls
    assert all('search {"term":"JsonParser"}' in line for line in calls)
    assert any(" tool_result " in line and "ok 'No matches found" in line for line in lines)
    assert any(" llm " in line and "tokens 2,000+40 $0.0030" in line for line in lines)
    # --last N and --json.
    rc, out, _ = await cli(fresh_server, "steps", "loop-1", "--last", "2")
    assert (rc, len(out.splitlines())) == (0, 2)
    rc, out, _ = await cli(fresh_server, "steps", "loop-1", "--json")
    steps = [json.loads(line) for line in out.splitlines()]
    assert {s["seq"] for s in steps if s["evidence"] and s["kind"] == "tool_call"} == evidence
    assert (steps[0]["kind"], steps[0]["stream_seq"] >= 1) == ("start", True)
    # `runvisor why` names the steps that prove the verdict, and never advises a resume of a stopped run.
    rc, out, err = await cli(fresh_server, "why", "loop-1")
    assert (rc, err) == (0, "")
    assert "run loop-1: STOPPED (LOOP_DETECTED)" in out
    assert "evidence:" in out
    assert sum(line.lstrip().startswith(">") for line in out.splitlines()) >= len(evidence)
    next_line = next(line for line in out.splitlines() if line.startswith("  next:"))
    assert "cannot be resumed" in next_line
    assert "runvisor resume" not in next_line, next_line
    rc, out, _ = await cli(fresh_server, "why", "loop-1", "--json")
    answer = json.loads(out)
    assert answer["run"]["status"] == "STOPPED"
    assert {s["seq"] for s in answer["evidence"] if s["kind"] == "tool_call"} == evidence


async def test_why_shows_the_progress_signal_what_the_pattern_cost_and_the_way_on(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # Given a paused run's state as its supervisor writes it, with the progress signal and the cost,
    await publish(fresh_admin, loop_steps("costly", repeats=3))
    verdict = Verdict(
        run_id="costly", reason=StopReason.NO_PROGRESS, severity="pause", at_seq=10,
        evidence=Evidence(summary="nothing new for 30 actions", seqs=(3, 6),
                          spent=Spent(since_seq=3, steps=23, tokens=42_100, cost_usd=0.31)),
    )  # fmt: skip
    state = RunState(
        run_id="costly", status=RunStatus.PAUSED, stop_reason=StopReason.NO_PROGRESS, agent="finder",
        started_at=time.time() - 300, updated_at=time.time(), last_verdict=verdict,
        signal=ProgressSignal(source="novelty", value=0.25, stale_actions=30, limit=30, window=64),
    )  # fmt: skip
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    await kv.put("costly", codec.encode_json(state))
    rc, out, err = await cli(fresh_server, "why", "costly")
    assert (rc, err) == (0, "")
    assert "  progress: 25% of the last 64 actions saw something new; 30 of 30 actions without a new observation" in out
    assert "23 steps, 42,100 tokens, $0.31 since seq 3" in out
    assert "agent: finder, started 5m ago" in out
    # A paused run may be resumed, and is told so.
    assert "then `runvisor resume costly` goes on from the checkpoint" in out
    evidence = [line.split()[1:3] for line in out.splitlines() if line.lstrip().startswith(">")]
    assert evidence == [["3", "tool_call"], ["4", "tool_result"], ["6", "tool_call"], ["7", "tool_result"]]


async def test_why_keeps_the_note_an_operator_gave_with_a_kill(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # `why` once dropped the operator's note: it travels in the command, stored in RV_CONTROL.
    async with supervised(fresh_server):
        await publish(fresh_admin, loop_steps("noted", repeats=1))
        await eventually(lambda: state_of(fresh_admin, "noted", RunStatus.RUNNING), what="the run known")
        rc, out, _ = await cli(fresh_server, "pause", "noted", "checking", "the", "budget")
        assert (rc, out.strip()) == (0, "pause sent to noted (RV_CONTROL seq 1)")
        await eventually(lambda: state_of(fresh_admin, "noted", RunStatus.PAUSED), what="paused")
        rc, out, _ = await cli(fresh_server, "kill", "noted", "runaway", "costs", "--json")
        assert rc == 0
        assert json.loads(out)["sent"]["note"] == "runaway costs"
        await eventually(lambda: state_of(fresh_admin, "noted", RunStatus.STOPPED), what="killed")
        rc, out, _ = await cli(fresh_server, "why", "noted")
    assert rc == 0
    assert re.search(r"  operator: kill by cli:\S+ at \d\d:\d\d:\d\d: runaway costs", out), out
    assert "  next: killed by an operator; a killed run cannot be resumed" in out
    rc, out, _ = await cli(fresh_server, "why", "noted", "--json")
    assert json.loads(out)["operator_command"]["note"] == "runaway costs"


async def test_commands_answer_json_and_refuse_with_the_same_exit_status(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    async with supervised(fresh_server):
        await publish(fresh_admin, loop_steps("cmd-json", repeats=1))
        await eventually(lambda: state_of(fresh_admin, "cmd-json", RunStatus.RUNNING), what="the run known")
        # A refusal: exit status 2, one line on stderr, and the same as JSON on stdout.
        rc, out, err = await cli(fresh_server, "resume", "cmd-json", "--json")
        assert rc == 2
        assert json.loads(out) == {"error": "run cmd-json is RUNNING: a resume would change nothing; nothing sent"}
        assert err == "runvisor: run cmd-json is RUNNING: a resume would change nothing; nothing sent\n"
        rc, out, err = await cli(fresh_server, "kill", "no-such-run", "--json")
        assert (rc, "no run 'no-such-run' is known" in json.loads(out)["error"]) == (2, True)
        # `stop` ends a run with the reason given.
        rc, out, err = await cli(fresh_server, "stop", "cmd-json", "too", "slow", "--reason", "timeout", "--json")
        assert (rc, err) == (0, ""), err
        sent = json.loads(out)
        assert (sent["run_id"], sent["sent"]["cmd"], sent["sent"]["reason"], sent["stream_seq"]) == (
            "cmd-json", "stop", "TIMEOUT", 1,
        )  # fmt: skip
        stopped = await eventually(lambda: state_of(fresh_admin, "cmd-json", RunStatus.STOPPED), what="stopped")
        assert stopped.stop_reason is StopReason.TIMEOUT
        rc, out, _ = await cli(fresh_server, "pause", "cmd-json", "--json")
        assert (rc, json.loads(out)["error"]) == (2, "run cmd-json has ended (STOPPED, TIMEOUT): a pause would change "
                                                     "nothing; nothing sent")  # fmt: skip


async def test_steps_follow_shows_new_steps_until_interrupted(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    await publish(fresh_admin, loop_steps("followed", repeats=2))  # steps 1-7
    proc = await asyncio.create_subprocess_exec(
        *CLI, "steps", "followed", "--follow", "--last", "2", env=cli_env(fresh_server),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(2)]
        assert [line.split()[0:2] for line in map(bytes.decode, first)] == [["6", "tool_call"], ["7", "tool_result"]]
        said = StepEvent(run_id="followed", seq=8, ts=time.time(), kind="message", observation="still here")
        await publish(fresh_admin, iter([said]))
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.split()[:2] == ["8", "message"]
        assert "'still here'" in line
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert (proc.returncode, err.decode()) == (0, "")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_unknown_runs_and_a_missing_server_are_one_line_each(
    fresh_server: EmbeddedServer, fresh_admin: Client, tmp_path: Path
) -> None:
    for args in (("steps", "ghost"), ("steps", "ghost", "--follow"), ("why", "ghost")):
        rc, out, err = await cli(fresh_server, *args)
        assert (rc, out) == (2, ""), args
        assert err.startswith("runvisor: no run 'ghost' is known"), err
        assert err.count("\n") == 1, err
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = await asyncio.create_subprocess_exec(
        *CLI, "steps", "ghost", env={**env, "RUNVISOR_HOME": str(tmp_path)}, stderr=asyncio.subprocess.PIPE
    )
    _, said = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert said.decode().startswith("runvisor: no NATS server found"), said
    assert said.count(b"\n") == 1, said


def _state(run_id: str, status: RunStatus, age_s: float, agent: str, **more: Any) -> RunState:
    now = time.time()
    return RunState(run_id=run_id, status=status, agent=agent, started_at=now - age_s - 60, updated_at=now - age_s,
                    counters=Counters(tokens=42_100, cost_usd=0.31), **more)  # fmt: skip


async def test_ps_filters_by_status_and_activity_and_shows_agent_and_age(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    for state in (
        _state("old-stop", RunStatus.STOPPED, 3 * 3600, "crawler", stop_reason=StopReason.LOOP_DETECTED),
        _state("new-stop", RunStatus.STOPPED, 60, "crawler", stop_reason=StopReason.BUDGET_EXCEEDED),
        _state("new-run", RunStatus.RUNNING, 30, "writer"),
        _state("new-pause", RunStatus.PAUSED, 10, "writer", stop_reason=StopReason.USER_PAUSED),
    ):
        await kv.put(state.run_id, codec.encode_json(state))
    rc, out, err = await cli(fresh_server, "ps")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "AGENT", "STATUS", "REASON", "AGE", "TOKENS", "COST"]
    assert lines[1].split() == ["new-pause", "writer", "PAUSED", "USER_PAUSED", "1m", "42k", "$0.31"]
    assert [line.split()[0] for line in lines[1:]] == ["new-pause", "new-run", "new-stop", "old-stop"]
    assert lines[4].split()[4] == "3h"
    rc, out, _ = await cli(fresh_server, "ps", "--status", "stopped", "--since", "10m")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["new-stop"]
    rc, out, _ = await cli(fresh_server, "ps", "--status", "running", "--status", "PAUSED", "--json")
    assert [s["run_id"] for s in json.loads(out)] == ["new-pause", "new-run"]
    rc, out, err = await cli(fresh_server, "ps", "--limit", "1")
    assert (rc, len(out.splitlines()), err) == (0, 2, "3 more runs not shown (--limit, --status, --since)\n")
    rc, _, err = await cli(fresh_server, "ps", "--since", "yesterday")
    assert rc == 2
    assert "not a duration: 'yesterday'" in err


async def test_top_fits_80_columns_shows_the_progress_signal_and_quits_on_q(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    # `top` once wrapped every row at 80 columns and ignored `q`.
    long_id = "a-run-id-much-longer-than-the-column-" + "x" * 40
    signal_ = ProgressSignal(source="novelty", value=0.1, stale_actions=12, limit=30, window=64)
    kv = await fresh_admin.jetstream().key_value(subjects.RUNS_BUCKET)
    await kv.put(long_id, codec.encode_json(_state(long_id, RunStatus.RUNNING, 5, "writer", signal=signal_)))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        *CLI, "top", "--interval", "0.2", env=cli_env(fresh_server), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:

        def read() -> bool:
            with contextlib.suppress(BlockingIOError, OSError):
                seen.extend(os.read(master, 65536))
            return seen.count(b"runvisor top") >= 2  # a whole frame, and the start of the next

        os.set_blocking(master, False)
        await eventually(read, timeout=20, what="two frames of top")
        frame = seen.decode().split("\x1b[2J\x1b[H")[-2]
        lines = frame.rstrip("\r\n").split("\r\n")
        assert lines[0].startswith("runvisor top")
        assert "(q quits)" in lines[0]
        assert lines[1].split()[-1] == "STALE"
        row = next(line for line in lines if line.startswith("a-run-id"))
        assert row.split()[-1] == "12/30"
        assert "RUNNING" in row
        assert max(len(line) for line in lines) <= 80, lines
        os.write(master, b"q")
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
        with contextlib.suppress(OSError):
            seen.extend(os.read(master, 65536))
        assert b"Traceback" not in seen
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


async def test_tools_imports_a_registry_module_from_the_current_directory(
    fresh_server: EmbeddedServer, fresh_admin: Client, tmp_path: Path
) -> None:
    # The installed `runvisor` script (not `python -m`, whose sys.path starts at the current directory).
    (tmp_path / "mytools.py").write_text(
        "from runvisor import ToolRegistry\n\ntools = ToolRegistry()\n\n\n@tools.tool()\n"
        "async def hello(name: str) -> str:\n    return f'hello {name}'\n"
    )
    env = {**cli_env(fresh_server), "RV_TOOL_PASSWORD": fresh_server.credentials.passwords["tool"]}
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "runvisor", "tools", "mytools:tools", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().startswith("tool executor serving hello"), line
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_run_whose_agent_code_raised_shows_as_stopped_agent_crashed(
    fresh_server: EmbeddedServer, fresh_admin: Client
) -> None:
    async with supervised(fresh_server):
        with pytest.raises(ValueError, match="bad config value"):
            await _crashing_agent(fresh_server)
        await eventually(lambda: _last_kind(fresh_admin, "crashing", "final"), what="the end seen")
        rc, out, _ = await cli(fresh_server, "why", "crashing")
    assert rc == 0
    assert "run crashing: STOPPED (AGENT_CRASHED)" in out, out
    assert "ValueError: bad config value" in out, out


async def _crashing_agent(server: EmbeddedServer) -> None:
    async with Run.start(goal="g", run_id="crashing", endpoint=server.endpoint("agent")) as run:
        await run.message("reading the config")
        raise ValueError("bad config value")


async def _last_kind(nc: Client, run_id: str, kind: str) -> bool:
    state = await fetch_state(nc, run_id)
    return state is not None and state.last_kind == kind
