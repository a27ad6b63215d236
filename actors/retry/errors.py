"""Exceptions a tool may raise to say a failure is worth retrying.

Their names are in ``ToolPolicy.retryable_error_types`` by default, and the planner
matches base-class names too, so a tool's own ``class QuotaExceeded(RateLimited)`` is retried.
"""

from __future__ import annotations


class TransientError(Exception):
    """A failure likely to pass on its own (a flaky backend, a 503)."""


class RateLimited(TransientError):  # noqa: N818 - the name is the error type the policy matches
    """The tool refused the call before running it; ``retry_after_s`` is the server's hint.

    Args:
        message: What the tool said.
        retry_after_s: Wait at least this long before the next attempt, when known.
    """

    def __init__(self, message: str = "rate limited", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
