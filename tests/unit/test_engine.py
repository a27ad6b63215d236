"""The Engine: grading, run lifecycle, stalls, state, and a slice of the real dev traces."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols import codec
from runvisor.protocols.codec import from_obj
from runvisor.protocols.conventions import heartbeat_args
from runvisor.protocols.messages import MAX_COUNT, MAX_MONEY, Command, RunState, StepEvent, Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


POLICY_DEFAULT = Policy()


class Feed:
    """Feeds one run's events to an engine on a clock that advances one second per event."""

    def __init__(self, engine: Engine, run_id: str = "run-1") -> None:
        self.engine = engine
        self.run_id = run_id
        self.seq = 0
        self.now = 1_700_000_000.0
        self.verdicts: list[Verdict] = []

    def event(self, kind: str, **fields: Any) -> list[Verdict]:
        self.seq += 1
        self.now += 1.0
        event = StepEvent.model_validate(
            {"run_id": self.run_id, "seq": self.seq, "ts": self.now, "kind": kind, **fields}
        )
        out = self.engine.observe(event, self.now)
        self.verdicts.extend(out)
        return out

    def act(self, command: str, observation: str, ok: bool = True) -> list[Verdict]:
        call_id = f"c{self.seq + 1}"
        tool = command.split(maxsplit=1)[0]
        self.event("tool_call", tool=tool, call_id=call_id, args={"command": command})
        return self.event("tool_result", tool=tool, call_id=call_id, observation=observation, ok=ok)

    def severities(self) -> list[str]:
        return [v.severity for v in self.verdicts]


def test_a_repeat_warns_then_stops() -> None:
    feed = Feed(Engine())
    feed.act("find_file JsonParser", "No matches found")
    assert feed.act("find_file JsonParser", "No matches found")[0].severity == "warn"
    stop = feed.act("find_file JsonParser", "No matches found")
    assert [v.severity for v in stop] == ["stop"]
    assert stop[0].reason is StopReason.LOOP_DETECTED
    assert stop[0].at_seq == feed.seq
    assert len(stop[0].evidence.seqs) == 3
    assert stop[0].hint


def test_never_two_stops_for_one_run() -> None:
    feed = Feed(Engine())
    for _ in range(10):
        feed.act("find_file JsonParser", "No matches found")
    assert feed.severities().count("stop") == 1
    assert feed.engine.state("run-1").status is RunStatus.STOPPED
    assert feed.engine.state("run-1").stop_reason is StopReason.LOOP_DETECTED


def test_without_warn_first_the_threshold_acts_at_once() -> None:
    feed = Feed(Engine(Policy(warn_first=False)))
    for _ in range(3):
        feed.act("find_file JsonParser", "No matches found")
    assert feed.severities() == ["stop"]


def test_a_finding_without_an_early_warning_warns_before_acting() -> None:
    # A budget jumping past its limit in one event has no "one step short" stage.
    feed = Feed(Engine())
    feed.event("start", task="t", policy={"max_steps": 2})
    feed.act("ls", "a")
    feed.act("ls b", "b")
    feed.act("ls c", "c")
    feed.act("ls d", "d")
    assert feed.severities()[-1] == "stop"
    assert feed.verdicts[-1].reason is StopReason.BUDGET_EXCEEDED
    assert "steps budget exceeded" in feed.verdicts[-1].evidence.summary
    assert "warn" in feed.severities()[:-1]


def test_the_start_events_policy_is_used() -> None:
    engine = Engine(Policy())
    feed = Feed(engine)
    feed.event("start", task="fix the parser", policy={"max_tokens": 100, "warn_first": False})
    feed.event("llm", tokens_in=150)
    assert [(v.reason, v.severity) for v in feed.verdicts] == [(StopReason.BUDGET_EXCEEDED, "stop")]
    other = Feed(engine, "run-2")
    other.event("llm", tokens_in=150)
    assert other.verdicts == []


def test_traffic_that_begins_mid_run_is_judged() -> None:
    # No start, no tool_call: results alone still form actions.
    feed = Feed(Engine())
    for _ in range(3):
        feed.event("tool_result", tool="search", call_id="x", observation="No results for 'JsonParser'", ok=True)
    assert feed.severities() == ["warn", "stop"]
    assert feed.engine.state("run-1").counters.tool_calls == 3


def test_final_ends_the_run() -> None:
    feed = Feed(Engine())
    feed.act("ls", "a")
    feed.event("final", observation="diff --git a/x b/x")
    assert feed.engine.state("run-1").status is RunStatus.COMPLETED
    for _ in range(4):
        feed.act("find_file JsonParser", "No matches found")
    assert feed.verdicts == []
    assert feed.engine.tick(feed.now + 10_000) == []


def test_a_pause_is_issued_once_and_the_same_pattern_after_it_stops_the_run() -> None:
    # Activity after a pause is the run going on (resumed, or ignoring the pause): the detectors
    # watch afresh from there, and the same finding again gets the stronger action.
    policy = Policy(no_progress_steps=5)
    feed = Feed(Engine(policy))
    feed.act("cat a", "alpha")
    for word in "bcdefghijklmnopq":
        feed.act(f"cat a --try {word}", "alpha")
    progress = [v.severity for v in feed.verdicts if v.reason is StopReason.NO_PROGRESS]
    assert progress == ["warn", "pause", "stop"]


def test_a_resumed_run_is_judged_again_and_the_same_loop_stops_it() -> None:
    # The trial: paused for a loop, resumed by the operator, then 46 near-identical reads.
    engine = Engine(Policy(loop_action="pause"))
    feed = Feed(engine)
    for line in range(10, 14):
        feed.act(f"goto {line}", "[File: a.py (40 lines total)]\n1:import os\n2:print(os.sep)")
    assert [(v.severity, v.reason) for v in feed.verdicts][-1] == ("pause", StopReason.LOOP_DETECTED)
    engine.apply_command("run-1", Command(cmd="resume"), feed.now)
    assert engine.state("run-1").status is RunStatus.RUNNING
    before = len(feed.verdicts)
    for line in range(20, 66):
        feed.act(f"goto {line}", "[File: a.py (40 lines total)]\n1:import os\n2:print(os.sep)")
        if engine.state("run-1").status is RunStatus.STOPPED:
            break
    after = feed.verdicts[before:]
    assert [(v.severity, v.reason) for v in after] == [("stop", StopReason.LOOP_DETECTED)]
    # Judged afresh: the stop needed the threshold's repeats again, counted from the resume.
    assert line == 20 + POLICY_DEFAULT.near_dup_threshold - 1


def test_tick_finds_a_silent_run_then_confirms() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    assert engine.tick(feed.now + 10) == []
    first = engine.tick(feed.now + 300)
    assert [(v.reason, v.severity) for v in first] == [(StopReason.TIMEOUT, "warn")]
    assert engine.tick(feed.now + 301) == []
    second = engine.tick(feed.now + 300 + 120)
    assert [(v.reason, v.severity) for v in second] == [(StopReason.TIMEOUT, "pause")]
    assert engine.state("run-1").status is RunStatus.PAUSED


def test_tick_finds_a_tool_call_without_result() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.event("tool_call", tool="pytest", call_id="slow", args={"command": "pytest -x"})
    assert engine.state("run-1").current_tool == "pytest"
    verdicts = engine.tick(feed.now + 120)
    assert verdicts
    assert verdicts[0].reason is StopReason.TIMEOUT
    assert "no result" in verdicts[0].evidence.summary


def test_activity_pushes_the_stall_deadline_back() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    start = feed.now
    feed.now = start + 200
    feed.act("ls b", "b")
    assert engine.tick(start + 310) == []
    assert engine.tick(feed.now + 300) != []


def test_a_paused_run_is_not_checked_at_every_tick_and_is_checked_again_once_resumed() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    engine.apply_command("run-1", Command(cmd="pause"), feed.now)
    # Silent on purpose: no deadline, so ticks past every timeout neither judge nor re-queue it.
    for k in range(1, 50):
        assert engine.tick(feed.now + 300 * k) == []
    assert len(engine.timers) == 0
    assert engine.timers.heap_size() <= 1
    resumed_at = feed.now + 300 * 50
    engine.apply_command("run-1", Command(cmd="resume"), resumed_at)
    assert len(engine.timers) == 1
    verdicts = engine.tick(resumed_at + 300)
    assert [(v.reason, v.severity) for v in verdicts] == [(StopReason.TIMEOUT, "warn")]


def test_evict_idle_forgets_runs() -> None:
    engine = Engine()
    Feed(engine, "old").act("ls", "a")
    fresh = Feed(engine, "fresh")
    fresh.now += 1_000
    fresh.act("ls", "a")
    assert engine.evict_idle(fresh.now, 500) == ["old"]
    assert set(engine.windows) == {"fresh"}
    assert engine.state("old").status is RunStatus.RUNNING  # unknown runs read as a bare state


def test_finished_runs_are_forgotten_sooner_but_never_before_their_state_is_written() -> None:
    engine = Engine()
    for run_id in ("done", "unwritten", "running"):
        Feed(engine, run_id).act("ls", "a")
    for run_id in ("done", "unwritten"):
        engine.observe(StepEvent(run_id=run_id, seq=9, ts=1e9, kind="final"), 1_700_000_010.0)
    later = 1_700_000_010.0 + 120
    assert engine.evict_idle(later, 3600, finished_s=60, keep=lambda run_id: run_id == "unwritten") == ["done"]
    assert set(engine.windows) == {"unwritten", "running"}


def test_state_carries_the_counters() -> None:
    feed = Feed(Engine())
    feed.event("start", task="fix the parser", agent="mini")
    feed.event("llm", tokens_in=100, tokens_out=20, cost_usd=0.01, progress=0.3)
    feed.act("pytest -q", "1 failed", ok=False)
    feed.act("pytest -q", "1 failed", ok=False)
    state = feed.engine.state("run-1")
    assert state.task == "fix the parser"
    assert state.agent == "mini"
    assert state.counters.tokens == 120
    assert state.counters.cost_usd == pytest.approx(0.01)
    assert state.counters.tool_calls == 2
    assert state.counters.errors == 2
    assert state.counters.retries == 1
    assert state.progress == 0.3
    assert state.last_seq == feed.seq


def test_a_new_start_after_a_stop_leaves_the_run_stopped() -> None:
    # It once began a new window: an agent could reset its own stopped run (issue 16).
    feed = Feed(Engine())
    for _ in range(4):
        feed.act("find_file JsonParser", "No matches found")
    feed.event("start", task="again")
    state = feed.engine.state("run-1")
    assert (state.status, state.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED)


def test_commands_are_reflected_in_the_state() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    engine.apply_command("run-1", Command(cmd="pause"), feed.now)
    assert engine.state("run-1").status is RunStatus.PAUSED
    assert engine.tick(feed.now + 10_000) == []  # a paused run is not stalled
    engine.apply_command("run-1", Command(cmd="resume"), feed.now + 10_000)
    assert engine.state("run-1").status is RunStatus.RUNNING
    engine.apply_command("run-1", Command(cmd="kill"), feed.now + 10_001)
    engine.apply_command("run-1", Command(cmd="resume"), feed.now + 10_002)
    state = engine.state("run-1")
    assert state.status is RunStatus.STOPPED
    assert state.stop_reason is StopReason.USER_KILLED


def test_the_agents_paused_heartbeat_outweighs_a_step_that_was_in_flight() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    engine.apply_command("run-1", Command(cmd="pause"), feed.now)
    feed.event("llm", tokens_in=10, tokens_out=2)  # sent before the agent saw the pause
    assert engine.state("run-1").status is RunStatus.RUNNING
    feed.event("heartbeat", args=heartbeat_args(RunStatus.PAUSED, StopReason.USER_PAUSED))
    state = engine.state("run-1")
    assert state.status is RunStatus.PAUSED
    assert state.stop_reason is StopReason.USER_PAUSED
    feed.event("heartbeat", args=heartbeat_args(RunStatus.RUNNING))
    assert engine.state("run-1").status is RunStatus.RUNNING


def test_a_new_owner_learns_a_pause_from_the_replayed_heartbeat() -> None:
    engine = Engine()  # a worker that never saw the command, replaying the stream
    feed = Feed(engine)
    feed.act("ls", "a")
    feed.event("heartbeat", args=heartbeat_args(RunStatus.PAUSED, StopReason.NO_PROGRESS))
    state = engine.state("run-1")
    assert state.status is RunStatus.PAUSED
    assert state.stop_reason is StopReason.NO_PROGRESS


def test_heartbeats_never_undo_a_stop_and_foreign_args_are_ignored() -> None:
    engine = Engine()
    feed = Feed(engine)
    feed.act("ls", "a")
    feed.event("heartbeat", args={"status": "napping", "reason": 3})
    assert engine.state("run-1").status is RunStatus.RUNNING
    engine.apply_command("run-1", Command(cmd="kill"), feed.now)
    feed.event("heartbeat", args=heartbeat_args(RunStatus.PAUSED))
    assert engine.state("run-1").status is RunStatus.STOPPED


def test_forget_drops_runs() -> None:
    engine = Engine()
    Feed(engine, "a").act("ls", "x")
    Feed(engine, "b").act("ls", "x")
    engine.forget(["a"])
    assert set(engine.windows) == {"b"}
    assert engine.tick(1e12) != []  # only b's timer remains, and it fires


# ---------------------------------------------------------------- real traces


def _slice(labels_wanted: dict[str, int]) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    labels: dict[str, str] = {}
    taken: dict[str, int] = defaultdict(int)
    with (TRACES / "dev.labels.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            label = row["label"]
            if taken[label] < labels_wanted.get(label, 0):
                taken[label] += 1
                labels[row["run_id"]] = label
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (TRACES / "dev.steps.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["run_id"] in labels:
                events[row["run_id"]].append(row)
    return labels, events


@pytest.mark.skipif(not (TRACES / "dev.steps.jsonl").exists(), reason=f"dev traces not found at {TRACES}")
def test_real_loop_runs_are_caught_and_healthy_runs_are_not() -> None:
    labels, events = _slice({"loop": 4, "healthy": 25})
    engine = Engine()
    acted: set[str] = set()
    for _run_id, rows in events.items():
        for row in rows:
            event = from_obj(StepEvent, row)
            for verdict in [*engine.tick(event.ts), *engine.observe(event, event.ts)]:
                if verdict.severity != "warn":
                    acted.add(verdict.run_id)
    loops = {r for r, label in labels.items() if label == "loop"}
    healthy = {r for r, label in labels.items() if label == "healthy"}
    assert len(loops) == 4
    # Two of the first four labelled loops are ``pair4x`` runs that DESIGN §4 calls false stops: a
    # reproduction script re-run after each real edit with the same output, in runs that were
    # resolved. They must stay running; the other two are loops and must be stopped.
    rerun_after_edits = {"mini-gemini3pro-pydata__xarray-4695", "mini-gemini3pro-sphinx-doc__sphinx-9320"}
    assert rerun_after_edits <= loops
    assert loops - rerun_after_edits <= acted
    assert not (rerun_after_edits & acted)
    assert not (healthy & acted)


def test_start_policy_sizes_the_window() -> None:
    engine = Engine()
    start = StepEvent.model_validate(
        {"run_id": "sized", "seq": 1, "ts": 1.0, "kind": "start", "policy": Policy(window=8).model_dump()}
    )
    engine.observe(start, 1.0)
    feed = Feed(engine, "sized")
    feed.seq = 1
    for i in range(20):
        feed.act(f"cat f{i}.py", f"body {i}")
    window = engine.windows["sized"]
    assert window.size == 8
    assert window.policy.window == 8


def _executor_attempts(feed: Feed, call_id: str, failures: int, final_ok: bool) -> None:
    """What the agent SDK and a tool executor publish for one call retried ``failures`` times."""
    args = {"order": "A-1"}
    feed.event("tool_call", tool="flaky_api", call_id=call_id, args=args)  # the agent's call
    for _ in range(failures):  # the executor: each failed attempt, then the next attempt
        feed.event("tool_result", tool="flaky_api", call_id=call_id, ok=False, error="ConnectionError: reset")
        feed.event("tool_call", tool="flaky_api", call_id=call_id, args=args)
    feed.event("tool_result", tool="flaky_api", call_id=call_id, ok=final_ok, observation="order A-1: shipped")


def test_executor_retries_of_one_call_are_retries_not_a_loop() -> None:
    # Given a flaky tool that the executor retries three times under the same call_id,
    engine = Engine()
    feed = Feed(engine)
    _executor_attempts(feed, "c1", failures=3, final_ok=True)
    # then nothing calls it a loop, and the state counts one call with three retries.
    assert [v.reason for v in feed.verdicts if v.reason is StopReason.LOOP_DETECTED] == []
    state = engine.state("run-1")
    assert state.counters.tool_calls == 1
    assert state.counters.retries == 3
    assert state.counters.errors == 3


def test_agent_reissuing_a_failing_command_is_still_a_loop() -> None:
    # The same failing action under new call_ids is the agent repeating itself, not an executor retry.
    feed = Feed(Engine())
    for _ in range(4):
        feed.act("pip install nonexistent-pkg", "ERROR: No matching distribution found", ok=False)
    assert any(v.severity == "stop" for v in feed.verdicts)


_MISSING_FILES = (
    "src/pkg/core.py",
    "src/pkg/_internal/io.py",
    "src/pkg/backends/cli.py",
    "tests/test_io.py",
    "docs/api.py",
)


@pytest.mark.parametrize("shape", ["swe_search_file", "grep_exit_status_1"])
def test_searching_file_after_file_for_a_missing_term_is_stopped(shape: str) -> None:
    # Given an agent searching file after file for a class that does not exist,
    feed = Feed(Engine())
    feed.act("sed -n '1,40p' src/pkg/core.py", "class RowParser:\n    pass")
    for path in _MISSING_FILES:
        if shape == "swe_search_file":
            feed.act(f"search_file FooAdapter {path}", f'No matches found for "FooAdapter" in /testbed/{path}')
        else:
            feed.act(f'grep -n "FooAdapter" {path}', "<returncode>1</returncode>\n<output>\n</output>", ok=False)
        if feed.verdicts and feed.verdicts[-1].severity == "stop":
            break
    # then the third miss warns and the fourth stops it, naming the four searches.
    assert [(v.severity, v.detector) for v in feed.verdicts] == [
        ("warn", "fruitless_search"),
        ("stop", "fruitless_search"),
    ]
    stop = feed.verdicts[-1]
    assert stop.reason is StopReason.LOOP_DETECTED
    assert len(stop.evidence.seqs) == 4


def test_an_agent_that_finds_it_in_the_third_place_is_left_alone() -> None:
    # Given an agent that checks two files, finds the term in the third, edits and re-runs the tests,
    feed = Feed(Engine())
    for path in _MISSING_FILES[:2]:
        feed.act(f'grep -n "def parse_row" {path}', "<returncode>1</returncode>\n<output>\n</output>", ok=False)
    feed.act('grep -n "def parse_row" src/pkg/rows.py', "41:def parse_row(x):")
    for i in range(3):
        feed.act(f"sed -i '{42 + i}s/split()/split(\",\")/' src/pkg/rows.py", "")
        feed.act("cd /testbed", "")
        feed.act("pytest tests/test_rows.py -q", f"{3 - i} failed, {9 + i} passed")
    # then nothing is paused or stopped.
    assert [v for v in feed.verdicts if v.severity != "warn"] == []


def test_empty_results_of_a_data_export_are_a_tool_failure() -> None:
    # An export tool answering "" (ok=true) again and again has failed, though it says nothing.
    feed = Feed(Engine())
    for day in range(1, 7):
        feed.event("tool_call", tool="export_orders_data", call_id=f"e{day}", args={"shard": f"orders-{day}"})
        feed.event("tool_result", tool="export_orders_data", call_id=f"e{day}", observation="", ok=True)
    assert [(v.severity, v.reason) for v in feed.verdicts][-1] == ("stop", StopReason.TOOL_FAILURE)


def _llm(run_id: str, seq: int, cost: float) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=100, cost_usd=cost)


def test_a_recalled_run_counts_replayed_events_once_and_goes_on_from_its_stored_counters() -> None:
    # What one owner saw of a run: its start (with a budget) and four LLM calls.
    policy = Policy(max_cost_usd=1.0, warn_first=False)
    start = StepEvent(run_id="r", seq=1, ts=1e9, kind="start", task="t", policy=policy)
    first = Engine()
    for event in (start, *(_llm("r", seq, 0.2) for seq in range(2, 6))):
        first.observe(event, 1e9)
    stored = first.state("r")
    assert round(stored.counters.cost_usd, 9) == 0.8
    # A new owner whose replay begins at seq 4 recalls the start and the stored state first:
    second = Engine()
    second.recall("r", start, stored, now=1e9)
    for seq in (4, 5):  # replayed: judged again, but already counted
        assert second.observe(_llm("r", seq, 0.2), 1e9) == []
    assert round(second.state("r").counters.cost_usd, 9) == 0.8
    # and the next call, over the run's own budget (not the default policy's), stops it.
    verdicts = second.observe(_llm("r", 6, 0.3), 1e9)
    assert [(v.severity, v.reason) for v in verdicts] == [("stop", StopReason.BUDGET_EXCEEDED)]
    state = second.state("r")
    assert (state.task, state.started_at, state.counters.tokens) == ("t", 1e9, 500)


def test_a_recalled_stopped_run_stays_stopped_and_is_not_judged_again() -> None:
    engine = Engine()
    stopped = Engine().state("r").model_copy(update={"status": RunStatus.STOPPED, "last_seq": 9})
    stopped = stopped.model_copy(update={"stop_reason": StopReason.LOOP_DETECTED})
    engine.recall("r", None, stopped, now=1e9)
    assert engine.observe(_llm("r", 10, 100.0), 1e9) == []
    assert engine.tick(1e9 + 10_000) == []
    state = engine.state("r")
    assert (state.status, state.stop_reason) == (RunStatus.STOPPED, StopReason.LOOP_DETECTED)


def test_recall_leaves_a_run_already_in_a_window_alone() -> None:
    engine = Engine()
    engine.observe(_llm("r", 2, 0.5), 1e9)
    engine.recall("r", None, Engine().state("r").model_copy(update={"status": RunStatus.STOPPED}), now=1e9)
    assert engine.state("r").status is RunStatus.RUNNING


def test_a_start_recalled_for_a_command_that_came_first_is_not_taken_again_when_it_arrives() -> None:
    # CI saw it: a pause sent right after a run's start reached the worker before the start did. The
    # worker recalled the start from RV_STEPS to apply the pause to; when the same start then arrived,
    # it was taken as activity after the pause, and the run was RUNNING again.
    engine = Engine()
    start = StepEvent(run_id="r", seq=1, ts=1e9, kind="start", task="t")
    engine.recall("r", start, None, now=1e9)
    engine.apply_command("r", Command(cmd="pause"), 1e9)
    assert engine.observe(start, 1e9 + 1) == []
    state = engine.state("r")
    assert (state.status, state.last_seq, state.task) == (RunStatus.PAUSED, 1, "t")
    # Its next step is the run going on.
    engine.observe(StepEvent(run_id="r", seq=2, ts=1e9 + 2, kind="message", observation="hi"), 1e9 + 2)
    assert engine.state("r").status is RunStatus.RUNNING


def test_an_event_with_seq_zero_is_counted() -> None:
    # Recorded traffic numbers events from 0: the first one's tokens count like any other's.
    engine = Engine()
    engine.observe(StepEvent(run_id="r", seq=0, ts=1e9, kind="llm", tokens_in=900, tokens_out=40), 1e9)
    assert engine.state("r").counters.tokens == 940


def test_a_runs_sums_saturate_so_its_state_can_always_be_written() -> None:
    engine = Engine()
    engine.observe(StepEvent(run_id="r", seq=0, ts=1.0, kind="start", task="t"), 1.0)
    window = engine.windows["r"]
    window.tokens = 2**70  # what a long run of huge steps could add up to
    window.cost_usd = 1e308 * 10
    state = engine.state("r")
    assert state.counters.tokens == MAX_COUNT
    assert state.counters.cost_usd == MAX_MONEY
    assert codec.decode(RunState, codec.encode(state)) == state
