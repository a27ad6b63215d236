"""Fitting an agent's data into the protocol's limits, and digesting tool arguments.

The agent's own code should never fail because an observation or a tool's arguments are
larger than a step event may carry: step events get a clipped copy that says it was
clipped, and the digest of the full arguments still identifies the call exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runvisor.protocols.messages import MAX_TEXT_CHARS, args_fit

#: Characters of over-large arguments kept in a step event, so a human still sees what was called.
ARGS_PREVIEW_CHARS = 2_000


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the same arguments always give the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def args_digest(args: dict[str, Any] | None) -> str:
    """sha256 of the canonical JSON of ``args``, as hex."""
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


def jsonable(args: dict[str, Any] | None) -> dict[str, Any] | None:
    """``args`` as JSON values, as step events and checkpoints carry them: what JSON cannot hold
    (a framework's context object, a path) becomes its ``str``, tuples become lists."""
    if args is None:
        return None
    value: dict[str, Any] = json.loads(canonical_json(args))
    return value


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` characters, with a marker saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    marker = f"...[truncated from {len(text)} chars]"
    return (text[: max(0, limit - len(marker))] + marker)[:limit]


def clip_text(text: str | None) -> str | None:
    """Clip a short text field (agent name, tool name, call id)."""
    return clip(text, MAX_TEXT_CHARS)


def fits(args: dict[str, Any] | None) -> bool:
    """Whether ``args`` is within the protocol's size limit (the models' own measure, ``args_fit``).

    Raises:
        ValueError: ``args`` nest too deeply to be measured (see ``args_fit``).
    """
    return args_fit(args)


def step_args(args: dict[str, Any] | None) -> dict[str, Any] | None:
    """``args`` as a step event may carry them: unchanged when they fit, else a preview and digest."""
    if fits(args):
        return args
    text = canonical_json(args)
    return {
        "_truncated": True,
        "_chars": len(text),
        "_digest": args_digest(args),
        "_preview": text[:ARGS_PREVIEW_CHARS],
    }
