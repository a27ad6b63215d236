"""How a step event becomes an action: its digest and its human label (DESIGN §4, "Loops")."""

from __future__ import annotations

import re

from runvisor.actors.supervisor.detection.fingerprint import action_digests, render_args, short
from runvisor.protocols.messages import StepEvent

#: Commands whose empty output is never evidence of a loop: moving around and listing
#: (DESIGN §4). A classification, not a threshold, so it lives here rather than in Policy.
NAVIGATION_TOOLS = frozenset({"cd", "ls", "pwd", "pushd", "popd", "dir", "tree", "clear", "true"})


# A shell command that changes files or the environment: in-place edits, redirections into a
# file, file operations, version control that rewrites the tree, installs. Reading commands
# (cat, grep, ls, python x.py, pytest) change nothing an agent re-reads. Three patterns, each
# asked only when a cheap test says it can match (this runs on most actions).
_REDIRECT = re.compile(r"(?<![<>&0-9-])>>?\s*[\w./~\"'$]", re.ASCII)
_IN_PLACE = re.compile(r"\b(?:sed|perl)\s+(?:-\w+\s+)*-i", re.ASCII)
_CHANGE_COMMAND = re.compile(
    r"(?:^|[;&|(]\s*)(?:patch|mv|cp|rm|mkdir|touch|chmod|ln|truncate|tee)\b|\|\s*tee\b|"
    r"\bgit\s+(?:apply|checkout|commit|stash|reset|restore|am|cherry-pick|merge|rebase|rm|mv|add)\b|"
    r"\b(?:pip3?|conda|npm|apt(?:-get)?|yarn|poetry|uv)\s+(?:\S+\s+)*?(?:install|uninstall|remove|add)\b|"
    r"\bsetup\.py\s+(?:install|develop|build)|"
    r"^(?:edit|create|insert|append|str_replace|undo_edit)\b",
    re.ASCII,
)
# Words one of which such a command holds: :data:`_CHANGE_COMMAND`'s prefilter.
_CHANGE_WORDS = frozenset(
    (
        *("tee", "patch", "mv", "cp", "rm", "mkdir", "touch", "chmod", "ln", "truncate", "git", "setup.py"),
        *("pip", "pip3", "conda", "npm", "apt", "apt-get", "yarn", "poetry", "uv"),
        *("edit", "create", "insert", "append", "str_replace", "undo_edit"),
    )
)
# A tool whose name says it changes something (``update_reservation``, ``write_file``, ``send_email``).
_CHANGE_TOOL = re.compile(
    r"(?:create|update|edit|write|delete|insert|modify|set|book|cancel|send|transfer|add|remove|apply|patch|"
    r"put|post|save|submit|exchange|return|replace|append|move|rename|install)(?:_|$)",
    re.IGNORECASE | re.ASCII,
)

_JSON_VERB = re.compile(r'"command": "(\w+)"')
_EDITOR_CHANGES = frozenset({"create", "str_replace", "insert", "undo_edit", "write", "edit", "append"})


def action_of(event: StepEvent) -> tuple[int, int, str, str]:
    """The action's exact and number-masked digests, its label and its rendered arguments."""
    rendered = render_args(event.args)
    exact, loose = action_digests(event.tool, rendered)
    return exact, loose, _label(event.tool, rendered), rendered


def is_change(tool: str | None, command: str) -> bool:
    """Whether an action changes the world its agent observes: an edit, a write, an install, a booking.

    A re-run after such a change that gives the same answer is testing; the same answer with
    nothing changed in between is asking again.
    """
    if command.startswith("{") or not command:
        # An editor tool (``str_replace_editor``) says what it does in its ``command`` argument.
        verb = _JSON_VERB.search(command)
        if verb is not None:
            return verb.group(1) in _EDITOR_CHANGES
        return tool is not None and _CHANGE_TOOL.match(tool) is not None
    if tool is not None and _CHANGE_TOOL.match(tool) is not None:
        return True
    # The command is its first line: what follows is a heredoc's body (a script, a file's text).
    line = command[: command.find("\n")] if "\n" in command else command
    # Most commands read (cat, grep, python x.py): substring and word-set tests decide that without a regex.
    if ">" in line and _REDIRECT.search(line) is not None:
        return True
    if "-i" in line and _IN_PLACE.search(line) is not None:
        return True
    return not _CHANGE_WORDS.isdisjoint(line.split()) and _CHANGE_COMMAND.search(line) is not None


def _label(tool: str | None, rendered: str) -> str:
    """A short human name for an action: the shell command itself, or ``tool args``."""
    tool = tool or ""
    if rendered.startswith(tool):
        return short(rendered)
    return short(f"{tool} {rendered}".strip())


def is_empty_output(observation: str | None) -> bool:
    """Whether a harness output is empty once its wrapper (return code 0, output tags) is gone."""
    text = (observation or "").replace("<returncode>0</returncode>", "").replace("<output>", "")
    return not text.replace("</output>", "").strip()


__all__ = ["NAVIGATION_TOOLS", "action_of", "is_change", "is_empty_output"]
