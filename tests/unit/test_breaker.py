"""Circuit breaker: pure transitions over a serializable state shared through CAS."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from runvisor.actors.retry import Admission, Breaker, BreakerPolicy, BreakerState, BreakerStatus

POLICY = BreakerPolicy(window=10, failure_rate=0.5, min_calls=4, open_s=30.0, half_open_probes=2)


def record_all(breaker: Breaker, state: BreakerState, outcomes: list[bool], now: float = 0.0) -> BreakerState:
    for ok in outcomes:
        state = breaker.record(state, ok, now)
    return state


def open_breaker(breaker: Breaker, now: float = 100.0) -> BreakerState:
    state = record_all(breaker, BreakerState(), [False] * POLICY.min_calls, now)
    assert state.status is BreakerStatus.OPEN
    return state


def test_closed_breaker_allows_and_needs_no_write() -> None:
    admission = Breaker(POLICY).allow(BreakerState(), 0.0)
    assert admission == Admission(True, None, BreakerState(), changed=False)


def test_failures_below_min_calls_do_not_open() -> None:
    state = record_all(Breaker(POLICY), BreakerState(), [False] * (POLICY.min_calls - 1))
    assert state.status is BreakerStatus.CLOSED
    assert state.count == 3


def test_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    breaker = Breaker(POLICY)
    state = record_all(breaker, BreakerState(), [True, True, True, False, False])
    assert state.status is BreakerStatus.CLOSED  # 2 of 5 failed
    state = breaker.record(state, False, 42.0)  # 3 of 6: at the threshold
    assert state.status is BreakerStatus.OPEN
    assert state.opened_at == 42.0


def test_rate_below_threshold_stays_closed() -> None:
    state = record_all(Breaker(POLICY), BreakerState(), [True, True, True, False, True, True, False, True, True, True])
    assert state.status is BreakerStatus.CLOSED


def test_fractional_threshold_trips_exactly_at_the_rate() -> None:
    # 3 of 10 is 0.3; a multiplied threshold (0.3 * 10 = 3.0000000000000004) would miss it.
    breaker = Breaker(BreakerPolicy(window=10, failure_rate=0.3, min_calls=10))
    state = record_all(breaker, BreakerState(), [True] * 7 + [False] * 2)
    assert breaker.record(state, False, 0.0).status is BreakerStatus.OPEN


def test_window_forgets_outcomes_older_than_n() -> None:
    breaker = Breaker(BreakerPolicy(window=4, failure_rate=0.75, min_calls=4))
    state = record_all(breaker, BreakerState(), [False, False, True, True])  # 2 of 4
    state = record_all(breaker, state, [True, True])  # the failures slide out
    assert (state.count, state.failures.bit_count()) == (4, 0)
    state = record_all(breaker, state, [False, False])
    assert state.status is BreakerStatus.CLOSED
    assert breaker.record(state, False, 0.0).status is BreakerStatus.OPEN


def test_open_breaker_fails_fast_with_retry_at() -> None:
    breaker = Breaker(POLICY)
    state = open_breaker(breaker, now=100.0)
    admission = breaker.allow(state, 110.0)
    assert not admission.allowed
    assert admission.retry_at == 130.0
    assert admission.state == state
    assert not admission.changed
    assert breaker.retry_at(state) == 130.0


def test_outcomes_while_open_do_not_extend_it() -> None:
    breaker = Breaker(POLICY)
    state = open_breaker(breaker, now=100.0)
    assert breaker.record(state, False, 120.0) == state
    assert breaker.record(state, True, 120.0) == state


def test_half_open_after_open_s_admits_a_limited_number_of_probes() -> None:
    breaker = Breaker(POLICY)
    state = open_breaker(breaker, now=100.0)
    first = breaker.allow(state, 130.0)
    assert first.allowed
    assert first.changed
    assert first.state.status is BreakerStatus.HALF_OPEN
    second = breaker.allow(first.state, 131.0)
    assert second.allowed
    third = breaker.allow(second.state, 132.0)
    assert not third.allowed
    assert third.retry_at == 131.0 + POLICY.open_s


def test_lost_probes_free_their_slots_after_open_s() -> None:
    breaker = Breaker(BreakerPolicy(window=10, min_calls=4, open_s=30.0, half_open_probes=1))
    state = open_breaker(breaker, now=100.0)
    probing = breaker.allow(state, 130.0).state
    assert not breaker.allow(probing, 159.0).allowed
    # The probe's replica died: nobody records its outcome, yet the breaker is not stuck.
    assert breaker.allow(probing, 160.0).allowed


def test_probe_success_closes_with_a_fresh_window() -> None:
    breaker = Breaker(POLICY)
    admission = breaker.allow(open_breaker(breaker), 130.0)
    closed = breaker.record(admission.state, True, 131.0, generation=admission.generation)
    assert closed.status is BreakerStatus.CLOSED
    assert (closed.count, closed.failures) == (0, 0)
    assert breaker.allow(closed, 131.0).allowed


def test_probe_failure_reopens_from_now() -> None:
    breaker = Breaker(POLICY)
    admission = breaker.allow(open_breaker(breaker), 130.0)
    reopened = breaker.record(admission.state, False, 135.0, generation=admission.generation)
    assert reopened.status is BreakerStatus.OPEN
    assert breaker.allow(reopened, 150.0).retry_at == 165.0


def test_straggler_from_before_opening_is_not_taken_for_a_probe() -> None:
    breaker = Breaker(POLICY)
    closed_admission = breaker.allow(BreakerState(), 0.0)  # a slow call admitted while closed
    state = open_breaker(breaker, now=100.0)
    probing = breaker.allow(state, 130.0).state
    after = breaker.record(probing, True, 131.0, generation=closed_admission.generation)
    assert after == probing


def test_snapshot_round_trips_through_dict_and_msgpack() -> None:
    breaker = Breaker(POLICY)
    state = breaker.allow(open_breaker(breaker), 130.0).state
    wire = msgpack.packb(state.to_dict())
    assert BreakerState.from_dict(msgpack.unpackb(wire)) == state
    assert state.to_dict()["status"] == "half_open"


def test_corrupt_snapshot_is_refused() -> None:
    with pytest.raises(ValidationError):
        BreakerState.from_dict({"status": "ajar"})
    with pytest.raises(ValidationError):
        BreakerState.from_dict({"count": 65})


def test_unknown_snapshot_fields_are_ignored_for_newer_writers() -> None:
    assert BreakerState.from_dict({"status": "closed", "added_later": 1}) == BreakerState()


def test_policy_refuses_a_window_shorter_than_min_calls() -> None:
    with pytest.raises(ValidationError, match="min_calls"):
        BreakerPolicy(window=5, min_calls=6)


class FakeKV:
    """A one-key bucket with revisions, like a NATS KV update(last=revision)."""

    def __init__(self, state: BreakerState) -> None:
        self.value = state.to_dict()
        self.revision = 1

    def load(self) -> tuple[BreakerState, int]:
        return BreakerState.from_dict(self.value), self.revision

    def cas(self, state: BreakerState, revision: int) -> bool:
        if revision != self.revision:
            return False
        self.value, self.revision = state.to_dict(), revision + 1
        return True


def test_lost_cas_retried_on_the_reloaded_state_keeps_both_outcomes() -> None:
    # Given two replicas that loaded the same snapshot
    breaker = Breaker(POLICY)
    kv = FakeKV(record_all(breaker, BreakerState(), [True, True, True, False]))
    state_a, rev_a = kv.load()
    state_b, rev_b = kv.load()
    # When both record a failure and A wins the CAS
    assert kv.cas(breaker.record(state_a, False, 10.0), rev_a)
    assert not kv.cas(breaker.record(state_b, False, 10.0), rev_b)
    # Then B recomputes on the reloaded state, and the result is the serial order A, B
    reloaded, rev = kv.load()
    assert kv.cas(breaker.record(reloaded, False, 10.0), rev)
    serial = record_all(breaker, BreakerState(), [True, True, True, False, False, False], 10.0)
    assert kv.load()[0] == serial
    assert serial.status is BreakerStatus.OPEN  # 3 of 6: both failures counted


def test_blind_overwrite_would_lose_an_outcome() -> None:
    # The reason for CAS: B writing its stale computation drops A's failure.
    breaker = Breaker(POLICY)
    base = record_all(breaker, BreakerState(), [True, True, True, False])
    a = breaker.record(base, False, 10.0)
    b = breaker.record(base, False, 10.0)
    assert a == b
    assert b.status is BreakerStatus.CLOSED  # 2 of 5 counted, though 3 of 6 happened


def test_two_replicas_racing_for_the_last_probe_slot() -> None:
    breaker = Breaker(BreakerPolicy(window=10, min_calls=4, open_s=30.0, half_open_probes=1))
    kv = FakeKV(open_breaker(breaker, now=100.0))
    (state_a, rev_a), (state_b, rev_b) = kv.load(), kv.load()
    admit_a, admit_b = breaker.allow(state_a, 130.0), breaker.allow(state_b, 130.0)
    # Each thinks it holds the only probe slot.
    assert admit_a.allowed
    assert admit_b.allowed
    assert kv.cas(admit_a.state, rev_a)
    assert not kv.cas(admit_b.state, rev_b)
    # B reloads and asks again: the only probe slot is taken, so B fails fast.
    reloaded, _ = kv.load()
    assert not breaker.allow(reloaded, 130.0).allowed


@given(outcomes=st.lists(st.tuples(st.booleans(), st.floats(0, 1e6, allow_nan=False)), max_size=100))
def test_record_and_allow_are_deterministic_and_keep_the_window_bounded(outcomes: list[tuple[bool, float]]) -> None:
    breaker = Breaker(POLICY)
    state = BreakerState()
    for ok, now in outcomes:
        admission = breaker.allow(state, now)
        assert admission == breaker.allow(state, now)
        nxt = breaker.record(admission.state, ok, now, generation=admission.generation)
        assert nxt == breaker.record(admission.state, ok, now, generation=admission.generation)
        state = nxt
        assert state.count <= POLICY.window
        assert state.failures < 1 << POLICY.window
        assert BreakerState.from_dict(msgpack.unpackb(msgpack.packb(state.to_dict()))) == state
