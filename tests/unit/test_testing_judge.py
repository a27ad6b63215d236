"""runvisor.testing.judge: a policy tried on recorded steps, offline."""

from __future__ import annotations

from runvisor import Policy, StepEvent, StopReason
from runvisor.testing import judge


def _search_loop(run_id: str, repeats: int) -> list[StepEvent]:
    events = [StepEvent(run_id=run_id, seq=0, ts=1e9, kind="start", task="find the parser")]
    for i in range(repeats):
        seq, call = 1 + 2 * i, f"c{i}"
        same = {"run_id": run_id, "tool": "find_file", "call_id": call}
        events.append(
            StepEvent(seq=seq, ts=1e9 + seq, kind="tool_call", args={"command": "find_file JsonParser"}, **same)
        )
        nothing = 'No matches found for "JsonParser" in /repo/src'
        events.append(StepEvent(seq=seq + 1, ts=1e9 + seq + 1, kind="tool_result", observation=nothing, **same))
    return events


def test_a_loop_is_judged_offline_with_its_reason_and_evidence() -> None:
    verdicts = judge(_search_loop("r1", repeats=8))
    decisions = [v for v in verdicts if v.severity in ("pause", "stop")]
    assert decisions, verdicts
    assert decisions[0].reason is StopReason.LOOP_DETECTED
    assert "find_file JsonParser" in decisions[0].evidence.summary


def test_the_policy_given_is_the_one_applied() -> None:
    paused = judge(_search_loop("r2", repeats=8), Policy(loop_action="pause"))
    assert [v.severity for v in paused if v.severity in ("pause", "stop")][:1] == ["pause"]
