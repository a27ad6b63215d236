"""Sub-agent families, the pure part: what a sub-agent's entry says, what a parent's family spent,
when that is over the parent's budget, how sub-agents end with their parent, and the `ps` tree."""

from __future__ import annotations

import pytest

from runvisor.actors.operator._render import PS_COLUMNS, family_tree, runs_table
from runvisor.actors.supervisor._family import (
    MAX_DEPTH,
    Book,
    Family,
    budget_verdict,
    end_command,
    entry_for,
    overrun,
    pause_command,
)
from runvisor.actors.supervisor.detection.engine import Engine
from runvisor.protocols import subjects
from runvisor.protocols.messages import Command, Counters, Evidence, FamilyEntry, RunState, StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason


def spent(cost: float, tokens: int = 0, steps: int = 0) -> Counters:
    return Counters(cost_usd=cost, tokens=tokens, steps=steps)


def entry(run_id: str, parent: str, cost: float, *, status: RunStatus = RunStatus.RUNNING, **more: int) -> FamilyEntry:
    return FamilyEntry(run_id=run_id, parent_run_id=parent, status=status, counters=spent(cost), **more)


# -- entries and families -------------------------------------------------------------------


def test_a_sub_agent_entry_carries_its_own_spending_and_its_sub_agents() -> None:
    state = RunState(run_id="child", counters=spent(0.3, tokens=100), last_seq=7, status=RunStatus.PAUSED)
    alone = entry_for(state, "parent", Family(), now=5.0)
    assert (alone.parent_run_id, alone.counters, alone.sub_agents, alone.depth) == ("parent", state.counters, 0, 1)
    assert (alone.status, alone.last_seq, alone.updated_at) == (RunStatus.PAUSED, 7, 5.0)
    with_grandchildren = entry_for(state, "parent", Family(spent(0.2, tokens=50), sub_agents=2, depth=1), now=5.0)
    assert with_grandchildren.counters == spent(0.5, tokens=150)
    assert (with_grandchildren.sub_agents, with_grandchildren.depth) == (2, 2)


def test_levels_past_the_deepest_count_only_for_nearer_ancestors() -> None:
    state = RunState(run_id="deep", counters=spent(0.1))
    capped = entry_for(state, "up", Family(spent(5.0), sub_agents=9, depth=MAX_DEPTH), now=0.0)
    assert (capped.counters, capped.sub_agents, capped.depth) == (spent(0.1), 0, MAX_DEPTH)


def test_a_family_adds_up_its_sub_agents_and_theirs() -> None:
    book = Book()
    book.take(entry("a", "p", 0.6))
    book.take(entry("b", "p", 0.6, sub_agents=1, depth=2))  # b's entry counts its own child too
    book.take(entry("x", "other", 9.0))
    family = book.family("p")
    assert family.counters.cost_usd == pytest.approx(1.2)
    assert (family.sub_agents, family.depth) == (3, 2)
    assert book.changed == {"p", "other"}
    assert book.family("nobody") == Family()


def test_a_newer_entry_replaces_the_older_and_a_run_is_never_its_own_sub_agent() -> None:
    book = Book()
    book.take(entry("a", "p", 0.2))
    book.take(entry("a", "p", 0.5))
    book.take(entry("p", "p", 100.0))
    assert book.family("p").counters.cost_usd == 0.5
    assert "p" in book
    book.drop("p", "a")
    assert "p" not in book


def test_sub_agents_to_end_are_the_live_ones_not_yet_told() -> None:
    book = Book()
    book.take(entry("live", "p", 0.1))
    book.take(entry("paused", "p", 0.1, status=RunStatus.PAUSED))
    book.take(entry("done", "p", 0.1, status=RunStatus.COMPLETED))
    book.take(entry("stopped", "p", 0.1, status=RunStatus.STOPPED))
    assert sorted(e.run_id for e in book.to_end("p")) == ["live", "paused"]
    book.ended("p", "live")
    assert [e.run_id for e in book.to_end("p")] == ["paused"]


def test_the_sweep_drops_ended_sub_agents_as_their_ttl_would_and_keeps_live_ones() -> None:
    book = Book()
    book.take(FamilyEntry(run_id="old", parent_run_id="p", status=RunStatus.STOPPED, updated_at=10.0))
    book.take(FamilyEntry(run_id="recent", parent_run_id="p", status=RunStatus.COMPLETED, updated_at=30.0))
    book.take(FamilyEntry(run_id="quiet", parent_run_id="p", updated_at=1.0))
    book.take(FamilyEntry(run_id="gone", parent_run_id="q", status=RunStatus.STOPPED, updated_at=1.0))
    assert book.sweep(before=20.0) == 2
    assert sorted(e.run_id for e in book.members("p")) == ["quiet", "recent"]
    assert "q" not in book
    assert len(book) == 2


def test_a_cycle_of_made_up_parents_is_counted_a_bounded_number_of_times() -> None:
    # Two runs naming each other as parent: each supervisor writes its run's entry with the other's
    # family in it. The sum must settle, not grow at every flush.
    books = {"a": Book(), "b": Book()}
    own = {"a": spent(1.0), "b": spent(2.0)}
    other = {"a": "b", "b": "a"}
    totals = []
    for _ in range(5 * MAX_DEPTH):
        for run in ("a", "b"):
            state = RunState(run_id=run, counters=own[run])
            books[other[run]].take(entry_for(state, other[run], books[run].family(run), now=0.0))
        totals.append(books["a"].family("a").counters.cost_usd)
    assert max(totals) <= MAX_DEPTH * 3.0
    assert totals[-1] == totals[-2] == 2.0, "settled on the other run's own spending"


# -- budgets --------------------------------------------------------------------------------


def test_a_family_over_the_parents_budget_is_an_overrun_with_the_figures() -> None:
    policy = Policy(max_cost_usd=1.0)
    family = Family(spent(1.2), sub_agents=2, depth=1)
    over = overrun(policy, spent(0.05), family)
    assert over is not None
    assert (over.label, over.field, over.own, over.family, over.limit) == ("cost", "max_cost_usd", 0.05, 1.2, 1.0)
    verdict = budget_verdict("p", over, family, at_seq=9, now=3.0)
    assert verdict.reason is StopReason.BUDGET_EXCEEDED
    assert (verdict.severity, verdict.at_seq, verdict.evidence.seqs) == ("warn", 9, (9,))
    assert verdict.detector == "family_budget"
    assert verdict.evidence.summary == (
        "seq 9: cost budget exceeded by the run and its 2 sub-agents: 1.25 of 1 "
        "(policy max_cost_usd; the run 0.05, its sub-agents 1.2)"
    )


@pytest.mark.parametrize(
    ("policy", "own", "family"),
    [
        (Policy(max_cost_usd=1.0), spent(0.2), Family(spent(0.7), 1, 1)),  # within, together
        (Policy(max_cost_usd=1.0), spent(1.5), Family(spent(0.7), 1, 1)),  # over alone: its own detector's
        (Policy(), spent(5.0), Family(spent(5.0), 1, 1)),  # no budget at all
        (Policy(max_cost_usd=1.0), spent(0.9), Family(spent(5.0), 0, 0)),  # no sub-agents
    ],
)
def test_no_overrun_is_the_familys_unless_its_sub_agents_take_the_run_over(
    policy: Policy, own: Counters, family: Family
) -> None:
    assert overrun(policy, own, family) is None


def test_every_shared_budget_is_checked_not_only_cost() -> None:
    policy = Policy(max_cost_usd=10.0, max_tokens=1000, max_steps=50)
    over = overrun(policy, spent(1.0, tokens=400, steps=10), Family(spent(1.0, tokens=700, steps=10), 1, 1))
    assert over is not None
    assert (over.field, over.total) == ("max_tokens", 1100)
    over = overrun(policy, spent(1.0, tokens=1, steps=30), Family(spent(1.0, tokens=1, steps=30), 1, 1))
    assert over is not None
    assert over.field == "max_steps"


# -- ending with the parent -----------------------------------------------------------------


def test_a_killed_parents_sub_agents_are_killed_and_told_why() -> None:
    command = end_command("p", StopReason.USER_KILLED, None, entry("c", "p", 0.1, last_seq=4), "supervisor:w", 1.0)
    assert (command.cmd, command.reason, command.at_seq) == ("kill", StopReason.USER_KILLED, 4)
    assert command.issuer == "supervisor:w"
    assert command.note == "ended with its parent run p"
    assert command.evidence is not None
    assert command.evidence.summary == "its parent run p was killed"


def test_a_stopped_parents_sub_agents_stop_with_its_reason_and_its_evidence() -> None:
    family = Family(spent(1.2), sub_agents=2, depth=1)
    over = overrun(Policy(max_cost_usd=1.0), spent(0.05), family)
    assert over is not None
    why = budget_verdict("p", over, family, at_seq=9, now=3.0).model_copy(update={"severity": "stop"})
    command = end_command("p", StopReason.BUDGET_EXCEEDED, why, entry("c", "p", 0.6), "supervisor:w", 4.0)
    assert (command.cmd, command.reason) == ("stop", StopReason.BUDGET_EXCEEDED)
    assert command.evidence is not None
    assert command.evidence.summary.startswith("its parent run p was stopped (BUDGET_EXCEEDED): seq 9: cost budget")
    assert "1.25 of 1 (policy max_cost_usd" in command.evidence.summary
    # A verdict that did not end the parent (an earlier warning, another reason) is not quoted.
    loop = end_command("p", StopReason.LOOP_DETECTED, why, entry("c", "p", 0.6), "supervisor:w", 4.0)
    assert loop.evidence is not None
    assert loop.evidence.summary == "its parent run p was stopped (LOOP_DETECTED)"


def test_a_parent_paused_for_its_familys_budget_pauses_its_sub_agents() -> None:
    family = Family(spent(1.2), sub_agents=1, depth=1)
    over = overrun(Policy(max_cost_usd=1.0), spent(0.0), family)
    assert over is not None
    why = budget_verdict("p", over, family, at_seq=2, now=0.0).model_copy(update={"severity": "pause"})
    command = pause_command("p", why, entry("c", "p", 1.2, last_seq=3), "supervisor:w", 1.0)
    assert (command.cmd, command.reason, command.at_seq) == ("pause", StopReason.BUDGET_EXCEEDED, 3)
    assert command.note == "paused with its parent run p"


# -- the engine's part ----------------------------------------------------------------------


def start(run_id: str, parent: str | None, seq: int = 1, policy: Policy | None = None) -> StepEvent:
    return StepEvent(run_id=run_id, seq=seq, ts=1.0, kind="start", parent_run_id=parent, policy=policy)


def test_a_runs_parent_is_the_one_its_first_start_names_and_survives_a_recall() -> None:
    engine = Engine()
    engine.observe(start("c", "p"), 1.0)
    engine.observe(start("c", "intruder", seq=2), 2.0)
    engine.observe(start("self", "self"), 1.0)
    assert engine.state("c").parent_run_id == "p"
    assert engine.state("self").parent_run_id is None
    assert engine.state("top").parent_run_id is None
    later = Engine()
    later.recall("c", None, engine.state("c"), 3.0)
    assert later.state("c").parent_run_id == "p"


@pytest.mark.parametrize("warn_first", [True, False])
def test_a_familys_overrun_is_graded_as_the_runs_own_budget(warn_first: bool) -> None:
    engine = Engine()
    engine.observe(start("p", None, policy=Policy(max_cost_usd=1.0, warn_first=warn_first)), 1.0)
    family = Family(spent(1.2), sub_agents=2, depth=1)
    over = overrun(Policy(max_cost_usd=1.0), spent(0.0), family)
    assert over is not None
    finding = budget_verdict("p", over, family, at_seq=1, now=2.0)
    first = engine.grade(finding, 2.0)
    if warn_first:
        assert [v.severity for v in first] == ["warn"]
        assert engine.state("p").status is RunStatus.RUNNING
        first = engine.grade(finding, 3.0)
    assert [v.severity for v in first] == ["stop"]
    state = engine.state("p")
    assert (state.status, state.stop_reason) == (RunStatus.STOPPED, StopReason.BUDGET_EXCEEDED)
    assert state.last_verdict is not None
    assert state.last_verdict.detector == "family_budget"
    assert engine.grade(finding, 4.0) == [], "never two stops for one run"
    assert engine.grade(finding.model_copy(update={"run_id": "unknown"}), 4.0) == []


def test_a_command_with_evidence_from_another_runs_supervisor_is_the_runs_last_verdict() -> None:
    engine = Engine()
    engine.observe(start("c", "p"), 1.0)
    said = Evidence(summary="its parent run p was killed")
    kill = Command(cmd="kill", issuer="supervisor:w2", evidence=said, note="ended with its parent run p", at_seq=1)
    engine.apply_command("c", kill, 2.0)
    state = engine.state("c")
    assert (state.status, state.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    assert state.last_verdict is not None
    assert (state.last_verdict.severity, state.last_verdict.evidence, state.last_verdict.detector) == (
        "stop", said, "supervisor:w2",
    )  # fmt: skip
    # An operator's word without evidence leaves the last verdict as it was.
    engine.observe(start("d", None), 1.0)
    engine.apply_command("d", Command(cmd="pause"), 2.0)
    assert engine.state("d").last_verdict is None


# -- ps -------------------------------------------------------------------------------------


def run(run_id: str, parent: str | None = None) -> RunState:
    return RunState(run_id=run_id, parent_run_id=parent, started_at=1.0)


def test_ps_shows_sub_agents_under_their_parent_in_the_order_given() -> None:
    states = [run("c2", "p"), run("other"), run("g", "c2"), run("p"), run("c1", "p"), run("orphan", "gone")]
    tree = [(s.run_id, depth) for s, depth in family_tree(states)]
    assert tree == [("other", 0), ("p", 0), ("c2", 1), ("g", 2), ("c1", 1), ("orphan", 0)]
    lines = runs_table(states, PS_COLUMNS, now=2.0, tree=True).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["other", "p", "c2", "g", "c1", "orphan"]
    assert lines[3].startswith("  c2 ")
    assert lines[4].startswith("    g ")


def test_a_cycle_of_parents_is_shown_once_each_and_the_tree_fits_80_columns() -> None:
    states = [run("a", "b"), run("b", "a"), *(run(f"deep{i}", f"deep{i - 1}" if i else None) for i in range(12))]
    tree = family_tree(states)
    assert sorted(s.run_id for s, _ in tree) == sorted(s.run_id for s in states)
    lines = runs_table(states, PS_COLUMNS, 80, now=2.0, tree=True).splitlines()
    assert max(map(len, lines)) <= 80


def test_the_family_key_starts_with_the_parents_partition() -> None:
    key = subjects.family_key("parent-1", "child-1")
    assert key == f"p{subjects.partition_of('parent-1')}.parent-1.child-1"
    assert subjects.family_filter(3) == "p3.>"
