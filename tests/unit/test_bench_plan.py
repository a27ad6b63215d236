"""The replay harness's own logic: ordering, speed scaling, namespacing, latency."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.plan import Latencies, Namespace, at_rate, decision_record, paced, percentiles, renamed
from runvisor.protocols.messages import Command, Evidence, StepEvent
from runvisor.protocols.reasons import StopReason


def ev(run: str, seq: int, ts: float) -> StepEvent:
    return StepEvent(run_id=run, seq=seq, ts=ts, kind="llm")


def test_runs_recorded_one_after_another_interleave_by_time() -> None:
    events = [ev("a", 0, 100.0), ev("a", 1, 101.0), ev("b", 0, 100.5), ev("b", 1, 101.5)]
    assert [(e.run_id, e.seq) for _, e in paced(events, 1.0)] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


def test_speed_divides_the_recorded_gaps() -> None:
    events = [ev("a", 0, 100.0), ev("a", 1, 110.0), ev("a", 2, 130.0)]
    assert [offset for offset, _ in paced(events, 10.0)] == [0.0, 1.0, 3.0]


def test_a_run_never_goes_back_in_time_even_with_clock_skew() -> None:
    events = [ev("a", 0, 100.0), ev("a", 1, 99.0), ev("b", 0, 99.5)]
    order = [(e.run_id, e.seq) for _, e in paced(events, 1.0)]
    assert order.index(("a", 0)) < order.index(("a", 1))


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 1000)), max_size=60), st.floats(0.1, 1000))
def test_paced_preserves_each_runs_order(spec: list[tuple[str, float]], speed: float) -> None:
    seqs: dict[str, int] = {}
    events = []
    for run, ts in spec:
        seqs[run] = seqs.get(run, -1) + 1
        events.append(ev(run, seqs[run], ts))
    out = list(paced(events, speed))
    assert len(out) == len(events)
    offsets = [o for o, _ in out]
    assert offsets == sorted(offsets)
    for run, last in seqs.items():
        assert [e.seq for _, e in out if e.run_id == run] == list(range(last + 1))


def test_rate_spaces_events_evenly() -> None:
    assert [o for o, _ in at_rate([ev("a", i, 0.0) for i in range(4)], 2.0)] == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_speed_or_rate_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        list(paced([ev("a", 0, 1.0)], bad))
    with pytest.raises(ValueError, match="must be > 0"):
        list(at_rate([ev("a", 0, 1.0)], bad))


def test_namespace_gives_fresh_ids_and_maps_back() -> None:
    first, second = Namespace("n1"), Namespace("n2")
    a1, a2 = renamed(ev("run-7", 0, 0.0), first), renamed(ev("run-7", 0, 0.0), second)
    assert a1.run_id != a2.run_id
    assert first.back(a1.run_id) == "run-7"
    assert first.back(a2.run_id) is None, "another replay's run is not ours"


def test_namespace_keeps_long_ids_within_one_subject_token() -> None:
    ns = Namespace("abcd1234")
    long_id = "x" * 128
    renamed_event = renamed(ev(long_id, 0, 0.0), ns)  # validated as a StepEvent: still a legal run_id
    assert len(renamed_event.run_id) <= 128
    assert ns.back(renamed_event.run_id) == long_id


def test_latency_pairs_a_command_with_its_offending_event() -> None:
    lat = Latencies()
    lat.sent("r", 41, 10.0)
    lat.arrived("r", 41, 10.004)
    lat.arrived("r", 99, 11.0)  # no such publish: ignored
    lat.arrived("r", None, 11.0)  # an operator's command: ignored
    assert lat.delays_ms == pytest.approx([4.0])


def test_percentiles() -> None:
    assert percentiles([]) == [None, None]
    assert percentiles([float(i) for i in range(101)]) == pytest.approx([50.0, 99.0])


def test_decision_record_is_what_bench_score_reads() -> None:
    command = Command(
        cmd="stop", reason=StopReason.LOOP_DETECTED, issuer="supervisor:w", at_seq=41,
        evidence=Evidence(summary="seq 35-41: x3", seqs=(35, 38, 41)),
    )  # fmt: skip
    assert decision_record(command, "run-7") == {
        "run_id": "run-7", "reason": "LOOP_DETECTED", "at_seq": 41, "severity": "stop",
        "evidence": "seq 35-41: x3", "seqs": [35, 38, 41],
    }  # fmt: skip
