"""Negative answers: a search that found nothing, keyed by the question with its location masked.

"Searching file after file for a term that does not exist" (DESIGN §4) escapes the other
loop detectors: each action names another file, and each answer names it too ("No matches
found for "FooAdapter" in /testbed/src/pkg/x.py"), or is empty with grep's exit status 1.
With the searched locations masked, those are one question getting one answer again and
again. :func:`negative_key` gives that pair a fingerprint, and only for a *negative* answer,
so an agent reading file after file (whose answers are contents) is never keyed.

The question of a shell command is its last pipeline stage's command word and first
argument that is neither an option, a number nor a path (``grep -n "Foo" a.py | head``
would be ``head``, but ``sed -n 1,99p a.py | grep Foo`` is ``grep Foo``): the last stage
decides the exit status and the output. Later arguments are where to look, and masked.
"""

from __future__ import annotations

import re

from runvisor.actors.supervisor.detection.fingerprint import digest, normalize_loose

_WRAPPER = re.compile(r"^\s*(?:<returncode>-?\d+</returncode>\s*)?(?:<output>\s*)?")
# Phrases that say "nothing here", in a short answer only: a long output that mentions one
# (a test log, a file's contents) is an answer with content.
_NOTHING = re.compile(
    r"no (?:matches|match|results?|such file)\b|\bnot found\b|does not exist|"
    r"(?:could not|cannot|can't|unable to) find\b|\b0 (?:matches|results|files)\b",
    re.IGNORECASE | re.ASCII,
)
# Every match of ``_NOTHING`` holds one of these, lowercased: testing them on ``text.lower()``
# takes about 1 µs where the case-insensitive regex takes about 7 µs on a short answer that
# says nothing of the kind (most of them).
_NOTHING_HINTS = (
    "no match",
    "no result",
    "no such file",
    "not found",
    "does not exist",
    "find",
    "0 match",
    "0 result",
    "0 file",
)
#: Longest answer (wrapper included) that can be negative: one or two lines naming a place.
_MAX_ANSWER = 400
# A path: a token with a slash, or a file name with an extension (``default.sqlite3``).
_PATH = re.compile(r"[^\s'\"`:,;()<>|]*/[^\s'\"`:,;()<>|]*|[\w.-]*\w\.[A-Za-z]\w{0,7}\b")
_DOTTED = re.compile(r"\w\.[A-Za-z]")  # a file or host name: ``setup.py``, ``mirrors.aliyun.com``
_PLACE = "<path>"
_STAGE = re.compile(r"\|\|?|&&|;|\n")
_TOKEN = re.compile(r"\"([^\"]*)\"|'([^']*)'|(\S+)")
_NUMBER = re.compile(r"[\d.,:+-]+")
# A command word that answers with emptiness when it finds nothing, whatever its exit status.
_SEARCHES = frozenset({"grep", "egrep", "fgrep", "rg", "ag", "ack", "find", "fd", "locate", "git grep"})
_SEARCH_WORD = re.compile(r"\b(?:grep|egrep|fgrep|rg|ag|ack|find|fd|locate)\b")


def negative_key(command: str, observation: str | None, failed: bool, navigation: frozenset[str]) -> int:
    """The fingerprint of (question, answer) with locations masked, when the answer is negative.

    Args:
        command: the action's rendered arguments (a shell command, or JSON of a tool's arguments).
        observation: the tool's output.
        failed: whether the action failed (a non-zero exit status).
        navigation: command words whose empty output is never evidence (``cd``, ``ls``).

    Returns:
        0 when the answer is not negative: content, an error that is not "not found", or an
        empty output from a command that succeeded (``sed -i``) or only moves around.
    """
    text = observation or ""
    if len(text) > _MAX_ANSWER:
        return 0  # the common case, decided without a regex
    body = _WRAPPER.sub("", text, count=1).replace("</output>", "").strip()
    if body:
        if not says_nothing(body):
            return 0
        word, question = _question(command)
        answer = _PATH.sub("<path>", normalize_loose(body))
    else:
        if not failed and _SEARCH_WORD.search(command) is None:
            return 0  # ``sed -i`` succeeding quietly (the common empty output), without parsing it
        word, question = _question(command)
        if word in navigation or not (failed or word in _SEARCHES):
            return 0
        answer = ""
    return digest(f"negative\x1f{word}\x1f{question}\x1f{answer}")


def mask_places(text: str, limit: int = _MAX_ANSWER) -> str:
    """``text`` with its places masked (words with a path, a URL, a file or host name become ``<path>``),
    in its first ``limit`` characters: where a complaint names them; past that, a log goes on unmasked.

    Word by word, in linear time: the path pattern of :func:`negative_key`, run over a long text,
    backtracks on every long word.
    """
    head = text[:limit]
    if "/" not in head and "." not in head:
        return text
    words = [_PLACE if "/" in w or ("." in w and _DOTTED.search(w)) else w for w in head.split(" ")]
    return " ".join(words) + text[limit:]


def says_nothing(body: str) -> bool:
    """Whether ``body`` contains a phrase that says "nothing here" ("No matches found", "not found", ...)."""
    lowered = body.lower()
    return any(hint in lowered for hint in _NOTHING_HINTS) and _NOTHING.search(body) is not None


def _question(command: str) -> tuple[str, str]:
    """The command word and the question of the last stage of ``command`` (see the module doc)."""
    if command.startswith("{"):
        return "", _PATH.sub("<path>", command)  # a tool's JSON arguments: all of it is the question
    stage = _STAGE.split(command)[-1]
    words = [quoted or single or bare for quoted, single, bare in _TOKEN.findall(stage)]
    # ``VAR=value cmd ...``: the command word comes after the assignments.
    while words and "=" in words[0] and not words[0].startswith(("-", "=")):
        words.pop(0)
    if not words:
        return "", ""
    word = words[0].rsplit("/", 1)[-1]
    if word == "git" and len(words) > 1:
        word, words = f"git {words[1]}", words[1:]  # ``git grep Foo``: the subcommand is the command
    for arg in words[1:]:
        if arg.startswith("-") or _NUMBER.fullmatch(arg) or arg in (".", "..", "~") or _PATH.fullmatch(arg):
            continue
        return word, arg
    return word, ""


__all__ = ["mask_places", "negative_key", "says_nothing"]
