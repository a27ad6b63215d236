"""Synthetic traffic: deterministic, labelled truthfully, and shaped like the kinds it claims."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from bench.synth import KINDS, LOOP_SHAPES, RunLabel, SynthConfig, generate, main, parse_mix
from bench.traffic import read_events
from runvisor.protocols.messages import StepEvent

MIX = dict.fromkeys(KINDS, 1.0)


@pytest.fixture(scope="module")
def traffic() -> tuple[list[StepEvent], dict[str, RunLabel]]:
    events: list[StepEvent] = []
    labels: dict[str, RunLabel] = {}
    for item in generate(SynthConfig(runs=180, steps=24, mix=MIX, seed=11, concurrency=16)):
        if isinstance(item, RunLabel):
            labels[item.run_id] = item
        else:
            events.append(item)
    return events, labels


@pytest.fixture(scope="module")
def runs(traffic: tuple[list[StepEvent], dict[str, RunLabel]]) -> dict[str, list[StepEvent]]:
    by_run: dict[str, list[StepEvent]] = defaultdict(list)
    for event in traffic[0]:
        by_run[event.run_id].append(event)
    return by_run


def _of(label: str, traffic: tuple[list[StepEvent], dict[str, RunLabel]]) -> list[RunLabel]:
    found = [lab for lab in traffic[1].values() if lab.label == label]
    assert found, f"no {label} run generated"
    return found


def _pairs(events: list[StepEvent]) -> list[tuple[str, str]]:
    """(action, observation) per tool call, in order."""
    calls = {e.call_id: e for e in events if e.kind == "tool_call"}
    return [
        (json.dumps([calls[e.call_id].tool, calls[e.call_id].args]), e.observation or "")
        for e in events
        if e.kind == "tool_result"
    ]


def _masked(text: str) -> str:
    """Numbers and paths masked: what is left is the shape of an observation."""
    return re.sub(r"\S+/\S+", "PATH", re.sub(r"\d+", "N", text))


def test_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b", "c"):
        out = tmp_path / f"{name}.jsonl"
        seed = "5" if name != "c" else "6"
        assert main(["--runs", "30", "--steps", "12", "--out", str(out), "--seed", seed]) == 0
        outputs.append((out.read_bytes(), Path(f"{out}.labels.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_the_mix_is_respected_exactly(tmp_path: Path) -> None:
    labels: Counter[str] = Counter()
    config = SynthConfig(runs=40, steps=10, mix=parse_mix("healthy=0.5,loop=0.25,stall=0.25"), seed=1)
    for item in generate(config):
        if isinstance(item, RunLabel):
            labels[item.label] += 1
    assert labels == {"healthy": 20, "loop": 10, "stall": 10}


def test_odd_counts_still_add_up_to_the_runs_asked_for() -> None:
    config = SynthConfig(runs=7, steps=10, mix=MIX, seed=2)
    assert sum(isinstance(item, RunLabel) for item in generate(config)) == 7


def test_labels_match_the_runs(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    labels = traffic[1]
    assert set(labels) == set(runs)
    assert set(Counter(lab.label for lab in labels.values())) == set(KINDS)
    for run_id, events in runs.items():
        label = labels[run_id]
        assert label.n_events == len(events)
        if label.label == "healthy":
            assert label.onset_seq is None
        else:
            assert label.onset_seq in {e.seq for e in events}, run_id
        assert (label.shape in LOOP_SHAPES) == (label.label == "loop")


def test_each_run_starts_and_counts_up_in_seq_and_time(runs: dict[str, list[StepEvent]]) -> None:
    for events in runs.values():
        assert events[0].kind == "start"
        assert events[0].task
        assert all(a.seq < b.seq for a, b in pairwise(events))
        assert all(a.ts < b.ts for a, b in pairwise(events))


def test_runs_interleave_in_time_order_with_bounded_concurrency(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]],
) -> None:
    items = list(generate(SynthConfig(runs=40, steps=10, mix=MIX, seed=3, concurrency=4)))
    active: set[str] = set()
    widest = 0
    for item in items:
        if isinstance(item, RunLabel):
            active.discard(item.run_id)
        else:
            active.add(item.run_id)
            widest = max(widest, len(active))
    assert widest == 4  # a sliding set of active runs: memory does not grow with --runs
    events = traffic[0]
    assert all(a.ts <= b.ts for a, b in pairwise(events))
    assert len({e.run_id for e in events[:20]}) > 1


def test_healthy_runs_never_repeat_a_pair_three_times_in_a_row(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("healthy", traffic):
        events = runs[label.run_id]
        pairs = _pairs(events)
        assert not any(a == b == c for a, b, c in zip(pairs, pairs[1:], pairs[2:], strict=False)), label.run_id
        assert events[-1].kind == "final"


def test_healthy_runs_see_something_new_when_they_repeat_an_action(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    # Re-running a test between edits is healthy because the result changes; the same result
    # (numbers aside) at most twice a run, three times for an empty `cd`/`ls`.
    for label in _of("healthy", traffic):
        seen = Counter((action, re.sub(r"\d+", "0", obs)) for action, obs in _pairs(runs[label.run_id]))
        for (action, obs), times in seen.items():
            navigation = '"cd ' in action or '"ls ' in action
            assert times <= (3 if navigation and "<output>\n</output>" in obs else 2), (label.run_id, action)


def test_every_loop_run_really_repeats_itself(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("loop", traffic):
        assert label.onset_seq is not None
        after = [e for e in runs[label.run_id] if e.seq >= label.onset_seq]
        repeats = Counter(_masked(obs) for _, obs in _pairs(after)).most_common(1)[0][1]
        assert repeats >= 3, (label.shape, label.run_id)
        assert runs[label.run_id][-1].kind != "final"  # a looping run is ended by a limit


def test_loop_runs_take_every_shape() -> None:
    config = SynthConfig(runs=60, steps=10, mix={"loop": 1.0}, seed=5)
    shapes = {item.shape for item in generate(config) if isinstance(item, RunLabel)}
    assert shapes == set(LOOP_SHAPES)


def test_a_stalled_run_ends_with_a_call_that_never_returns(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("stall", traffic):
        last = runs[label.run_id][-1]
        assert last.kind == "tool_call"
        assert label.onset_seq == last.seq


def test_a_retry_storm_retries_the_same_failing_call(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("retry_storm", traffic):
        assert label.onset_seq is not None
        after = [e for e in runs[label.run_id] if e.seq >= label.onset_seq]
        calls = {(e.tool, json.dumps(e.args)) for e in after if e.kind == "tool_call"}
        results = [e for e in after if e.kind == "tool_result"]
        assert len(calls) == 1
        assert len(results) >= 8
        assert not any(e.ok for e in results)


def test_hidden_failures_look_successful(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("hidden_failure", traffic):
        assert label.onset_seq is not None
        after = [e for e in runs[label.run_id] if e.seq >= label.onset_seq and e.kind == "tool_result"]
        assert len(after) >= 6
        for e in after:
            body = re.sub(r"</?(returncode|output)>|\d", "", e.observation or "").strip()
            assert e.ok
            assert e.error is None
            assert body == "" or body.startswith("Error:") or '"ok": false' in body


def test_a_budget_run_passes_the_budget_of_its_start_event(
    traffic: tuple[list[StepEvent], dict[str, RunLabel]], runs: dict[str, list[StepEvent]]
) -> None:
    for label in _of("budget", traffic):
        events = runs[label.run_id]
        policy = events[0].policy
        assert policy is not None
        assert policy.max_cost_usd is not None
        spent, crossed = 0.0, None
        for e in events:
            spent += e.cost_usd or 0.0
            if crossed is None and spent > policy.max_cost_usd:
                crossed = e.seq
        assert crossed is not None
        assert crossed == label.onset_seq
        assert sum(e.kind == "llm" for e in events if e.seq > crossed) >= 3  # it keeps spending


def test_observations_have_realistic_sizes(traffic: tuple[list[StepEvent], dict[str, RunLabel]]) -> None:
    sizes = [len(e.observation) for e in traffic[0] if e.kind == "tool_result" and e.observation]
    assert max(sizes) <= 1100
    assert 100 < sorted(sizes)[len(sizes) // 2] < 1000


def test_the_files_can_be_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.msgpack"
    assert main(["--runs", "12", "--steps", "10", "--out", str(out), "--seed", "4", "--mix", "healthy=1"]) == 0
    events = list(read_events(out))
    labels = [json.loads(line) for line in Path(f"{out}.labels.jsonl").read_text().splitlines()]
    assert {lab["run_id"] for lab in labels} == {e.run_id for e in events}
    assert f"wrote {len(events)} events of 12 runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mix", "says"),
    [("healthy=x", "expected a weight"), ("sleepy=1", "unknown run kind 'sleepy'"), ("loop=0", "at least one kind"),
     ("loop=1,loop=2", "appears twice"), ("loop=-1", "expected a weight")],
)  # fmt: skip
def test_a_bad_mix_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mix: str, says: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--runs", "1", "--steps", "10", "--out", str(tmp_path / "x.jsonl"), "--mix", mix])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
