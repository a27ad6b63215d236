"""Synthetic traffic: deterministic, labelled truthfully, and shaped like the kinds it claims."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from bench._synth_rejected import bash_says
from bench.synth import (
    KINDS,
    LOOP_SHAPES,
    MIN_STEPS,
    MIX_LOOP_SHAPES,
    SHAPES,
    RunLabel,
    SynthConfig,
    generate,
    main,
    parse_mix,
    parse_shapes,
    shape_run,
)  # fmt: skip
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
        assert label.shape is not None
        assert SHAPES[label.shape] == label.label
        assert label.label != "healthy" or label.shape == "varied"


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


def test_loop_runs_of_the_mix_take_every_shape_they_took_before() -> None:
    config = SynthConfig(runs=60, steps=10, mix={"loop": 1.0}, seed=5)
    shapes = {item.shape for item in generate(config) if isinstance(item, RunLabel)}
    assert shapes == set(MIX_LOOP_SHAPES)


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


# --- shapes picked by name ------------------------------------------------------------------------


def _after_onset(shape: str, seed: int, actions: int = 40) -> tuple[list[tuple[str, StepEvent]], RunLabel]:
    """(command, result) per call from the onset on, and the run's label."""
    events, label = shape_run(shape, seed, actions)
    assert label.onset_seq is not None
    calls = {e.call_id: e for e in events if e.kind == "tool_call"}
    pairs = [
        (str((calls[e.call_id].args or {}).get("command")), e)
        for e in events
        if e.kind == "tool_result" and e.seq > label.onset_seq
    ]
    return pairs, label


def _body(observation: str | None) -> tuple[int, str]:
    """The exit code and output of mini-swe-agent's wrapper; a SWE-agent observation is all output (code 0)."""
    found = re.fullmatch(r"<returncode>(\d+)</returncode>\n<output>\n(.*)</output>", observation or "", re.S)
    return (int(found[1]), found[2].strip()) if found else (0, (observation or "").strip())


def _digits(text: str) -> str:
    return re.sub(r"\d+", "N", text)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_makes_valid_runs_of_its_label(shape: str) -> None:
    for seed in (1, 2):
        events, label = shape_run(shape, seed, 30)
        assert (label.shape, label.label, label.n_events) == (shape, SHAPES[shape], len(events))
        assert events[0].kind == "start"
        assert [e.seq for e in events] == list(range(len(events)))
        assert all(a.ts < b.ts for a, b in pairwise(events))
        assert all(StepEvent.model_validate(e.model_dump()) == e for e in events)  # valid on the wire
        calls = [e.call_id for e in events if e.kind == "tool_call"]
        results = [e.call_id for e in events if e.kind == "tool_result"]
        assert results == calls[: len(results)]  # each call answered, in order (a stall's last one never)
        if label.label == "healthy":
            assert label.onset_seq is None
            assert events[-1].kind == "final"
        else:
            assert label.onset_seq in {e.seq for e in events}
            assert events[-1].kind != "final" or label.label == "hidden_failure"
    assert shape_run(shape, 3) == shape_run(shape, 3)
    assert shape_run(shape, 3)[0] != shape_run(shape, 4)[0]


def test_shape_run_refuses_an_unknown_shape_or_too_few_actions() -> None:
    with pytest.raises(ValueError, match="unknown shape 'loopy'"):
        shape_run("loopy")
    with pytest.raises(ValueError, match="at least"):
        shape_run("paging", actions=MIN_STEPS - 1)


def _negative(command: str, result: StepEvent) -> bool:
    rc, out = _body(result.observation)
    if out.startswith("No matches found for"):
        return True
    if rc == 0:
        return out == ""  # find with no hits
    return rc in (1, 2, 127) and (
        out == "" or any(s in out for s in ("No such file", "command not found", "No module named", "cannot import"))
    )


def test_empty_queries_ask_each_guess_once_and_every_answer_is_negative() -> None:
    forms: Counter[str] = Counter()
    for seed in range(12):
        pairs, _ = _after_onset("empty_queries", seed)
        commands = [c for c, _ in pairs]
        assert len(pairs) >= 8
        assert len(set(commands)) == len(commands), "a query repeated"
        assert all(_negative(c, r) for c, r in pairs), [(c, r.observation) for c, r in pairs if not _negative(c, r)]
        forms.update(c.split()[0] for c in commands)
    assert {"grep", "find", "ls", "search_dir", "python"} <= set(forms)


def test_numbers_only_differs_only_in_numbers() -> None:
    tools = set()
    for seed in range(10):
        pairs, _ = _after_onset("numbers_only", seed)
        commands = [c for c, _ in pairs]
        tools.add(commands[0].split()[0])
        assert len({_digits(c) for c in commands}) == 1  # the same action, numbers aside
        assert all(a != b for a, b in pairwise(commands))  # ... and never the same numbers twice in a row
        for (_, a), (_, b) in pairwise(pairs):
            lines_a, lines_b = (Counter(_digits(r.observation or "").split("\n")) for r in (a, b))
            assert sum(((lines_a - lines_b) + (lines_b - lines_a)).values()) <= lines_a.total() // 2
    assert tools == {"goto", "edit"}


def test_replay_once_replays_a_block_not_back_to_back_and_ends_before_another_copy() -> None:
    for seed in range(12):
        events, _ = shape_run("replay_once", seed, 40)
        pairs = [(c, r.observation) for c, r in _after_onset("replay_once", seed)[0]]
        size = max(k for k in range(1, 11) if any(pairs[j : j + k] == pairs[:k] for j in range(k + 1, len(pairs))))
        block = pairs[:size]
        starts = [j for j in range(len(pairs)) if pairs[j : j + size] == block]
        assert 5 <= size <= 10
        assert len(starts) in (2, 3)
        assert all(b - a >= size + 2 for a, b in pairwise(starts))  # other actions between the copies
        assert len(pairs) - (starts[-1] + size) <= 2  # the run ends before a further copy
        assert events[-1].kind != "final"


def test_rejected_input_is_the_agents_own_input_refused_in_variants() -> None:
    kinds = set()
    for seed in range(16):
        pairs, _ = _after_onset("rejected_input", seed)
        commands = [c for c, _ in pairs]
        assert len(set(commands)) == len(commands)
        for command, result in pairs:
            rc, out = _body(result.observation)
            assert not result.ok or out.startswith("Usage:"), (command, out)
            if "command not found" in out or out.startswith("bash: -c"):
                kinds.add("prose")
                assert rc in (2, 127)
            elif (result.error or "").startswith("edit_syntax_error"):
                kinds.add("edit")
                assert "E999" in out
            else:
                kinds.add("usage")
                assert "usage" in out.lower(), out
    assert kinds == {"prose", "edit", "usage"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_prose_errors_are_what_bash_says() -> None:
    texts = []
    for seed in range(40):
        events, _ = shape_run("rejected_input", seed, 20)
        calls = [e for e in events if e.kind == "tool_call" and e.args]
        texts += [str((e.args or {})["command"]) for e in calls if (e.tool or "")[:1].isupper()]  # prose
    assert len(texts) > 20
    for text in texts:
        run = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd="/", check=False, timeout=10)
        assert bash_says(text) == (run.stderr.strip(), run.returncode), text


def test_env_hole_tries_a_new_command_each_time_and_fails_the_same_way() -> None:
    for seed in range(12):
        pairs, _ = _after_onset("env_hole", seed)
        commands = [c for c, _ in pairs]
        assert len(set(commands)) == len(commands)
        assert not any(r.ok for _, r in pairs)
        assert len({_body(r.observation)[1].split("\n")[-1] for _, r in pairs}) == 1  # the same error, last


def test_rerun_rhythm_gives_the_same_error_every_few_actions_while_edits_differ() -> None:
    for seed in range(12):
        pairs, _ = _after_onset("rerun_rhythm", seed)
        runs = [i for i, (c, _) in enumerate(pairs) if c.startswith("python ")]
        others = [(c, r) for c, r in pairs if not c.startswith("python ")]
        assert len(runs) >= 4
        assert all(2 <= b - a <= 4 for a, b in pairwise(runs))
        assert len({pairs[i][0] for i in runs}) == 1
        assert len({pairs[i][1].observation for i in runs}) == 1
        assert not any(pairs[i][1].ok for i in runs)
        assert all(r.ok for _, r in others)
        assert len({c for c, _ in others}) == len(others)  # every edit new


def _calls(events: list[StepEvent]) -> list[tuple[str, StepEvent]]:
    calls = {e.call_id: e for e in events if e.kind == "tool_call"}
    return [(str((calls[e.call_id].args or {})["command"]), e) for e in events if e.kind == "tool_result"]


def test_rerun_after_edits_repeats_a_failure_between_real_edits_then_the_fix_lands() -> None:
    for seed in range(12):
        events, _ = shape_run("rerun_after_edits", seed, 40)
        pairs = _calls(events)
        counts = Counter(
            (c, re.sub(r"in \d+\.\d+s", "", r.observation or "")) for c, r in pairs if not r.ok
        ).most_common()
        (command, _), times = counts[0]
        assert 4 <= times <= 5
        at = [i for i, (c, r) in enumerate(pairs) if c == command]
        failing = [i for i in at if not pairs[i][1].ok]
        for a, b in pairwise(failing):
            edits = [c for c, r in pairs[a + 1 : b] if c.startswith("sed -i") and r.ok]
            assert edits, "an edit between the re-runs"
        assert pairs[at[-1]][1].ok  # then the output changes
        assert failing[-1] - failing[0] >= 10  # spread over the run
        assert events[-1].kind == "final"


def test_format_errors_are_recovered_on_the_next_action() -> None:
    for seed in range(10):
        events, _ = shape_run("format_recovered", seed, 40)
        slips = [i for i, e in enumerate(events) if e.kind == "message"]
        assert 2 <= len(slips) <= 3
        assert events[0].agent == "mini-swe-agent"
        for i in slips:
            slip = events[i]
            assert (slip.ok, (slip.error or "").startswith("format_error")) == (False, True)
            after = next(e for e in events[i + 1 :] if e.kind != "llm")
            assert after.kind == "tool_call"
            blocks = re.findall(r"```bash\n(.*?)\n```", str((slip.args or {})["text"]), re.S)
            assert not blocks or blocks[0] == (after.args or {})["command"]
        assert events[-1].kind == "final"


def test_paging_reads_new_content_each_time() -> None:
    page = re.compile(r"scroll_down|(nl -ba \S+ \| )?sed -n '\d+,\d+p'( \S+)?")
    for seed in range(10):
        pairs = _calls(shape_run("paging", seed, 40)[0])
        stretches = [
            list(g) for paging, g in itertools.groupby(pairs, key=lambda p: bool(page.fullmatch(p[0]))) if paging
        ]
        pages = max(stretches, key=len)
        assert len(pages) >= 5
        assert len({r.observation for _, r in pages}) == len(pages)


def test_tests_run_one_by_one_pass_with_near_identical_output() -> None:
    for seed in range(10):
        pairs = [(c, r) for c, r in _calls(shape_run("test_by_test", seed, 40)[0]) if "::test_" in c]
        assert 6 <= len(pairs) <= 12
        assert len({c for c, _ in pairs}) == len(pairs)
        assert all(r.ok for _, r in pairs)
        shapes = {_digits(re.sub(r"\S*::test_\w+ PASSED\s*", "", r.observation or "")) for _, r in pairs}
        assert len(shapes) == 1


def test_the_command_line_picks_shapes_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.jsonl"
    assert (
        main(["--runs", "9", "--steps", "12", "--seed", "1", "--shapes", "empty_queries,paging=2", "--out", str(out)])
        == 0
    )
    labels = [json.loads(line) for line in Path(f"{out}.labels.jsonl").read_text().splitlines()]
    assert Counter(lab["shape"] for lab in labels) == {"empty_queries": 3, "paging": 6}
    assert {lab["label"] for lab in labels if lab["shape"] == "paging"} == {"healthy"}
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "rejected_input" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--shapes", "loopy"], "unknown shape 'loopy'"), (["--shapes", "paging=x"], "expected a weight"),
     (["--shapes", "paging,paging"], "appears twice"), (["--shapes", "paging=0"], "at least one shape"),
     (["--shapes", "paging", "--mix", "loop=1"], "not both")],
)  # fmt: skip
def test_bad_shapes_are_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--runs", "1", "--steps", "10", "--out", str(tmp_path / "x.jsonl"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1


def test_parse_shapes_weighs_a_bare_name_one() -> None:
    assert parse_shapes("paging, env_hole=2.5") == {"paging": 1.0, "env_hole": 2.5}
