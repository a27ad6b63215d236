"""Hidden failures: tool results that return normally but report a failure inside.

Agents read such results as successes and loop on them, so the executor classifies every
returned value. Text rules only look at how a result *starts* or at phrases that only
failures print, so prose that merely mentions errors ("0 errors found") passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from runvisor.actors.retry.policy import ToolPolicy

#: Longest message kept; the whole value stays in the observation.
MAX_MESSAGE_CHARS = 500

_ERROR_PREFIX = re.compile(r"\A\s*(?:[Ee]rror:|ERROR)")
_TRACEBACK = "Traceback (most recent call last)"
_FAILED_STATUS = frozenset({"error", "failed", "failure", "fail"})
_MESSAGE_KEYS = ("error", "errors", "message", "detail", "reason", "stderr")
_EXIT_KEYS = ("exit_code", "returncode", "exit_status")
_STATUS_CODE_KEYS = ("status_code", "statusCode", "status")

#: Built-in text rules in the order tried: error type -> pattern searched in the text.
_TEXT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CommandNotFound", re.compile(r"command not found")),
    ("FileNotFound", re.compile(r"No such file or directory")),
    ("ErrorMessage", _ERROR_PREFIX),
)


class Failure(BaseModel):
    """Why a result that looks successful is a failure."""

    model_config = ConfigDict(frozen=True)

    error_type: str
    message: str


class FailureClassifier(Protocol):
    """Anything that tells a hidden failure from a real result; one may be set per tool."""

    def __call__(self, value: object, /) -> Failure | None: ...


#: An extra rule for ``DefaultClassifier``: return a ``Failure`` or ``None`` to pass.
Rule = Callable[[object], Failure | None]


class DefaultClassifier:
    """The built-in rules, plus per-tool regexes and rules.

    Args:
        require_content: Treat ``None``, blank text and empty containers as a failure.
        extra_patterns: error type -> regex searched in text results (after the built-in rules).
        extra_rules: Callables tried last, on any value.
    """

    __slots__ = ("extra_rules", "patterns", "require_content")

    def __init__(
        self,
        *,
        require_content: bool = False,
        extra_patterns: Mapping[str, str | re.Pattern[str]] | None = None,
        extra_rules: Sequence[Rule] = (),
    ) -> None:
        self.require_content = require_content
        extra = [(name, re.compile(p) if isinstance(p, str) else p) for name, p in (extra_patterns or {}).items()]
        self.patterns: tuple[tuple[str, re.Pattern[str]], ...] = (*_TEXT_RULES, *extra)
        self.extra_rules = tuple(extra_rules)

    @classmethod
    def from_policy(cls, policy: ToolPolicy, *, extra_rules: Sequence[Rule] = ()) -> DefaultClassifier:
        """The classifier a tool's policy describes (``require_content``, ``failure_patterns``)."""
        return cls(
            require_content=policy.require_content, extra_patterns=policy.failure_patterns, extra_rules=extra_rules
        )

    def __call__(self, value: object, /) -> Failure | None:
        """Return the failure hidden in ``value``, or ``None`` if it is a real result."""
        if _is_empty(value):
            return (
                Failure(error_type="EmptyResult", message="the tool returned nothing") if self.require_content else None
            )
        if isinstance(value, Mapping):
            failure = _classify_mapping(value)
        elif isinstance(value, str):
            failure = self._classify_text(value)
        else:
            failure = _classify_status_code(getattr(value, "status_code", None), value)
        if failure is not None:
            return failure
        for rule in self.extra_rules:
            failure = rule(value)
            if failure is not None:
                return failure
        return None

    def _classify_text(self, text: str) -> Failure | None:
        if _TRACEBACK in text:
            # The last line names the exception, which is what a reader needs.
            lines = [line for line in text.strip().splitlines() if line.strip()]
            return Failure(error_type="PythonTraceback", message=_clip(lines[-1].strip()))
        for error_type, pattern in self.patterns:
            if pattern.search(text):
                return Failure(error_type=error_type, message=_clip(text.strip().splitlines()[0]))
        return None


_DEFAULT = DefaultClassifier()
_REQUIRING = DefaultClassifier(require_content=True)


def classify(
    value: object, *, require_content: bool = False, extra_patterns: Mapping[str, str | re.Pattern[str]] | None = None
) -> Failure | None:
    """Classify ``value`` with the built-in rules; see ``DefaultClassifier``."""
    if extra_patterns:
        return DefaultClassifier(require_content=require_content, extra_patterns=extra_patterns)(value)
    return (_REQUIRING if require_content else _DEFAULT)(value)


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes):
        return not value.strip()
    return isinstance(value, list | tuple | dict | set | frozenset) and not value


def _classify_mapping(value: Mapping[object, object]) -> Failure | None:
    error = value.get("error")
    if _present(error) or _present(value.get("errors")):
        return Failure(error_type="ToolError", message=_describe(value))
    status = value.get("status")
    if (
        value.get("ok") is False
        or value.get("success") is False
        or (isinstance(status, str) and status.strip().lower() in _FAILED_STATUS)
    ):
        return Failure(error_type="ToolReportedFailure", message=_describe(value))
    for key in _STATUS_CODE_KEYS:
        failure = _classify_status_code(value.get(key), value)
        if failure is not None:
            return failure
    for key in _EXIT_KEYS:
        code = value.get(key)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            return Failure(error_type="NonZeroExit", message=_clip(f"{key}={code}: {_describe(value)}"))
    return None


def _classify_status_code(code: object, value: object) -> Failure | None:
    if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
        return None
    # Map the transient codes onto the default retryable types, so the planner retries them.
    if code == 408:
        error_type = "TimeoutError"
    elif code == 429:
        error_type = "RateLimited"
    elif code in (500, 502, 503, 504):
        error_type = "TransientError"
    else:
        error_type = "HTTPError"
    detail = _describe(value) if isinstance(value, Mapping) else type(value).__name__
    return Failure(error_type=error_type, message=_clip(f"HTTP {code}: {detail}"))


def _present(field: object) -> bool:
    # `error: null`, `error: ""` and `errors: []` are how many APIs say "no error".
    if isinstance(field, str):
        return bool(field.strip())
    if isinstance(field, int | float) and not isinstance(field, bool):
        return field != 0  # `error: 0` is an error code meaning none
    return field is not None and field is not False and not (isinstance(field, list | dict | tuple) and not field)


def _describe(value: Mapping[object, object]) -> str:
    for key in _MESSAGE_KEYS:
        field = value.get(key)
        if isinstance(field, Mapping):
            field = field.get("message", field)
        if _present(field):
            return _clip(str(field).strip())
    return _clip(repr(dict(value)))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
