"""The fuzz bench's message generators: deterministic, hostile where they say so, and well addressed."""

from __future__ import annotations

import random

import msgpack
import pytest

from bench import _fuzz_messages as fuzz
from bench.fuzz import run_category
from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import MAX_ARGS_CHARS, MAX_OBSERVATION_CHARS, StepEvent, check_run_id

TARGETS = ["h-loop-0", "h-ok-0", "h-v0"]
#: Classes whose messages are valid steps with a hostile twist: the worker must take them, not reject them.
ACCEPTED = {"unknown_fields", "seq_gap", "seq_duplicate", "unknown_run", fuzz.BURST}


@pytest.fixture(scope="module")
def hostile() -> list[fuzz.Message]:
    return fuzz.hostile_messages(3000, seed=3, phase="h", targets=TARGETS)


def test_the_same_seed_sends_the_same_bytes(hostile: list[fuzz.Message]) -> None:
    assert fuzz.hostile_messages(3000, seed=3, phase="h", targets=TARGETS) == hostile
    assert fuzz.hostile_messages(3000, seed=4, phase="h", targets=TARGETS) != hostile


def test_every_class_is_sent_and_the_counts_add_up(hostile: list[fuzz.Message]) -> None:
    assert len(hostile) == 3000
    assert sum(fuzz.class_counts(100_000).values()) == 100_000
    assert {m.kind for m in hostile} == set(fuzz.MIX)


def test_malformed_classes_are_all_rejected_and_the_others_all_accepted(hostile: list[fuzz.Message]) -> None:
    for msg in hostile:
        assert fuzz.rejected_here(msg) is (msg.kind not in ACCEPTED), msg


def test_subjects_stay_one_token_whatever_the_payload_says(hostile: list[fuzz.Message]) -> None:
    for msg in hostile:
        check_run_id(subjects.run_id_of(msg.subject))
        assert msg.is_command is msg.kind.startswith("ctl_")
        assert len(msg.data) < 1024 * 1024, "under the server's max_payload"


def test_oversize_is_just_over_the_limits() -> None:
    rng = random.Random(1)
    for _ in range(20):
        step = msgpack.unpackb(fuzz.oversize(rng, "r"))
        sizes = [len(repr(step.get("args", ""))) - MAX_ARGS_CHARS] + [
            len(step.get(name) or "") - MAX_OBSERVATION_CHARS for name in ("observation", "error", "task")
        ]
        assert 0 < max(sizes) <= 2048 + 20


def test_args_are_nested_a_thousand_deep() -> None:
    args = msgpack.unpackb(fuzz.nested_1000(random.Random(1), "r"))["args"]
    depth = 0
    while args:
        args, depth = args["a"], depth + 1
    assert depth == fuzz.NEST_DEPTH


def test_poison_numbers_include_the_ones_that_once_broke_a_worker() -> None:
    rng = random.Random(1)
    seen = [msgpack.unpackb(fuzz.bad_numbers(rng, "r")) for _ in range(300)]
    assert any(s["tokens_in"] == 2**64 - 1 for s in seen)
    assert any(s["cost_usd"] == 1e308 for s in seen)


def test_the_loop_is_stopped_on_its_last_step_and_interleaving_keeps_each_runs_order() -> None:
    loop_ids, ok_ids, placed = fuzz.valid_traffic("c", 4, seed=1)
    order = fuzz.interleave(placed, fuzz.hostile_messages(500, seed=1, phase="h", targets=TARGETS))
    valid = [codec.decode(StepEvent, m.data) for m in order if m.kind == "valid"]
    assert len(valid) == len(placed)
    for run_id in loop_ids + ok_ids:
        seqs = [e.seq for e in valid if e.run_id == run_id]
        assert seqs == sorted(seqs)
    engine = Engine()
    verdicts = [v for i, e in enumerate(valid) for v in engine.observe(e, 1000.0 + i * 1e-3)]
    stops = {v.run_id: v.at_seq for v in verdicts if v.severity == "stop"}
    assert stops == dict.fromkeys(loop_ids, 3 * fuzz.LOOP_REPEATS - 1)


def test_log_summary_counts_levels_and_sets_decisions_apart() -> None:
    text = (
        "2026-01-01 10:00:00,001 WARNING runvisor.actors.supervisor._decide: stop: find_file repeated run_id=r\n"
        "2026-01-01 10:00:00,002 WARNING runvisor.actors.supervisor.worker: 12 step(s) rejected since ...\n"
        "2026-01-01 10:00:00,003 ERROR runvisor: boom\n"
        "Traceback (most recent call last):\n"
        "2026-01-01 10:00:00,004 INFO runvisor: fine\n"
    )
    summary = fuzz.log_summary(text)
    assert (summary["warning"], summary["error"], summary["decision_lines"], summary["tracebacks"]) == (2, 1, 1, 1)
    assert summary["other_lines"] == {"N step(s) rejected since ...": 1, "boom": 1}


def test_run_categories() -> None:
    names = ["h-loop-3", "c-ok-12", "h-v7", "h-u99", "h-b5", "zzz"]
    assert [run_category(n) for n in names] == ["loop", "healthy", "victim", "unknown", "burst", "other"]
