"""The whole system end to end, as `make demo` runs it: every scripted failure mode is caught."""

from __future__ import annotations

import asyncio

import pytest

from runvisor.actors.demo import run_demo

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
async def test_demo_catches_every_failure_mode(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a private server, a supervisor, a tool executor and the scripted agents of runvisor.actors.sim,
    status = await run_demo(asyncio.Event())
    out = capsys.readouterr().out
    # then each run ended as expected, with the reason and evidence an operator needs.
    assert status == 0, out
    assert "every failure mode was caught" in out
    assert "LOOP_DETECTED: seq" in out
    assert "cost budget exceeded" in out
    assert "failed tool calls in a row" in out
    assert "<- kill USER_KILLED from operator" in out
    assert "PAUSED (USER_PAUSED)" in out
