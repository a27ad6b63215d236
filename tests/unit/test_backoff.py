"""Exponential backoff with full jitter: bounds, growth, determinism."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.retry import Backoff, BackoffPolicy


def test_ceiling_grows_exponentially_until_the_cap() -> None:
    backoff = Backoff(0.5, 2.0, 10.0, rng=lambda: 0.5)
    assert [backoff.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_delay_is_the_ceiling_scaled_by_the_injected_uniform() -> None:
    backoff = Backoff(1.0, 3.0, 100.0, rng=lambda: 0.25)
    assert [backoff.delay(n) for n in range(4)] == [0.25, 0.75, 2.25, 6.75]


def test_zero_uniform_gives_zero_delays_for_tests() -> None:
    backoff = Backoff(1.0, 2.0, 60.0, rng=lambda: 0.0)
    assert all(backoff.delay(n) == 0.0 for n in range(20))


def test_seeded_random_is_reproducible() -> None:
    first = Backoff(0.1, 2.0, 5.0, rng=random.Random(42))
    second = Backoff(0.1, 2.0, 5.0, rng=random.Random(42))
    assert [first.delay(n) for n in range(10)] == [second.delay(n) for n in range(10)]


def test_jitter_spreads_delays_over_the_whole_range() -> None:
    # Full jitter, not "equal" jitter: delays reach down near zero, not only the upper half.
    backoff = Backoff(1.0, 2.0, 8.0, rng=random.Random(7))
    delays = [backoff.delay(3) for _ in range(500)]
    assert min(delays) < 0.5
    assert max(delays) > 7.5


def test_huge_attempts_stay_at_the_cap_without_overflow() -> None:
    backoff = Backoff(1.0, 10.0, 30.0, rng=lambda: 0.999)
    assert backoff.ceiling(10_000) == 30.0
    assert backoff.delay(10_000) <= 30.0


def test_zero_base_never_waits() -> None:
    assert Backoff(0.0, 10.0, 30.0).ceiling(10_000) == 0.0


def test_uniform_outside_unit_interval_is_clamped() -> None:
    assert Backoff(1.0, 2.0, 10.0, rng=lambda: 1.5).delay(1) == 2.0
    assert Backoff(1.0, 2.0, 10.0, rng=lambda: -1.0).delay(1) == 0.0


def test_from_policy_uses_its_fields() -> None:
    backoff = Backoff.from_policy(BackoffPolicy(base_s=0.2, multiplier=3.0, cap_s=1.0), rng=lambda: 1.0)
    assert backoff.ceiling(0) == pytest.approx(0.2)
    assert backoff.ceiling(1) == pytest.approx(0.6)
    assert backoff.ceiling(2) == 1.0


@pytest.mark.parametrize(("base", "multiplier", "cap"), [(-1.0, 2.0, 1.0), (1.0, 0.5, 1.0), (1.0, 2.0, -1.0)])
def test_invalid_parameters_are_refused(base: float, multiplier: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, multiplier, cap)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(1.0, 2.0, 3.0).ceiling(-1)


@given(
    base=st.floats(0, 100, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 1000, allow_nan=False),
    attempt=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_delay_lies_within_zero_and_the_capped_ceiling(
    base: float, multiplier: float, cap: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(base, multiplier, cap, rng=random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert 0.0 <= ceiling <= cap
    assert 0.0 <= backoff.delay(attempt) <= ceiling


@given(
    base=st.floats(0.001, 100, allow_nan=False),
    multiplier=st.floats(1, 10, allow_nan=False),
    cap=st.floats(0, 1000, allow_nan=False),
    attempt=st.integers(0, 200),
)
def test_ceiling_never_shrinks(base: float, multiplier: float, cap: float, attempt: int) -> None:
    backoff = Backoff(base, multiplier, cap)
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)
