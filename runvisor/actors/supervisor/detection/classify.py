"""Failure classification of tool observations, pure and importable (DESIGN §4, "Tool failures").

A tool can fail behind a successful-looking response: HTTP 200 with an error body,
``{"ok": false}``, an ``"Error: ..."`` string, a traceback. The tool executor reuses
:func:`is_hidden_failure` to decide the same thing on its side.
"""

from __future__ import annotations

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


__all__ = ["content_required", "error_text", "is_hidden_failure"]
