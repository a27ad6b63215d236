"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").

Full jitter spreads retries of many clients uniformly over ``[0, ceiling]``, which the
blog measured to cause the least contention and the least total work.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from runvisor.actors.retry.policy import BackoffPolicy

#: A source of uniform floats in ``[0, 1)``; ``random.Random().random`` is one.
Uniform = Callable[[], float]


class Backoff:
    """Delays before retries: ``uniform(0, min(cap_s, base_s * multiplier**attempt))``.

    Args:
        base_s: Ceiling of the first retry's delay (attempt 0).
        multiplier: Growth of the ceiling per attempt, at least 1.
        cap_s: Upper bound of every delay.
        rng: A ``random.Random`` or a callable returning floats in ``[0, 1)``; injected so
            tests are deterministic (``lambda: 0.0`` gives zero delays).
    """

    __slots__ = ("_uniform", "base_s", "cap_s", "multiplier")

    def __init__(
        self,
        base_s: float,
        multiplier: float,
        cap_s: float,
        *,
        rng: random.Random | Uniform | None = None,
    ) -> None:
        if not (base_s >= 0 and cap_s >= 0 and multiplier >= 1):
            raise ValueError(f"need base_s >= 0, cap_s >= 0, multiplier >= 1; got {base_s}, {cap_s}, {multiplier}")
        self.base_s = base_s
        self.multiplier = multiplier
        self.cap_s = cap_s
        source = rng if rng is not None else random.Random()
        self._uniform: Uniform = source.random if isinstance(source, random.Random) else source

    @classmethod
    def from_policy(cls, policy: BackoffPolicy, *, rng: random.Random | Uniform | None = None) -> Backoff:
        """Build the backoff a tool's policy describes."""
        return cls(policy.base_s, policy.multiplier, policy.cap_s, rng=rng)

    def ceiling(self, attempt: int) -> float:
        """The un-jittered bound of the delay before retry ``attempt`` (0 for the first retry)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if self.base_s == 0:
            return 0.0
        try:
            raw = self.base_s * self.multiplier**attempt
        except OverflowError:
            # Large attempts overflow the float power long after the cap has taken over.
            raw = math.inf
        return min(self.cap_s, raw)

    def delay(self, attempt: int) -> float:
        """A jittered delay in ``[0, ceiling(attempt)]`` before retry ``attempt``."""
        ceiling = self.ceiling(attempt)
        # Clamp guards against an injected source that strays outside [0, 1).
        return min(ceiling, max(0.0, ceiling * self._uniform()))

    def __repr__(self) -> str:
        return f"Backoff(base_s={self.base_s}, multiplier={self.multiplier}, cap_s={self.cap_s})"
