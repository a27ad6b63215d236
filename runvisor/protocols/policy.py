"""The run policy: every detector threshold and budget, each with a default (DESIGN §4).

Thresholds are fields here, never literals in the detectors. A run's `start` event may
carry a policy; otherwise the supervisor's defaults apply: these, or a file's
(:func:`parse_policy`, ``runvisor supervisor --policy FILE``).
"""

from __future__ import annotations

import difflib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runvisor.errors import ConfigError

Severity = Literal["warn", "pause", "stop"]


class Policy(BaseModel):
    """Detection thresholds, grading and budgets for one run. ``None`` budgets are unlimited."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    # Window
    window: int = Field(default=64, ge=8, le=4096, description="actions (tool call + result) kept per run")

    # Loops
    repeat_threshold: int = Field(default=3, ge=2, description="identical actions+observations in a row")
    cycle_max_period: int = Field(default=10, ge=2, le=32, description="longest repeated block, in actions")
    cycle_min_repeats: int = Field(default=3, ge=2, description="repeats of a block to call it a cycle")
    near_dup_threshold: int = Field(default=4, ge=2, description="near-identical action+observation pairs")
    near_dup_max_distance: int = Field(
        default=8, ge=0, le=32, description="simhash Hamming distance (unrelated texts: about 32; 8: cosine ~0.92)"
    )
    same_error_threshold: int = Field(default=4, ge=2, description="same normalized error repeated")
    fruitless_search_threshold: int = Field(default=4, ge=2, description="same search finding nothing, anywhere")
    empty_answers_threshold: int = Field(
        default=6, ge=2, description="negative answers (no matches, not found, empty search) in the span, any query"
    )
    empty_answers_span: int = Field(default=8, ge=2, le=64, description="recent actions judged for empty answers")
    rejected_input_threshold: int = Field(
        default=5, ge=2, description="the agent's input rejected (parse errors, unknown commands, ...) in 2x actions"
    )
    replay_min_block: int = Field(default=5, ge=2, le=64, description="a block of actions replayed in order, anywhere")
    error_rhythm_threshold: int = Field(
        default=6, ge=2, description="the same error again and again, each within error_rhythm_gap actions"
    )
    error_rhythm_gap: int = Field(default=4, ge=1, le=64, description="most actions between two of the same error")

    # Progress
    no_progress_steps: int = Field(default=30, ge=4, description="actions without novelty or progress")

    # Stalls (seconds, on the supervisor's clock)
    stall_timeout_s: float = Field(default=300.0, gt=0, description="silence from a running run")
    tool_timeout_s: float = Field(default=120.0, gt=0, description="tool_call without its tool_result")

    # Retries and tool failures
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1, description="retries per recent call")
    retry_budget_floor: int = Field(default=5, ge=0, description="retries always allowed")
    max_consecutive_failures: int = Field(default=5, ge=1, description="failed tool results in a row")

    # Budgets (None = unlimited)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=1)
    max_wall_s: float | None = Field(default=None, gt=0)

    # Grading: the first finding warns, a confirmed one acts.
    loop_action: Severity = "stop"
    progress_action: Severity = "pause"
    stall_action: Severity = "pause"
    failure_action: Severity = "stop"
    budget_action: Severity = "stop"
    warn_first: bool = Field(default=True, description="publish a warning verdict before acting")


def parse_policy(text: str, source: str = "policy") -> Policy:
    """A policy from JSON text: an object of :class:`Policy` fields (the others keep their defaults).

    Stricter than the wire, which ignores unknown fields: in a file a misspelt field would
    silently leave a budget unlimited, so it is an error, with the field it probably meant.

    Raises:
        ConfigError: not a JSON object, an unknown field, or a value out of range; the message
            starts with ``source`` and names each field at fault.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of policy fields, got {type(data).__name__}")
    known = list(Policy.model_fields)
    unknown = [name for name in data if name not in Policy.model_fields]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(str(name), known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{source}: unknown field {', '.join(hints)}; the fields are {', '.join(known)}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None
