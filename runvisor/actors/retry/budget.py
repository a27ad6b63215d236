"""A retry budget in the style of Finagle's ``RetryBudget`` (DESIGN §7).

Each request deposits ``percent_can_retry`` of a retry and each retry withdraws one, so
retries stay a bounded share of traffic however hard a tool fails; a reserve of
``floor(min_retries_per_s * ttl_s)`` retries lets quiet callers retry at all. Deposits and
withdrawals are forgotten after ``ttl_s``, as in Finagle's leaky token bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from runvisor.actors.retry.policy import BudgetPolicy

#: Fixed-point units per retry, so fractional deposits (0.2 of a retry) add up exactly.
_SCALE = 1000
#: Most buckets kept, so memory stays bounded whatever the TTL.
_MAX_BUCKETS = 4096


class RetryBudget:
    """Retries allowed = floor(min_retries_per_s * ttl_s) + percent_can_retry * recent requests - recent retries.

    Time is cut into buckets of ``bucket_s`` seconds kept in a ring over the TTL, so memory
    is bounded and every call is O(1) amortized. A deposit is forgotten no later than
    ``ttl_s`` after it was made and no sooner than ``ttl_s - bucket_s``. A TTL over
    4096 buckets gets wider buckets instead.

    Not thread-safe: one event loop owns it, and ``try_withdraw`` never awaits.

    Args:
        ttl_s: How long a deposit or withdrawal counts.
        percent_can_retry: Share of a retry earned by each request (0.2: one retry per five).
        min_retries_per_s: Reserve rate; the reserve never expires.
        clock: Monotonic seconds, injected so tests drive time.
        bucket_s: Width of one time bucket.
        name: Label for messages ("run", "tool:search").
    """

    def __init__(
        self,
        ttl_s: float = 60.0,
        percent_can_retry: float = 0.2,
        min_retries_per_s: float = 0.1,
        *,
        clock: Callable[[], float] = time.monotonic,
        bucket_s: float = 1.0,
        name: str = "",
    ) -> None:
        if not (ttl_s > 0 and bucket_s > 0 and percent_can_retry >= 0 and min_retries_per_s >= 0):
            raise ValueError("need ttl_s > 0, bucket_s > 0, percent_can_retry >= 0, min_retries_per_s >= 0")
        self.name = name
        self.ttl_s = ttl_s
        self._clock = clock
        self._deposit = round(percent_can_retry * _SCALE)
        self._reserve = math.floor(min_retries_per_s * ttl_s) * _SCALE
        buckets = min(_MAX_BUCKETS, max(1, math.ceil(ttl_s / bucket_s)))
        # Buckets tile the TTL exactly, so an entry lives at most ttl_s (and one bucket less at least).
        self._width = ttl_s / buckets
        self._ring = [0] * buckets
        self._total = 0  # sum of the ring, kept so balance() is O(1)
        self._index = self._bucket_of(clock())

    @classmethod
    def from_policy(
        cls, policy: BudgetPolicy, *, clock: Callable[[], float] = time.monotonic, name: str = ""
    ) -> RetryBudget:
        """Build the budget a tool's policy describes."""
        return cls(policy.ttl_s, policy.percent_can_retry, policy.min_retries_per_s, clock=clock, name=name)

    def deposit(self) -> None:
        """Record one request (call once per tool call, not per attempt)."""
        self._add(self._deposit)

    def can_withdraw(self) -> bool:
        """Whether one retry is available now, without taking it."""
        self._advance()
        return self._reserve + self._total >= _SCALE

    def try_withdraw(self) -> bool:
        """Take one retry if available; ``False`` means the budget is exhausted."""
        if not self.can_withdraw():
            return False
        self._add(-_SCALE)
        return True

    def balance(self) -> int:
        """Whole retries available now (never negative)."""
        self._advance()
        return max(0, (self._reserve + self._total) // _SCALE)

    def _bucket_of(self, now: float) -> int:
        return math.floor(now / self._width)

    def _add(self, units: int) -> None:
        self._advance()
        self._ring[self._index % len(self._ring)] += units
        self._total += units

    def _advance(self) -> None:
        """Forget the buckets that fell out of the TTL since the last call."""
        current = self._bucket_of(self._clock())
        if current <= self._index:
            # A clock that steps back keeps filling the newest bucket rather than corrupting the ring.
            return
        size = len(self._ring)
        # Each slot is cleared at most once per pass, so a long idle gap costs at most `size` steps.
        for index in range(self._index + 1, min(current, self._index + size) + 1):
            slot = index % size
            self._total -= self._ring[slot]
            self._ring[slot] = 0
        self._index = current

    def __repr__(self) -> str:
        return f"RetryBudget(name={self.name!r}, ttl_s={self.ttl_s}, balance={self.balance()})"


def withdraw_all(budgets: Iterable[RetryBudget]) -> RetryBudget | None:
    """Take one retry from every budget, or from none.

    Returns:
        ``None`` when all budgets paid, else the first exhausted budget (nothing is withdrawn).
    """
    chosen = list(budgets)
    for budget in chosen:
        if not budget.can_withdraw():
            return budget
    for budget in chosen:
        budget.try_withdraw()
    return None
