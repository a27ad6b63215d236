"""The demo's scenarios, each on the real runtime: an SDK agent, a tool executor, a supervisor worker.

Each scenario is played alone against the session's server and must end with its expected
status and reason, caught by the detector the scenario is about, with evidence an operator
can read. The whole ``runvisor demo --json`` runs once as a subprocess, as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client

from runvisor.actors.demo import demo_stack, play
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.sim import SCENARIOS, Scenario, scenario
from runvisor.protocols.reasons import StopReason

pytestmark = pytest.mark.integration

#: The detector each failure scenario is about (the scenarios an operator ends have none).
DETECTORS = {
    "exact_loop": "exact_repeat",
    "cycle": "cycle",
    "near_duplicate": "near_duplicate",
    "drift": "no_progress",
    "stall": "stall",
    "retry_storm": "retry_storm",
    "hidden_failure": "consecutive_failures",
    "budget": "budget",
}


@pytest_asyncio.fixture(scope="module")
async def stack(server: EmbeddedServer) -> AsyncIterator[Client]:
    """The demo's supervisor worker and tool executor on the session's server; an operator connection."""
    async with demo_stack(server, print) as operator:
        yield operator


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
@pytest.mark.timeout(60)
async def test_scenario_ends_as_expected(server: EmbeddedServer, stack: Client, name: str) -> None:
    # Given one scripted agent (and its operator, if it has one) on the real runtime,
    played = scenario(name)
    # when it runs to its end,
    [outcome] = await play(server, stack, [played], print, uuid.uuid4().hex[:8])
    # then its run ends with the expected status and reason, for the reason the scenario is about.
    assert outcome.state is not None, f"no state for {outcome.run_id}"
    assert (outcome.status, outcome.reason) == (played.status, played.reason), outcome
    if name in DETECTORS:
        verdict = outcome.state.last_verdict
        assert verdict is not None
        assert (verdict.detector, verdict.severity) == (DETECTORS[name], "stop")
        assert outcome.evidence == verdict.evidence
        assert outcome.agent_saw == f"RunStopped({played.reason})"


async def _play(server: EmbeddedServer, stack: Client, played: Scenario) -> str:
    [outcome] = await play(server, stack, [played], print, uuid.uuid4().hex[:8])
    assert outcome.evidence is not None, outcome
    return outcome.evidence.summary


async def test_killed_run_shows_the_operators_words(server: EmbeddedServer, stack: Client) -> None:
    summary = await _play(server, stack, scenario("killed"))
    assert summary == "kill by operator USER_KILLED: runaway job"


async def test_crash_shows_the_error_type_and_message(server: EmbeddedServer, stack: Client) -> None:
    summary = await _play(server, stack, scenario("crash"))
    assert "ValueError: invalid literal for int() with base 10: '60 src/parser_0.py'" in summary


@pytest.mark.timeout(90)
async def test_runvisor_demo_json_lists_every_scenario_and_exits_0() -> None:
    # Given `runvisor demo --json` run as a user runs it (its own embedded server),
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "demo", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(demo.communicate(), 80)
    # then stdout is a JSON list with one entry per scenario, each with its expected status and reason,
    listed = json.loads(out)
    assert [entry["scenario"] for entry in listed] == [s.name for s in SCENARIOS]
    for entry, played in zip(listed, SCENARIOS, strict=True):
        assert set(entry) == {"run_id", "scenario", "status", "reason", "evidence"}
        assert entry["run_id"].startswith(f"{played.name}-")
        assert (entry["status"], entry["reason"]) == (played.status.value, played.reason.value), entry
        ended_by_something = played.reason is not StopReason.COMPLETED
        assert (entry["evidence"] is not None) == ended_by_something, entry
    # the narration went to stderr, and the exit status says every scenario ended as expected.
    assert "every run ended as expected" in err.decode(), err.decode()[-3000:]
    assert demo.returncode == 0
