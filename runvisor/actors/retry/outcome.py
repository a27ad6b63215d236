"""The outcome of one attempt, as the retry planner sees it."""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.actors.retry.classify import FailureClassifier
from runvisor.errors import RateLimited


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: a value, a raised error, or a value hiding a failure.

    Attributes:
        ok: The attempt succeeded and ``value`` is the result.
        value: What the tool returned (kept for hidden failures too, for the observation).
        error_type: The error's type name, or a hidden failure's ``error_type``.
        error_types: ``error_type`` and the names of its base classes, matched against the policy.
        message: What went wrong, for a human.
        hidden: The tool returned normally but the classifier found a failure.
        retry_after_s: The tool's own hint of how long to wait (``RateLimited``).
    """

    ok: bool
    value: object = None
    error_type: str | None = None
    error_types: tuple[str, ...] = ()
    message: str = ""
    hidden: bool = False
    retry_after_s: float | None = None

    @classmethod
    def success(cls, value: object) -> Outcome:
        """A real result."""
        return cls(ok=True, value=value)

    @classmethod
    def failure(cls, error_type: str, message: str = "", *, retry_after_s: float | None = None) -> Outcome:
        """A failure known only by its type name (from another process, or a timeout)."""
        return cls(
            ok=False, error_type=error_type, error_types=(error_type,), message=message, retry_after_s=retry_after_s
        )

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        """A raised error; its base classes count, so ``ConnectionResetError`` is a ``ConnectionError``."""
        names = tuple(klass.__name__ for klass in type(exc).__mro__ if klass is not object)
        hint = exc.retry_after_s if isinstance(exc, RateLimited) else None
        return cls(ok=False, error_type=names[0], error_types=names, message=str(exc), retry_after_s=hint)

    @classmethod
    def from_value(cls, value: object, classifier: FailureClassifier) -> Outcome:
        """A returned value, checked for a hidden failure."""
        found = classifier(value)
        if found is None:
            return cls.success(value)
        return cls(
            ok=False,
            value=value,
            error_type=found.error_type,
            error_types=(found.error_type,),
            message=found.message,
            hidden=True,
        )
