"""How one tool is called, retried and guarded (DESIGN §7).

Every threshold of the retry layer is a field here with a default, never a literal in
the logic, so a tool's behaviour can be read from, and tuned in, one place.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: Error types retried by default: all say "try again later", none says "your input is wrong".
DEFAULT_RETRYABLE: frozenset[str] = frozenset({"TimeoutError", "ConnectionError", "TransientError", "RateLimited"})

#: Errors raised before a tool ran, so repeating a non-idempotent call cannot do its effect twice.
DEFAULT_SAFE_TO_REPEAT: frozenset[str] = frozenset({"RateLimited", "CircuitOpen"})

#: The largest outcome window: it fits the breaker's bitmask in one msgpack uint64.
MAX_BREAKER_WINDOW = 64


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class BackoffPolicy(_Frozen):
    """Exponential backoff with full jitter: ``uniform(0, min(cap_s, base_s * multiplier**n))``."""

    base_s: float = Field(default=0.5, ge=0, description="ceiling of the first retry's delay")
    multiplier: float = Field(default=2.0, ge=1, description="growth of the ceiling per retry")
    cap_s: float = Field(default=30.0, ge=0, description="no delay is ever longer than this")


class BreakerPolicy(_Frozen):
    """When a tool's circuit breaker opens and how it tries again."""

    window: int = Field(default=20, ge=1, le=MAX_BREAKER_WINDOW, description="last outcomes judged")
    failure_rate: float = Field(default=0.5, gt=0, le=1, description="opens at or above this failed share")
    min_calls: int = Field(default=10, ge=1, description="outcomes needed before the rate is judged")
    open_s: float = Field(default=30.0, gt=0, description="time the breaker stays open before probing")
    half_open_probes: int = Field(default=1, ge=1, description="calls let through while half-open")

    @model_validator(mode="after")
    def _min_calls_fit_window(self) -> BreakerPolicy:
        # A window shorter than min_calls could never hold enough outcomes to open the breaker.
        if self.min_calls > self.window:
            raise ValueError(f"min_calls ({self.min_calls}) must not exceed window ({self.window})")
        return self


class BudgetPolicy(_Frozen):
    """A Finagle-style retry budget: a floor of retries plus a share of recent requests."""

    ttl_s: float = Field(default=60.0, gt=0, le=3600, description="how long a request's deposit counts")
    percent_can_retry: float = Field(default=0.2, ge=0, le=10, description="retries earned per request")
    min_retries_per_s: float = Field(
        default=0.1, ge=0, description="floor: floor(min_retries_per_s * ttl_s) retries always allowed"
    )


def _check_patterns(value: dict[str, str]) -> dict[str, str]:
    for name, pattern in value.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"failure pattern {name!r} is not a valid regular expression: {exc}") from exc
    return value


class ToolPolicy(_Frozen):
    """Timeouts, retries, hidden-failure detection, breaker and budget of one tool."""

    timeout_s: float = Field(default=30.0, gt=0, description="limit of one attempt")
    max_attempts: int = Field(default=3, ge=1, description="attempts in all, the first included")
    backoff: BackoffPolicy = BackoffPolicy()
    retryable_error_types: frozenset[str] = Field(
        default=DEFAULT_RETRYABLE, description="error types (or any of their base classes) worth retrying"
    )
    idempotent: bool = Field(default=True, description="False: only errors in safe_to_repeat_error_types are retried")
    safe_to_repeat_error_types: frozenset[str] = Field(
        default=DEFAULT_SAFE_TO_REPEAT, description="errors that prove the tool did not run"
    )
    require_content: bool = Field(default=False, description="an empty result (None, '', [], {}) is a failure")
    failure_patterns: Annotated[dict[str, str], AfterValidator(_check_patterns)] = Field(
        default_factory=dict, description="extra hidden-failure regexes on text results: error_type -> regex"
    )
    breaker: BreakerPolicy = BreakerPolicy()
    budget: BudgetPolicy = BudgetPolicy()


__all__ = [
    "DEFAULT_RETRYABLE",
    "DEFAULT_SAFE_TO_REPEAT",
    "MAX_BREAKER_WINDOW",
    "BackoffPolicy",
    "BreakerPolicy",
    "BudgetPolicy",
    "ToolPolicy",
]
