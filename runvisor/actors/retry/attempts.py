"""The retry planner: what the executor does after each attempt (DESIGN §7).

The async executor stays a thin shell: it asks ``admit`` before an attempt, runs the
tool, and asks ``plan`` what next; all the deciding happens here, without I/O::

    planner.begin()                                    # once per call: budget deposits
    for attempt in itertools.count(1):
        if (stop := planner.admit(breaker.allow(state, now))) is not None:
            return stop                                # breaker open: TOOL_FAILURE, retry_at
        outcome = ...                                  # Outcome.from_value / from_exception
        match planner.plan(attempt, outcome):
            case Done(value): ...
            case RetryAfter(delay_s): await sleep(delay_s)
            case GiveUp() as stop: ...

``asyncio.CancelledError`` (pause, kill) is never an outcome: the executor lets it propagate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runvisor.actors.retry.backoff import Backoff
from runvisor.actors.retry.breaker import Admission
from runvisor.actors.retry.budget import RetryBudget, withdraw_all
from runvisor.actors.retry.outcome import Outcome
from runvisor.actors.retry.policy import ToolPolicy
from runvisor.protocols.reasons import StopReason


@dataclass(frozen=True, slots=True)
class Done:
    """The attempt succeeded; ``result`` is the tool's value."""

    result: object


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Wait ``delay_s`` seconds, then make the next attempt."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the call with ``stop_reason`` (goes into ``ToolResult``).

    Attributes:
        stop_reason: ``TOOL_FAILURE`` (not retryable, breaker open) or ``RETRY_LIMIT_REACHED``.
        message: For ``ToolResult.error``.
        error_type: The last failure's type, for ``ToolResult.error_type``.
        retry_at: Clock time when the tool's breaker lets calls through again, if open.
    """

    stop_reason: StopReason
    message: str
    error_type: str | None = None
    retry_at: float | None = None

    def retry_after_s(self, now: float) -> float | None:
        """``retry_at`` as seconds from ``now``, for ``ToolResult.retry_after_s``."""
        return None if self.retry_at is None else max(0.0, self.retry_at - now)


Decision = Done | RetryAfter | GiveUp


def is_retryable(policy: ToolPolicy, outcome: Outcome) -> bool:
    """Whether the policy allows retrying this failure at all (ignoring counts and budgets)."""
    kinds = outcome.error_types or ((outcome.error_type,) if outcome.error_type else ())
    if not any(kind in policy.retryable_error_types for kind in kinds):
        return False
    # A non-idempotent tool may have done its effect before failing; only repeat what proves it did not.
    return policy.idempotent or any(kind in policy.safe_to_repeat_error_types for kind in kinds)


def admit(admission: Admission) -> GiveUp | None:
    """Turn a breaker's refusal into the call's end; ``None`` lets the attempt run."""
    if admission.allowed:
        return None
    return GiveUp(
        StopReason.TOOL_FAILURE,
        "circuit breaker open: the tool has been failing; calls are refused until it recovers",
        error_type="CircuitOpen",
        retry_at=admission.retry_at,
    )


def plan(
    policy: ToolPolicy,
    attempt: int,
    outcome: Outcome,
    *,
    backoff: Backoff,
    budgets: Sequence[RetryBudget] = (),
    remaining_s: float | None = None,
) -> Decision:
    """Decide what follows attempt ``attempt`` (1 for the first).

    Args:
        policy: The tool's policy.
        attempt: The attempt that produced ``outcome``, counting from 1.
        outcome: Its result.
        backoff: Source of the delay before the next attempt.
        budgets: Retry budgets that must all pay for a retry (the run's and the tool's).
        remaining_s: Time left before the caller's deadline, if any; a retry that could
            not start before it is not worth a budget token.

    Returns:
        ``Done``, ``RetryAfter`` (a budget token is spent) or ``GiveUp``.
    """
    if outcome.ok:
        return Done(outcome.value)
    what = f"{outcome.error_type or 'Error'}: {outcome.message}" if outcome.message else outcome.error_type or "Error"
    if not is_retryable(policy, outcome):
        why = "not retryable" if policy.idempotent else "not retried: the tool is not idempotent"
        return GiveUp(StopReason.TOOL_FAILURE, f"{what} ({why})", outcome.error_type)
    if attempt >= policy.max_attempts:
        return GiveUp(StopReason.RETRY_LIMIT_REACHED, f"{what} (gave up after {attempt} attempts)", outcome.error_type)
    delay = backoff.delay(attempt - 1)
    if outcome.retry_after_s is not None:
        # The tool's own hint wins over a shorter jittered delay: retrying sooner is refused anyway.
        delay = max(delay, outcome.retry_after_s)
    if remaining_s is not None and delay >= remaining_s:
        return GiveUp(
            StopReason.RETRY_LIMIT_REACHED,
            f"{what} (no time left for attempt {attempt + 1}: next in {delay:.2f}s, deadline in {remaining_s:.2f}s)",
            outcome.error_type,
        )
    exhausted = withdraw_all(budgets)
    if exhausted is not None:
        label = f" {exhausted.name!r}" if exhausted.name else ""
        return GiveUp(StopReason.RETRY_LIMIT_REACHED, f"{what} (retry budget{label} exhausted)", outcome.error_type)
    return RetryAfter(delay)


class RetryPlanner:
    """``admit`` and ``plan`` bound to one call's policy, backoff and budgets.

    Args:
        policy: The tool's policy.
        backoff: Usually ``Backoff.from_policy(policy.backoff)``, shared by the tool's calls.
        budgets: The run's and the tool's retry budgets.
    """

    __slots__ = ("backoff", "budgets", "policy")

    def __init__(self, policy: ToolPolicy, backoff: Backoff, budgets: Sequence[RetryBudget] = ()) -> None:
        self.policy = policy
        self.backoff = backoff
        self.budgets = tuple(budgets)

    def begin(self) -> None:
        """Deposit this call in every budget; once per call, never per attempt."""
        for budget in self.budgets:
            budget.deposit()

    def admit(self, admission: Admission) -> GiveUp | None:
        """See ``admit``."""
        return admit(admission)

    def plan(self, attempt: int, outcome: Outcome, *, remaining_s: float | None = None) -> Decision:
        """See ``plan``."""
        return plan(self.policy, attempt, outcome, backoff=self.backoff, budgets=self.budgets, remaining_s=remaining_s)
