"""Finagle-style retry budget: reserve, earned retries, withdrawal and TTL expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.retry import BudgetPolicy, RetryBudget, withdraw_all


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_reserve_is_floor_of_rate_times_ttl() -> None:
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=0.2, min_retries_per_s=0.25, clock=FakeClock())
    assert budget.balance() == 2  # floor(0.25 * 10)


def test_requests_earn_a_share_of_a_retry_each() -> None:
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=0.2, min_retries_per_s=0.0, clock=FakeClock())
    for _ in range(4):
        budget.deposit()
    assert budget.balance() == 0  # 4 * 0.2 = 0.8 of a retry
    budget.deposit()
    assert budget.balance() == 1


def test_withdrawals_exhaust_the_budget() -> None:
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=0.5, min_retries_per_s=0.1, clock=FakeClock())
    for _ in range(4):
        budget.deposit()
    assert budget.balance() == 3  # 1 reserve + 4 * 0.5
    assert [budget.try_withdraw() for _ in range(4)] == [True, True, True, False]
    assert budget.balance() == 0


def test_zero_percent_and_zero_floor_never_retries() -> None:
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=0.0, min_retries_per_s=0.0, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert not budget.try_withdraw()


def test_deposits_expire_after_the_ttl() -> None:
    clock = FakeClock(0.5)
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=1.0, min_retries_per_s=0.0, clock=clock)
    budget.deposit()
    budget.deposit()
    clock.now = 9.9  # still inside the TTL of deposits made at 0.5
    assert budget.balance() == 2
    clock.now = 10.5  # a full TTL later
    assert budget.balance() == 0
    assert not budget.try_withdraw()


def test_deposits_expire_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ttl_s=5.0, percent_can_retry=1.0, min_retries_per_s=0.0, clock=clock)
    for _ in range(5):
        budget.deposit()
        clock.advance(1.0)
    # Deposits made at 0..4; now 5.0: the one at 0 is gone.
    assert budget.balance() == 4
    clock.advance(2.0)
    assert budget.balance() == 2


def test_withdrawals_expire_too_so_the_reserve_comes_back() -> None:
    clock = FakeClock()
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=0.2, min_retries_per_s=0.2, clock=clock)
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    clock.advance(10.0)
    assert budget.balance() == 2


def test_long_idle_gap_clears_everything() -> None:
    clock = FakeClock()
    budget = RetryBudget(ttl_s=3.0, percent_can_retry=1.0, min_retries_per_s=0.0, clock=clock)
    budget.deposit()
    clock.advance(1e9)
    assert budget.balance() == 0
    budget.deposit()
    assert budget.balance() == 1


def test_clock_stepping_back_does_not_corrupt_the_count() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(ttl_s=10.0, percent_can_retry=1.0, min_retries_per_s=0.0, clock=clock)
    budget.deposit()
    clock.now = 50.0
    budget.deposit()
    assert budget.balance() == 2


def test_memory_is_bounded_for_a_long_ttl() -> None:
    budget = RetryBudget(ttl_s=3600.0, bucket_s=0.001, clock=FakeClock())
    assert len(budget._ring) <= 4096


def test_from_policy_uses_its_fields() -> None:
    policy = BudgetPolicy(ttl_s=20.0, percent_can_retry=0.1, min_retries_per_s=0.5)
    budget = RetryBudget.from_policy(policy, clock=FakeClock(), name="tool:search")
    assert budget.balance() == 10
    assert budget.name == "tool:search"


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ttl_s=0.0, clock=FakeClock())


def test_withdraw_all_takes_from_every_budget_or_from_none() -> None:
    clock = FakeClock()
    run = RetryBudget(ttl_s=10.0, percent_can_retry=0.0, min_retries_per_s=0.3, clock=clock, name="run")
    tool = RetryBudget(ttl_s=10.0, percent_can_retry=0.0, min_retries_per_s=0.1, clock=clock, name="tool")
    assert withdraw_all([run, tool]) is None
    assert (run.balance(), tool.balance()) == (2, 0)
    assert withdraw_all([run, tool]) is tool
    assert run.balance() == 2  # the run's budget was not charged for a refused retry


@given(
    ops=st.lists(st.tuples(st.sampled_from(["deposit", "withdraw"]), st.floats(0, 3, allow_nan=False)), max_size=200)
)
def test_balance_matches_a_naive_model_of_live_entries(ops: list[tuple[str, float]]) -> None:
    # Bucket boundaries sit on whole seconds, so a naive model can tell which entries are live.
    ttl, percent, floor = 5.0, 0.5, 1
    clock = FakeClock(0.0)
    budget = RetryBudget(ttl_s=ttl, percent_can_retry=percent, min_retries_per_s=floor / ttl, clock=clock)
    entries: list[tuple[float, int]] = []  # (bucket start, units of 1/1000 retry)

    def live_units() -> int:
        start = int(clock.now) - int(ttl) + 1
        return floor * 1000 + sum(units for at, units in entries if at >= start)

    for op, step in ops:
        clock.advance(step)
        if op == "deposit":
            budget.deposit()
            entries.append((int(clock.now), 500))
        else:
            expected = live_units() >= 1000
            assert budget.try_withdraw() is expected
            if expected:
                entries.append((int(clock.now), -1000))
        assert budget.balance() == max(0, live_units() // 1000)
