"""One attempt of a tool and what is said about it: the outcome, retry step events, early failures."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runvisor.actors.retry import Outcome
from runvisor.actors.tools._registry import Tool, clip, observation_text
from runvisor.protocols import conventions
from runvisor.protocols.messages import StepEvent, ToolRequest, ToolResult
from runvisor.protocols.reasons import StopReason

log = logging.getLogger(__name__)


async def run_once(tool: Tool, args: dict[str, Any], limit_s: float) -> Outcome:
    """Run the tool once within ``limit_s``; every error becomes an ``Outcome`` (cancellation propagates)."""
    if limit_s <= 0:
        return Outcome.failure("TimeoutError", "no time left before the request's deadline")
    try:
        async with asyncio.timeout(limit_s) as scope:
            value = await tool.call(args)
    except TimeoutError as exc:
        if scope.expired():
            return Outcome.failure("TimeoutError", f"the attempt took longer than {limit_s:.2f}s")
        return Outcome.from_exception(exc)
    except Exception as exc:
        return Outcome.from_exception(exc)
    try:
        return Outcome.from_value(value, tool.classifier)
    except Exception as exc:  # a broken per-tool classifier says nothing about the tool
        log.warning("classifier failed, taking the value as a success: %s", exc, extra={"tool": tool.name})
        return Outcome.success(value)


def retry_events(request: ToolRequest, outcome: Outcome, attempt: int, ts: float) -> tuple[StepEvent, StepEvent]:
    """The step events of a failed attempt that will be retried (``protocols.conventions``, "Retry events")."""
    what = f"{outcome.error_type or 'Error'}: {outcome.message}" if outcome.message else outcome.error_type
    observation = observation_text(outcome.value) if outcome.hidden else None
    error = clip(f"{what} (attempt {attempt}; retrying)")
    return conventions.retry_events(request, error=error, observation=observation, ts=ts)


def failure(call_id: str, error_type: str, message: str, *, attempts: int) -> ToolResult:
    """A call that ends without running (or finishing) the tool."""
    return ToolResult(
        call_id=call_id, ok=False, error=clip(message), error_type=error_type, attempts=attempts,
        stop_reason=StopReason.TOOL_FAILURE,
    )  # fmt: skip


__all__ = ["failure", "retry_events", "run_once"]
