"""Pure retry management for tool executors: backoff, budgets, breakers, hidden failures (DESIGN §7).

No I/O and no clock reads here: the async executor passes the time in and wires the
decisions to NATS (breaker state lives in KV ``rv_breakers``).
"""

from __future__ import annotations

from runvisor.actors.retry.attempts import Decision, Done, GiveUp, RetryAfter, RetryPlanner, admit, is_retryable, plan
from runvisor.actors.retry.backoff import Backoff, Uniform
from runvisor.actors.retry.breaker import Admission, Breaker, BreakerState, BreakerStatus
from runvisor.actors.retry.budget import RetryBudget, withdraw_all
from runvisor.actors.retry.classify import DefaultClassifier, Failure, FailureClassifier, Rule, classify
from runvisor.actors.retry.outcome import Outcome
from runvisor.actors.retry.policy import (
    DEFAULT_RETRYABLE,
    DEFAULT_SAFE_TO_REPEAT,
    BackoffPolicy,
    BreakerPolicy,
    BudgetPolicy,
    ToolPolicy,
)
from runvisor.errors import RateLimited, TransientError

__all__ = [
    "DEFAULT_RETRYABLE",
    "DEFAULT_SAFE_TO_REPEAT",
    "Admission",
    "Backoff",
    "BackoffPolicy",
    "Breaker",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "BudgetPolicy",
    "Decision",
    "DefaultClassifier",
    "Done",
    "Failure",
    "FailureClassifier",
    "GiveUp",
    "Outcome",
    "RateLimited",
    "RetryAfter",
    "RetryBudget",
    "RetryPlanner",
    "Rule",
    "ToolPolicy",
    "TransientError",
    "Uniform",
    "admit",
    "classify",
    "is_retryable",
    "plan",
    "withdraw_all",
]
