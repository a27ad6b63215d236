"""How a step event becomes an action: its digest and its human label (DESIGN §4, "Loops")."""

from __future__ import annotations

from runvisor.actors.supervisor.detection.fingerprint import action_digest, render_args, short
from runvisor.protocols.messages import StepEvent

#: Commands whose empty output is never evidence of a loop: moving around and listing
#: (DESIGN §4). A classification, not a threshold, so it lives here rather than in Policy.
NAVIGATION_TOOLS = frozenset({"cd", "ls", "pwd", "pushd", "popd", "dir", "tree", "clear", "true"})


def action_of(event: StepEvent) -> tuple[int, str, str]:
    """The action's digest, its label and its rendered arguments, rendering them once."""
    rendered = render_args(event.args)
    return action_digest(event.tool, event.args, rendered), _label(event.tool, rendered), rendered


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


__all__ = ["NAVIGATION_TOOLS", "action_of", "is_empty_output"]
