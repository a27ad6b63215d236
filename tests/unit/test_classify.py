"""Hidden-failure classifier: every rule with a positive and a negative case."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.retry import DefaultClassifier, Failure, FailureClassifier, ToolPolicy, classify


def error_type(
    value: object, *, require_content: bool = False, extra_patterns: dict[str, str | re.Pattern[str]] | None = None
) -> str | None:
    found = classify(value, require_content=require_content, extra_patterns=extra_patterns)
    return None if found is None else found.error_type


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"error": "quota exceeded"}, "ToolError"),
        ({"error": {"code": 7, "message": "bad key"}}, "ToolError"),
        ({"errors": [{"message": "field missing"}], "data": None}, "ToolError"),
        ({"ok": False}, "ToolReportedFailure"),
        ({"success": False, "message": "nope"}, "ToolReportedFailure"),
        ({"status": "error"}, "ToolReportedFailure"),
        ({"status": "FAILED"}, "ToolReportedFailure"),
        ({"status_code": 404, "body": ""}, "HTTPError"),
        ({"statusCode": 403}, "HTTPError"),
        ({"status": 400}, "HTTPError"),
        ({"status_code": 408}, "TimeoutError"),
        ({"status_code": 429}, "RateLimited"),
        ({"status_code": 503}, "TransientError"),
        ({"exit_code": 2, "stderr": "bad flag"}, "NonZeroExit"),
        ({"returncode": 127}, "NonZeroExit"),
        ("Error: permission denied", "ErrorMessage"),
        ("error: could not open repository", "ErrorMessage"),
        ("  ERROR 1045 (28000): Access denied", "ErrorMessage"),
        ("Traceback (most recent call last):\n  File 'x.py'\nValueError: boom\n", "PythonTraceback"),
        ("bash: frob: command not found", "CommandNotFound"),
        ("cat: notes.txt: No such file or directory", "FileNotFound"),
    ],
)
def test_hidden_failures_are_found(value: object, expected: str) -> None:
    assert error_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"error": None, "result": 3},
        {"error": "", "result": 3},
        {"error": 0},
        {"errors": [], "data": {"x": 1}},
        {"ok": True},
        {"ok": 0},  # only a real false says failure; 0 is ambiguous
        {"success": True},
        {"status": "done"},
        {"status": "ok", "message": "error rate is 0"},
        {"status_code": 200},
        {"status_code": 302},
        {"status": 200},
        {"status_code": True},
        {"exit_code": 0, "stderr": "warning: deprecated"},
        {"returncode": False},
        "0 errors found",
        "Compiled with no error: all good",
        "The log mentions an ERROR line, handled.",
        "Traceback analysis is a debugging skill.",
        "the command was found on PATH",
        "the file exists",
        "Errorless run",
        42,
        3.5,
        True,
        [1, 2],
    ],
)
def test_real_results_pass(value: object) -> None:
    assert classify(value) is None


def test_traceback_message_is_the_exception_line() -> None:
    text = "Traceback (most recent call last):\n  File 'a.py', line 1\nKeyError: 'user'\n\n"
    assert classify(text) == Failure(error_type="PythonTraceback", message="KeyError: 'user'")


def test_dict_message_comes_from_the_error_field() -> None:
    assert classify({"error": {"message": "bad key"}}) == Failure(error_type="ToolError", message="bad key")
    found = classify({"status_code": 500, "detail": "db down"})
    assert found is not None
    assert found.message == "HTTP 500: db down"


@pytest.mark.parametrize("value", [None, "", "   \n", [], {}, (), b""])
def test_empty_results_fail_only_when_content_is_required(value: object) -> None:
    assert classify(value) is None
    assert error_type(value, require_content=True) == "EmptyResult"


@pytest.mark.parametrize("value", ["x", [0], {"k": None}, 0, False])
def test_non_empty_results_pass_when_content_is_required(value: object) -> None:
    assert classify(value, require_content=True) is None


def test_response_objects_with_a_status_code_attribute() -> None:
    @dataclass
    class Response:
        status_code: int

    assert error_type(Response(502)) == "TransientError"
    assert classify(Response(201)) is None


def test_extra_patterns_add_tool_specific_failures() -> None:
    patterns: dict[str, str | re.Pattern[str]] = {
        "QuotaExceeded": re.compile(r"quota (exceeded|reached)", re.IGNORECASE),
        "Denied": "^denied",
    }
    assert error_type("Daily QUOTA reached, try tomorrow", extra_patterns=patterns) == "QuotaExceeded"
    assert classify("denied: no token", extra_patterns=patterns) == Failure(
        error_type="Denied", message="denied: no token"
    )
    assert classify("quota: 10 left", extra_patterns=patterns) is None
    assert classify("Daily quota reached") is None  # only that tool's classifier knows the phrase


def test_extra_rules_see_any_value() -> None:
    def negative_count(value: object) -> Failure | None:
        if isinstance(value, dict) and value.get("count", 0) < 0:
            return Failure(error_type="BadCount", message="negative count")
        return None

    classifier = DefaultClassifier(extra_rules=[negative_count])
    assert classifier({"count": -1}) == Failure(error_type="BadCount", message="negative count")
    assert classifier({"count": 1}) is None


def test_classifier_from_policy() -> None:
    policy = ToolPolicy(require_content=True, failure_patterns={"Blocked": r"\bblocked\b"})
    classifier: FailureClassifier = DefaultClassifier.from_policy(policy)
    found = classifier("request blocked by WAF")
    assert found is not None
    assert found.error_type == "Blocked"
    assert classifier([]) == Failure(error_type="EmptyResult", message="the tool returned nothing")


def test_policy_refuses_a_broken_pattern() -> None:
    with pytest.raises(ValueError, match="Broken"):
        ToolPolicy(failure_patterns={"Broken": "(unclosed"})


def test_long_messages_are_clipped() -> None:
    found = classify({"error": "x" * 10_000})
    assert found is not None
    assert len(found.message) <= 500


@given(st.text().filter(lambda t: t.strip() and not t.lstrip().lower().startswith("error")))
def test_prose_only_fails_on_a_known_phrase(text: str) -> None:
    phrases = ("Traceback (most recent call last)", "command not found", "No such file or directory")
    found = classify(text)
    if found is not None:
        assert found.error_type in {"PythonTraceback", "CommandNotFound", "FileNotFound"}
        assert any(p in text for p in phrases)
