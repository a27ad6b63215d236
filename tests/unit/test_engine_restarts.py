"""The engine's side of "a run that has ended stays ended" (README "Security").

The supervisor worker screens ``start`` events before its engine (``SupervisorWorker._screen_start``,
tested for real in ``tests/integration/test_ended_runs.py``). The engine alone, as the offline
``runvisor.testing.judge`` and the bench use it, once judged a finished run afresh on a new
``start``, and took a later start's policy while the run held no action. These tests are the
rule for ``Engine.observe``.
"""

from __future__ import annotations

from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols.messages import StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason

TIGHT = Policy(max_cost_usd=1.0, warn_first=False)
LOOSE = Policy(max_cost_usd=1000.0, warn_first=False)


def start(seq: int, policy: Policy) -> StepEvent:
    return StepEvent(run_id="r", seq=seq, ts=float(seq), kind="start", policy=policy)


def spend(seq: int, cost: float) -> StepEvent:
    return StepEvent(run_id="r", seq=seq, ts=float(seq), kind="llm", tokens_in=1, cost_usd=cost)


def test_a_start_for_a_finished_run_leaves_it_as_it_ended() -> None:
    engine = Engine()
    engine.observe(start(1, TIGHT), 1.0)
    assert [v.severity for v in engine.observe(spend(2, 1.5), 2.0)] == ["stop"]
    engine.observe(start(3, LOOSE), 3.0)
    engine.observe(spend(4, 0.1), 4.0)
    state = engine.state("r")
    assert (state.status, state.stop_reason) == (RunStatus.STOPPED, StopReason.BUDGET_EXCEEDED)


def test_a_later_start_does_not_replace_the_policy_of_a_run_without_actions() -> None:
    engine = Engine()
    engine.observe(start(1, TIGHT), 1.0)
    engine.observe(spend(2, 0.7), 2.0)  # LLM steps only: no action yet
    engine.observe(start(3, LOOSE), 3.0)
    assert [v.severity for v in engine.observe(spend(4, 0.4), 4.0)] == ["stop"]
