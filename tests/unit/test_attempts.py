"""The retry planner: Done, RetryAfter or GiveUp after each attempt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.retry import (
    Admission,
    Backoff,
    Breaker,
    BreakerPolicy,
    BreakerState,
    DefaultClassifier,
    Done,
    GiveUp,
    Outcome,
    RateLimited,
    RetryAfter,
    RetryBudget,
    RetryPlanner,
    ToolPolicy,
    TransientError,
    admit,
    is_retryable,
    plan,
)
from runvisor.protocols.reasons import StopReason

HALF = Backoff(1.0, 2.0, 30.0, rng=lambda: 0.5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(retries: int = 100, *, percent: float = 0.0, name: str = "") -> RetryBudget:
    return RetryBudget(
        ttl_s=10.0, percent_can_retry=percent, min_retries_per_s=retries / 10.0, clock=FakeClock(), name=name
    )


def test_success_is_done_with_the_value() -> None:
    assert plan(ToolPolicy(), 1, Outcome.success({"rows": 3}), backoff=HALF) == Done({"rows": 3})


def test_retryable_error_retries_after_a_growing_backoff() -> None:
    policy = ToolPolicy(max_attempts=4)
    outcome = Outcome.from_exception(TimeoutError())
    delays = [plan(policy, k, outcome, backoff=HALF, budgets=[budget()]) for k in (1, 2, 3)]
    assert delays == [RetryAfter(0.5), RetryAfter(1.0), RetryAfter(2.0)]


def test_non_retryable_error_is_never_retried() -> None:
    # Given plenty of attempts and budget, a ValueError still ends the call at once.
    run_budget = budget()
    decision = plan(
        ToolPolicy(max_attempts=10), 1, Outcome.from_exception(ValueError("bad id")), backoff=HALF, budgets=[run_budget]
    )
    assert decision == GiveUp(StopReason.TOOL_FAILURE, "ValueError: bad id (not retryable)", "ValueError")
    assert run_budget.balance() == 100  # no token spent


def test_subclasses_of_retryable_types_are_retried() -> None:
    policy = ToolPolicy()
    assert is_retryable(policy, Outcome.from_exception(ConnectionResetError()))
    assert is_retryable(policy, Outcome.from_exception(RateLimited()))
    assert is_retryable(policy, Outcome.failure("TransientError"))
    assert not is_retryable(policy, Outcome.from_exception(FileNotFoundError()))


def test_custom_retryable_types() -> None:
    policy = ToolPolicy(retryable_error_types=frozenset({"KeyError"}))
    assert is_retryable(policy, Outcome.from_exception(KeyError("k")))
    assert not is_retryable(policy, Outcome.from_exception(TimeoutError()))


def test_attempts_exhausted_is_retry_limit_reached() -> None:
    decision = plan(ToolPolicy(max_attempts=3), 3, Outcome.failure("TimeoutError", "slow"), backoff=HALF)
    assert isinstance(decision, GiveUp)
    assert decision.stop_reason is StopReason.RETRY_LIMIT_REACHED
    assert decision.error_type == "TimeoutError"
    assert "after 3 attempts" in decision.message


def test_single_attempt_policy_never_retries() -> None:
    decision = plan(ToolPolicy(max_attempts=1), 1, Outcome.failure("TimeoutError"), backoff=HALF)
    assert isinstance(decision, GiveUp)
    assert decision.stop_reason is StopReason.RETRY_LIMIT_REACHED


def test_exhausted_budget_is_retry_limit_reached_and_charges_no_other_budget() -> None:
    run_budget, tool_budget = budget(5, name="run"), budget(1, name="tool:search")
    policy = ToolPolicy(max_attempts=10)
    outcome = Outcome.failure("ConnectionError")
    assert plan(policy, 1, outcome, backoff=HALF, budgets=[run_budget, tool_budget]) == RetryAfter(0.5)
    decision = plan(policy, 2, outcome, backoff=HALF, budgets=[run_budget, tool_budget])
    assert decision == GiveUp(
        StopReason.RETRY_LIMIT_REACHED, "ConnectionError (retry budget 'tool:search' exhausted)", "ConnectionError"
    )
    assert run_budget.balance() == 4


def test_budget_earned_by_requests_allows_retries() -> None:
    planner = RetryPlanner(ToolPolicy(max_attempts=5), HALF, [budget(0, percent=0.5)])
    outcome = Outcome.failure("TimeoutError")
    planner.begin()
    assert isinstance(planner.plan(1, outcome), GiveUp)  # half a retry earned
    planner.begin()
    assert planner.plan(1, outcome) == RetryAfter(0.5)


def test_hidden_failure_is_treated_like_a_raised_one() -> None:
    classifier = DefaultClassifier()
    transient = Outcome.from_value({"status_code": 503, "detail": "busy"}, classifier)
    assert transient.hidden
    assert plan(ToolPolicy(), 1, transient, backoff=HALF, budgets=[budget()]) == RetryAfter(0.5)
    broken = Outcome.from_value("Error: no such table", classifier)
    decision = plan(ToolPolicy(), 1, broken, backoff=HALF)
    assert isinstance(decision, GiveUp)
    assert decision.stop_reason is StopReason.TOOL_FAILURE
    assert decision.error_type == "ErrorMessage"


def test_real_value_is_done() -> None:
    outcome = Outcome.from_value("0 errors found", DefaultClassifier())
    assert plan(ToolPolicy(), 1, outcome, backoff=HALF) == Done("0 errors found")


def test_non_idempotent_tool_is_not_retried_after_it_may_have_run() -> None:
    policy = ToolPolicy(idempotent=False)
    decision = plan(policy, 1, Outcome.from_exception(TimeoutError()), backoff=HALF, budgets=[budget()])
    assert isinstance(decision, GiveUp)
    assert decision.stop_reason is StopReason.TOOL_FAILURE
    assert "not idempotent" in decision.message


def test_non_idempotent_tool_is_retried_when_refused_before_running() -> None:
    policy = ToolPolicy(idempotent=False)
    decision = plan(policy, 1, Outcome.from_exception(RateLimited()), backoff=HALF, budgets=[budget()])
    assert decision == RetryAfter(0.5)


def test_rate_limit_hint_lengthens_the_delay() -> None:
    outcome = Outcome.from_exception(RateLimited("slow down", retry_after_s=7.0))
    assert plan(ToolPolicy(), 1, outcome, backoff=HALF) == RetryAfter(7.0)


def test_no_retry_past_the_deadline_and_no_token_spent() -> None:
    run_budget = budget()
    decision = plan(
        ToolPolicy(), 1, Outcome.failure("TimeoutError"), backoff=HALF, budgets=[run_budget], remaining_s=0.4
    )
    assert isinstance(decision, GiveUp)
    assert decision.stop_reason is StopReason.RETRY_LIMIT_REACHED
    assert run_budget.balance() == 100


def test_open_breaker_gives_up_with_retry_at() -> None:
    breaker = Breaker(BreakerPolicy(window=4, min_calls=2, open_s=30.0))
    state = BreakerState()
    for _ in range(2):
        state = breaker.record(state, False, 100.0)
    stop = admit(breaker.allow(state, 110.0))
    assert stop is not None
    assert (stop.stop_reason, stop.error_type, stop.retry_at) == (StopReason.TOOL_FAILURE, "CircuitOpen", 130.0)
    assert stop.retry_after_s(110.0) == 20.0
    assert stop.retry_after_s(200.0) == 0.0


def test_allowed_admission_lets_the_attempt_run() -> None:
    assert admit(Admission(True, None, BreakerState())) is None
    assert RetryPlanner(ToolPolicy(), HALF).admit(Admission(True, None, BreakerState())) is None


def test_executor_loop_over_pure_decisions() -> None:
    # Given a tool that fails twice with transient errors and then answers
    results: list[object] = [TransientError("flaky"), TimeoutError(), {"rows": 1}]
    planner = RetryPlanner(ToolPolicy(max_attempts=5), Backoff(1.0, 2.0, 30.0, rng=lambda: 0.0), [budget()])
    planner.begin()
    decisions = []
    for attempt, result in enumerate(results, start=1):
        outcome = (
            Outcome.from_exception(result)
            if isinstance(result, BaseException)
            else Outcome.from_value(result, DefaultClassifier())
        )
        decisions.append(planner.plan(attempt, outcome))
    # Then it waits (zero delay in tests) twice and returns the value
    assert decisions == [RetryAfter(0.0), RetryAfter(0.0), Done({"rows": 1})]


@given(
    attempt=st.integers(1, 20),
    max_attempts=st.integers(1, 20),
    error=st.sampled_from(["TimeoutError", "ValueError", "RateLimited", "KeyError", "TransientError"]),
    retries=st.integers(0, 5),
)
def test_planner_invariants(attempt: int, max_attempts: int, error: str, retries: int) -> None:
    policy = ToolPolicy(max_attempts=max_attempts)
    run_budget = budget(retries)
    decision = plan(policy, attempt, Outcome.failure(error), backoff=HALF, budgets=[run_budget])
    if error not in policy.retryable_error_types:
        assert decision == GiveUp(StopReason.TOOL_FAILURE, f"{error} (not retryable)", error)
    elif attempt >= max_attempts or retries == 0:
        assert isinstance(decision, GiveUp)
        assert decision.stop_reason is StopReason.RETRY_LIMIT_REACHED
    else:
        assert isinstance(decision, RetryAfter)
        assert 0.0 <= decision.delay_s <= HALF.ceiling(attempt - 1)
        assert run_budget.balance() == retries - 1


@pytest.mark.parametrize("reason", [StopReason.TOOL_FAILURE, StopReason.RETRY_LIMIT_REACHED])
def test_give_up_without_breaker_has_no_retry_after(reason: StopReason) -> None:
    assert GiveUp(reason, "x").retry_after_s(5.0) is None
