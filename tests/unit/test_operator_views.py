"""How runs and steps read on an operator's terminal, and what an operator is told to do next."""

from __future__ import annotations

import argparse

import pytest

from runvisor.actors.cli import _duration
from runvisor.actors.operator import Marker, runs_table, select, step_line
from runvisor.actors.operator._render import TOP_COLUMNS, age, short_count
from runvisor.actors.streams.steps import StoredStep
from runvisor.protocols.messages import Evidence, ProgressSignal, RunState, StepEvent, Verdict
from runvisor.protocols.reasons import RunStatus, StopReason, next_step


@pytest.mark.parametrize("reason", list(StopReason))
def test_a_stopped_run_is_never_told_to_resume_and_a_paused_one_always_is(reason: StopReason) -> None:
    stopped = next_step(RunStatus.STOPPED, reason, "r") or ""
    assert "runvisor resume" not in stopped
    assert "resume if paused" not in stopped
    assert "runvisor resume r" in (next_step(RunStatus.PAUSED, reason, "r") or "")


def test_a_running_or_completed_run_has_nothing_to_do() -> None:
    assert next_step(RunStatus.RUNNING, None) is None
    assert next_step(RunStatus.COMPLETED, StopReason.COMPLETED) is None


@pytest.mark.parametrize("width", [80, 100, 132])
def test_the_top_table_fits_the_terminal_whatever_the_run_ids(width: int) -> None:
    states = [
        RunState(run_id="x" * 128, status=RunStatus.PAUSED, stop_reason=StopReason.RETRY_LIMIT_REACHED,
                 signal=ProgressSignal(source="agent", stale_actions=123, limit=1000), started_at=1.0),
        RunState(run_id="short", started_at=1.0),
    ]  # fmt: skip
    lines = runs_table(states, TOP_COLUMNS, width, now=1e6).splitlines()
    assert max(len(line) for line in lines) <= width
    assert lines[1].split()[-1] == "123/1000"
    assert lines[1].split()[0].endswith("~"), "a cut run id says so"


def test_in_a_pipe_run_ids_stay_whole() -> None:
    table = runs_table([RunState(run_id="y" * 100)], now=0.0)
    assert table.splitlines()[1].startswith("y" * 100 + " ")


@pytest.mark.parametrize(
    ("seconds", "said"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (7199, "1h"), (86400 * 3, "3d"), (-5, "0s")]
)
def test_ages_are_said_in_their_largest_unit(seconds: float, said: str) -> None:
    assert age(seconds) == said


@pytest.mark.parametrize(
    ("n", "said"), [(0, "0"), (999, "999"), (6120, "6.1k"), (448_000, "448k"), (1_250_000, "1.2M")]
)
def test_counts_fit_in_five_characters(n: int, said: str) -> None:
    assert short_count(n) == said


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0),
                                               ("1.5d", 129600.0), ("1w", 604800.0)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10 minutes", "-5m", "m"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        _duration(text)


def test_select_keeps_the_statuses_asked_for_that_were_active_since() -> None:
    states = [
        RunState(run_id="a", status=RunStatus.STOPPED, updated_at=990.0),
        RunState(run_id="b", status=RunStatus.STOPPED, updated_at=100.0),
        RunState(run_id="c", status=RunStatus.RUNNING, updated_at=995.0),
    ]
    assert [s.run_id for s in select(states, statuses=frozenset({RunStatus.STOPPED}), now=1000.0)] == ["a", "b"]
    assert [s.run_id for s in select(states, since_s=60, now=1000.0)] == ["a", "c"]


def _stored(n: int, **fields: object) -> StoredStep:
    return StoredStep(100 + n, StepEvent.model_validate({"run_id": "r", "ts": 1.0, **fields}))


def test_the_evidence_marks_its_steps_and_the_results_of_its_calls_only() -> None:
    verdict = Verdict(run_id="r", reason=StopReason.LOOP_DETECTED, severity="stop",
                      evidence=Evidence(summary="x3", seqs=(3, 6)))  # fmt: skip
    steps = [
        _stored(0, seq=2, kind="llm", tokens_in=10),
        _stored(1, seq=3, kind="tool_call", tool="search", call_id="c1", args={"q": "x"}),
        _stored(2, seq=4, kind="tool_result", tool="search", call_id="c1", ok=True, observation="none"),
        _stored(3, seq=5, kind="tool_call", tool="search", call_id="c2"),
        _stored(4, seq=5, kind="tool_result", tool="search", call_id="c2", ok=True),
        _stored(5, seq=6, kind="tool_call", tool="search", call_id="c3"),
    ]
    marker = Marker(verdict)
    assert [marker(step) for step in steps] == [False, True, True, False, False, True]
    assert not Marker(None)(steps[1])


def test_a_step_is_one_line_and_an_undecodable_one_says_why() -> None:
    line = step_line(_stored(0, seq=4, kind="tool_result", tool="search", ok=False, error="Error: quota\nexceeded",
                             observation="x" * 500), marked=True)  # fmt: skip
    assert "\n" not in line
    assert line.startswith(">     4 tool_result  search FAILED error: Error: quota exceeded 'xxx")
    assert len(line) < 200
    assert step_line(StoredStep(7, None, "StepEvent: seq: field required")) == (
        "      ? undecodable  (stream seq 7) StepEvent: seq: field required"
    )
