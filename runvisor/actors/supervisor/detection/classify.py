"""Failure classification of tool observations, pure and importable (DESIGN §4, "Tool failures").

A tool can fail behind a successful-looking response: HTTP 200 with an error body,
``{"ok": false}``, an ``"Error: ..."`` string, a traceback. The tool executor reuses
:func:`is_hidden_failure` to decide the same thing on its side.

Where a failure came from decides what the operator must do (:func:`failure_origin`):

* ``TOOL``: the tool or its infrastructure failing (timeouts, connection errors, 5xx, rate
  limits, open breakers, exhausted resources, exceptions raised by a tool). Fix the tool:
  a streak of these is ``TOOL_FAILURE``.
* ``AGENT``: the agent's own input rejected (shell parse errors, unknown commands, missing
  paths, usage messages, an editor's syntax check, a validation error, a malformed response).
  The tool works; a streak of these is the agent looping.
* ``RAN``: a shell command that ran and failed in its own terms (failing tests, a script's
  traceback or "Error:" line, a non-zero exit status). That is the agent's work going on, and
  neither of the above.
"""

from __future__ import annotations

import enum
import json
import re

# Anchored at the start of the output (after an optional harness wrapper) so that a file
# that merely *mentions* "error:" in its contents is not read as a failure.
_WRAPPER = re.compile(r"^\s*(?:<returncode>\d+</returncode>\s*)?(?:<output>\s*)?")
_LEADING_ERROR = re.compile(
    r"^(?:error|fatal|exception|failed|failure)\b[:!\s]|^(?:[\w.]*(?:Error|Exception))(?::|$)",
    re.IGNORECASE,
)
# Shell and runtime failure signatures that mean "this call did not do its job" wherever they appear.
_ANYWHERE = re.compile(
    r"Traceback \(most recent call last\)|: command not found|: No such file or directory|"
    r"Permission denied|Segmentation fault|HTTP/\d(?:\.\d)? [45]\d\d\b"
)
_JSON_ERROR_KEYS = ("error", "errors", "exception")
# Tools named for fetching data: an empty result means they did not do their job ("an empty
# result where one is required", DESIGN §4). Shell commands (``ls``, ``grep``) and tools that act
# or think (``think``, ``update_x``) are not among them: empty is a normal answer from those.
_DATA_TOOL = re.compile(r"(?:get|fetch|export|query|lookup|search|retrieve|download|list)_", re.IGNORECASE)


class Origin(enum.IntEnum):
    """Where a failure came from (see the module doc)."""

    TOOL = 1
    AGENT = 2
    RAN = 3


# The tool or its infrastructure failing, wherever it is said: no agent input causes these.
# Phrases are looked for in lowercased text with ``in`` (C's substring search: a regex alternation
# of the same phrases costs twice as much, a case-insensitive one twenty times; this runs on every failure).
_INFRA_PHRASES = (
    "timed out", "time out", "timeout", "deadline exceeded", "connection refused", "connection reset",
    "connection aborted", "connection error", "connection closed", "connectionerror", "broken pipe",
    "network is unreachable", "temporary failure in name resolution", "name or service not known",
    "upstream connect", "internal server error", "service unavailable", "bad gateway", "ratelimit", "rate limit",
    "rate-limit", "too many requests", "quota exceeded", "circuit breaker", "breaker open", "retry budget",
    "out of memory", "memoryerror", "no space left on device", "segmentation fault", "unauthorized", "forbidden",
    "invalid token", "invalid credentials", "invalid api key", "invalid api token", "permission denied",
    "access denied",
)  # fmt: skip
# An HTTP status of the server failing (5xx) or refusing the rate (429), where a status is named.
_INFRA_STATUS = re.compile(r"(?:error|status|upstream|http|code)\W{0,3}(?:\d(?:\.\d)? )?(?:5\d\d|429)\b", re.ASCII)
# The agent's input rejected: by the shell (parse errors, unknown commands, missing paths), by a
# command's argument parser (usage), by an editor's or a harness's checks, by a validator.
_REJECTED_PHRASES = (
    "syntax error", "unexpected eof", "unexpected end of file", "command not found", "no such file or directory",
    "not a directory", "can't open file", "cannot access", "invalid option", "invalid choice", "invalid action",
    "invalid command", "invalid argument", "invalid input", "invalid value", "invalid parameter", "invalid json",
    "invalid request", "invalid syntax", "unrecognized option", "unrecognized argument", "missing operand",
    "missing required", "missing argument", "the following arguments are required", "proposed edit has introduced",
    "e999", "no replacement was performed", "did not appear verbatim", "could not find", "not found",
    "does not exist", "no such ", "no matching ", "validation error", "validation failed", "is required",
    "unknown tool", "unknown command", "unknown action", "unknown option", "unknown argument", "unknown function",
    "not a valid", "not allowed", "format_error", "\nusage:",
)  # fmt: skip
#: What the shell or a command's own argument handling says comes first: past this, output is
#: the command's work (a test log, a script's traceback), whose words are not about the input.
_HEAD_CHARS = 300


def failure_origin(observation: str | None, error: str | None, *, shell: bool, message: bool = False) -> Origin:
    """Where a failed action's failure came from (see the module doc).

    Args:
        observation: the tool's output.
        error: the result's error field.
        shell: the action was a shell command (its arguments are a ``command``).
        message: the action was a malformed agent response (a harness format error).

    Returns:
        ``AGENT`` for rejected input, ``TOOL`` for a failing tool or infrastructure (and for any
        other failure of a tool that is not a shell: an exception, an error body), ``RAN`` for
        any other failure of a shell command: it ran, and what it says is its own business.
    """
    if message:
        return Origin.AGENT
    body = _WRAPPER.sub("", (observation or "")[: 2 * _HEAD_CHARS + 64], count=1)  # the wrapper is short
    head = body[:_HEAD_CHARS] if shell else body[: 2 * _HEAD_CHARS]
    text = f"{error or ''}\n{head}".lower()
    if any(phrase in text for phrase in _INFRA_PHRASES) or _INFRA_STATUS.search(text):
        return Origin.TOOL
    if shell and body.lstrip().startswith("Traceback"):
        return Origin.RAN  # a script's exception: its words are not the shell's about the input
    if any(phrase in text for phrase in _REJECTED_PHRASES):
        return Origin.AGENT
    return Origin.RAN if shell else Origin.TOOL


# A command's usage message instead of its work: the agent's arguments were refused (``Usage: open
# "<file>" [<line_number>]``), unless the agent asked for help.
_USAGE = re.compile(r"^\s*usage:", re.IGNORECASE)
_ASKS_HELP = re.compile(r"(?:^|\s)(?:-h|--help|help)(?:\s|$)")


def is_usage_reply(observation: str | None, command: str) -> bool:
    """Whether ``observation`` is a usage message the agent did not ask for (its input was refused)."""
    head = observation[:120] if observation else ""
    if "sage:" not in head and "SAGE:" not in head:
        return False  # the common case, without a regex: no usage line where it would be
    body = _WRAPPER.sub("", head, count=1)
    return _USAGE.match(body) is not None and _ASKS_HELP.search(command) is None


def is_hidden_failure(observation: str | None, *, content_required: bool = False) -> bool:
    """Tell whether a result reported as successful actually failed.

    Args:
        observation: the tool's output.
        content_required: True when an empty output is itself a failure (e.g. a search API).

    Returns:
        True for an error message, a traceback, a shell "command not found" / "No such file",
        a JSON body with ``"ok": false`` or an ``"error"`` field, or an empty output where
        content was required.
    """
    if observation is None or not observation.strip():
        return content_required
    body = _WRAPPER.sub("", observation, count=1)
    if body.lstrip()[:1] in ("{", "[") and _json_failure(body):
        return True
    if _LEADING_ERROR.match(body.lstrip()):
        return True
    return _ANYWHERE.search(observation) is not None


def content_required(tool: str | None) -> bool:
    """Whether ``tool`` is named for fetching data, so that an empty result from it is a failure."""
    return tool is not None and _DATA_TOOL.match(tool) is not None


def _json_failure(body: str) -> bool:
    text = body.strip()
    if text.endswith("</output>"):
        text = text[: -len("</output>")].rstrip()
    try:
        data = json.loads(text)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    if data.get("ok") is False or data.get("success") is False:
        return True
    return any(data.get(key) for key in _JSON_ERROR_KEYS)


def error_text(observation: str | None, error: str | None) -> str:
    """The text that identifies a failure: the output when there is one, else the error field.

    The output is preferred because error fields are often generic ("returncode 1") and
    would make different failures look identical.
    """
    body = _WRAPPER.sub("", observation or "", count=1).replace("</output>", "").strip()
    return body or (error or "").strip()


__all__ = ["Origin", "content_required", "error_text", "failure_origin", "is_hidden_failure", "is_usage_reply"]
