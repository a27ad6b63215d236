"""The demo's scenarios: each failure mode runvisor exists for, its agent, its policy, and how it must end.

A scenario's expected outcome is the run's final state as operators see it (``runvisor ps``,
``rv_runs``): a status and a reason. Two of them need an operator, played here with the same
calls ``runvisor pause|resume|kill`` and the ``nats`` CLI make.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client

from runvisor import Command, Policy, Run, RunState, RunStatus, StopReason
from runvisor.actors.operator import fetch_state, send_command
from runvisor.actors.sim import _agents as agents
from runvisor.protocols import subjects
from runvisor.testing import eventually

#: An operator's part in a scenario: (operator connection, run id, narrate).
OperatorScript = Callable[[Client, str, Callable[[str], None]], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """A scripted agent, its policy, and the status and reason its run must end with."""

    name: str
    story: str
    agent: Callable[[Run], Awaitable[None]]
    status: RunStatus
    reason: StopReason
    policy: Policy | None = None
    operator: OperatorScript | None = None

    @property
    def expected(self) -> str:
        return f"{self.status} {self.reason}"


async def _state_when(nc: Client, run_id: str, ok: Callable[[RunState], bool], timeout: float = 20.0) -> RunState:
    async def probe() -> RunState | None:
        state = await fetch_state(nc, run_id, timeout=0.5)
        return state if state is not None and ok(state) else None

    found: RunState = await eventually(probe, timeout=timeout, interval=0.05, what=f"run {run_id} to get there")
    return found


async def pause_look_resume(nc: Client, run_id: str, say: Callable[[str], None]) -> None:
    """Pause the run once under way, look at it while it holds, resume it (as ``runvisor pause``/``resume``)."""
    await _state_when(nc, run_id, lambda s: s.counters.tool_calls >= 4)
    say(f"operator: runvisor pause {run_id}")
    await send_command(nc, run_id, Command(cmd="pause", issuer="demo-operator", note="checking its plan"))
    state = await _state_when(nc, run_id, lambda s: s.status is RunStatus.PAUSED)
    say(f"operator: {run_id} is {state.status} ({state.stop_reason}) at step {state.last_seq}")
    await asyncio.sleep(1.0)  # the operator reads; the run holds, its checkpoint saved
    say(f"operator: runvisor resume {run_id}")
    await send_command(nc, run_id, Command(cmd="resume", issuer="demo-operator"))


async def kill_in_slow_job(nc: Client, run_id: str, say: Callable[[str], None]) -> None:
    """Kill the run while its long tool call is pending, with the bytes ``nats pub rv.ctl.RUN '...'`` sends."""
    await _state_when(nc, run_id, lambda s: s.current_tool == "slow_job")
    say(f"operator: {run_id} is stuck in slow_job; nats pub rv.ctl.{run_id} 'kill runaway job'")
    await nc.publish(subjects.ctl(run_id), b"kill runaway job")


STOPPED = RunStatus.STOPPED

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("exact_loop", "searches again and again for what is not there", agents.exact_loop,
             STOPPED, StopReason.LOOP_DETECTED),
    Scenario("cycle", "goes round read A -> search B -> read C", agents.cycle, STOPPED, StopReason.LOOP_DETECTED),
    Scenario("near_duplicate", "re-applies one patch under fresh ids while the file grows", agents.near_duplicate,
             STOPPED, StopReason.LOOP_DETECTED),
    Scenario("drift", "reads page after new page, its progress never rising", agents.drift,
             STOPPED, StopReason.NO_PROGRESS, Policy(no_progress_steps=10, progress_action="stop")),
    Scenario("stall", "hangs silently after two steps", agents.stall,
             STOPPED, StopReason.TIMEOUT, Policy(stall_timeout_s=1.0, stall_action="stop")),
    Scenario("retry_storm", "a flaky upstream, retried by the executor call after call", agents.retry_storm,
             STOPPED, StopReason.RETRY_LIMIT_REACHED, Policy(retry_budget_floor=3)),
    Scenario("hidden_failure", "an API answering 'ok' with an error inside", agents.hidden_failure,
             STOPPED, StopReason.TOOL_FAILURE),
    Scenario("budget", "spends past max_cost_usd=0.15", agents.budget,
             STOPPED, StopReason.BUDGET_EXCEEDED, Policy(max_cost_usd=0.15)),
    Scenario("healthy", "reads, finds, progresses: left alone", agents.healthy,
             RunStatus.COMPLETED, StopReason.COMPLETED),
    Scenario("paused", "paused by an operator, looked at, resumed: completes", agents.paused,
             RunStatus.COMPLETED, StopReason.COMPLETED, operator=pause_look_resume),
    Scenario("killed", "killed by an operator in a long tool call", agents.killed,
             STOPPED, StopReason.USER_KILLED, operator=kill_in_slow_job),
    Scenario("crash", "its own code raises ValueError", agents.crash, STOPPED, StopReason.AGENT_CRASHED),
)  # fmt: skip


def scenario(name: str) -> Scenario:
    """The scenario called ``name``."""
    for found in SCENARIOS:
        if found.name == name:
            return found
    raise KeyError(f"no scenario {name!r}; there are {', '.join(s.name for s in SCENARIOS)}")


__all__ = ["SCENARIOS", "OperatorScript", "Scenario", "kill_in_slow_job", "pause_look_resume", "scenario"]
