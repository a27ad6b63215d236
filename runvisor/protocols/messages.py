"""The wire models: one frozen pydantic model per message (DESIGN §2, §10).

Unknown fields are ignored so older readers accept newer senders; every field added
later must have a default. Limits (run_id shape, sizes, finite non-negative counters)
are enforced here, so every decoder rejects bad input the same way.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from runvisor.errors import ConfigError
from runvisor.protocols.policy import Policy, Severity
from runvisor.protocols.reasons import RunStatus, StopReason

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_OBSERVATION_CHARS = 65_536
MAX_ARGS_CHARS = 65_536
MAX_TEXT_CHARS = 4_096

StepKind = Literal["start", "llm", "tool_call", "tool_result", "message", "heartbeat", "final"]
CommandName = Literal["pause", "resume", "kill", "stop"]


def check_run_id(value: str) -> str:
    """Return ``value`` if it is one NATS subject token, else raise ``ConfigError`` saying why."""
    if not RUN_ID_PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ConfigError(f"run_id must be one subject token of 1-128 characters from [A-Za-z0-9_-], got {shown!r}")
    return value


def args_fit(value: dict[str, Any] | None) -> bool:
    """Whether ``args`` are within the protocol's size limit (the one measure for models and the agent SDK).

    Raises:
        ValueError: ``args`` nest so deep that measuring them exhausts Python's recursion (no tool's
            real arguments do); raised as the model's validation error, never as RecursionError.
    """
    try:
        return value is None or len(repr(value)) <= MAX_ARGS_CHARS
    except RecursionError:
        raise ValueError("args nested too deeply to be a tool's arguments") from None


def _check_args_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not args_fit(value):
        raise ValueError(f"args too large: over {MAX_ARGS_CHARS} characters; send a digest or a reference")
    return value


#: Bounds on numbers, so that no run's sums can become unencodable (msgpack ends at 2**64 - 1) or
#: infinite, and every reader holds them exactly (2**53: JSON readers with float64 numbers).
#: One event's tokens and cost are bounded far above any real LLM call; what a run adds up is
#: saturated at the bound where it is reported (``Engine.state``), never rejected.
MAX_COUNT = 2**53
MAX_MONEY = 1e15
MAX_TOKENS_PER_EVENT = 10**9
MAX_COST_PER_EVENT = 1e6

RunId = Annotated[str, AfterValidator(check_run_id)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Money = Annotated[float, Field(ge=0, le=MAX_MONEY)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS_PER_EVENT)]
Cost = Annotated[float, Field(ge=0, le=MAX_COST_PER_EVENT)]
Args = Annotated[dict[str, Any] | None, AfterValidator(_check_args_size)]
Observation = Annotated[str, Field(max_length=MAX_OBSERVATION_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class StepEvent(_Wire):
    """One thing an agent did, exactly the recorded-traffic fields of DESIGN §10."""

    run_id: RunId
    seq: Count
    ts: Money
    kind: StepKind
    agent: Text | None = None
    task: Observation | None = None
    tool: Text | None = None
    call_id: Text | None = None
    args: Args = None
    observation: Observation | None = None
    ok: bool | None = None
    error: Observation | None = None
    tokens_in: Tokens | None = None
    tokens_out: Tokens | None = None
    cost_usd: Cost | None = None
    progress: float | None = None
    policy: Policy | None = None
    #: On a ``start`` event: the run that started this one as a sub-agent.
    parent_run_id: RunId | None = None


class Spent(_Wire):
    """What a pattern cost from its onset (the first seq of its evidence) to the verdict."""

    since_seq: Count
    steps: Count = 0
    tokens: Count = 0
    cost_usd: Money = 0.0

    def describe(self) -> str:
        """One phrase for people: "23 steps, 42,100 tokens, $0.31 since seq 41"."""
        return f"{self.steps} steps, {self.tokens:,} tokens, ${self.cost_usd:.2f} since seq {self.since_seq}"


class Evidence(_Wire):
    """Why a verdict was reached: a sentence a human reads, the seqs that prove it, and what it cost."""

    summary: Text
    seqs: tuple[Count, ...] = ()
    spent: Spent | None = None


class Verdict(_Wire):
    """A detector's finding about one run, graded by severity."""

    run_id: RunId
    reason: StopReason
    severity: Severity
    evidence: Evidence
    detector: Text = ""
    at_seq: Count = 0
    ts: Money = Field(default_factory=time.time)
    hint: Text = ""


_DEFAULT_REASON: dict[str, StopReason] = {
    "pause": StopReason.USER_PAUSED,
    "kill": StopReason.USER_KILLED,
}


class Command(_Wire):
    """A control command on ``rv.ctl.<run>``, from an operator or a supervisor."""

    cmd: CommandName
    reason: StopReason | None = None
    issuer: Text = "operator"
    note: Text | None = None
    evidence: Evidence | None = None
    #: The step that triggered a supervisor's command (for latency and audit); None from people.
    at_seq: Count | None = None
    ts: Money = Field(default_factory=time.time)

    @model_validator(mode="before")
    @classmethod
    def _default_reason(cls, data: Any) -> Any:
        # ``cmd`` is checked as a string first: a list or a map there ({"cmd": ["pause"]}) must be a
        # validation error naming the field, not a TypeError out of the dict lookup.
        cmd = data.get("cmd") if isinstance(data, dict) else None
        if isinstance(cmd, str) and cmd in _DEFAULT_REASON and data.get("reason") is None:
            return {**data, "reason": _DEFAULT_REASON[cmd]}
        return data

    @model_validator(mode="after")
    def _stop_needs_reason(self) -> Command:
        if self.cmd == "stop" and self.reason is None:
            raise ValueError("a stop command needs a reason (one of the StopReason names)")
        return self

    def describe(self) -> str:
        """One line naming the command, its issuer, reason and note, for logs and exceptions."""
        reason = self.reason.value if self.reason else ""
        note = f": {self.note}" if self.note else ""
        summary = f" ({self.evidence.summary})" if self.evidence else ""
        return f"{self.cmd} by {self.issuer} {reason}{note}{summary}".replace("  ", " ").strip()


class Counters(_Wire):
    steps: Count = 0
    tokens: Count = 0
    cost_usd: Money = 0.0
    tool_calls: Count = 0
    retries: Count = 0
    errors: Count = 0


class ProgressSignal(_Wire):
    """ "Are we closer to the goal than several steps ago?" for one run, read by operators (DESIGN §4).

    ``source`` is ``"agent"`` when the agent reports ``progress`` (``value`` is its best value so
    far), else ``"novelty"`` (``value`` is the share of the last ``window`` actions whose observation
    was new). ``stale_actions`` counts actions since progress last rose or a new observation came;
    the no-progress detector acts when it reaches ``limit``.
    """

    source: Literal["agent", "novelty"]
    value: float = Field(default=0.0, allow_inf_nan=False)
    stale_actions: Count = 0
    limit: Count = 0
    window: Count = 0


class RunState(_Wire):
    """The live state of one run, kept in KV ``rv_runs`` by the run's supervisor."""

    run_id: RunId
    status: RunStatus = RunStatus.RUNNING
    stop_reason: StopReason | None = None
    task: Observation | None = None
    agent: Text | None = None
    last_seq: Count = 0
    last_kind: StepKind | None = None
    current_tool: Text | None = None
    counters: Counters = Counters()
    progress: float | None = None
    started_at: Money = 0.0
    updated_at: Money = 0.0
    last_verdict: Verdict | None = None
    signal: ProgressSignal | None = None
    #: The run that started this one as a sub-agent (from its ``start`` event); None for a top-level run.
    parent_run_id: RunId | None = None


class FamilyEntry(_Wire):
    """What a sub-agent spent, with its own sub-agents, as its supervisor last wrote it to KV ``rv_family``
    (key ``p<parent's partition>.<parent>.<run>``), for the supervisor of its parent (see
    ``supervisor/_family.py``). JSON, like ``rv_runs``: ``nats kv watch rv_family`` is readable."""

    run_id: RunId
    parent_run_id: RunId
    status: RunStatus = RunStatus.RUNNING
    stop_reason: StopReason | None = None
    #: The run's own counters plus those of its sub-agents, as far down as ``depth`` says.
    counters: Counters = Counters()
    #: How many sub-agents below this run ``counters`` includes.
    sub_agents: Count = 0
    #: Levels of runs ``counters`` covers: 1 for the run alone, 2 with its children, ...
    depth: Annotated[int, Field(ge=1, le=64)] = 1
    last_seq: Count = 0
    updated_at: Money = 0.0


class Intent(_Wire):
    """An external action about to happen (written before the call, marked done after).

    ``in_process`` marks a tool that ran in the agent's own process (``Run.tool``): no executor
    recorded its result, so after a crash only the agent can tell whether it took effect.
    """

    tool: Text
    call_id: Text
    args_digest: Text
    idempotency_key: Text
    attempt: Annotated[int, Field(ge=1)] = 1
    state: Literal["open", "done"] = "open"
    opened_at: Money = Field(default_factory=time.time)
    in_process: bool = False


class Checkpoint(_Wire):
    """An agent's resumable state in KV ``rv_checkpoints``.

    ``intents`` are the calls in flight, several when tool calls run in parallel. ``intent`` is
    kept for readers of the one-intent format: the last call opened that is still open, else the
    last call made (marked done). Read what was in flight with :attr:`open_intents`, which also
    reads checkpoints written before ``intents`` existed.
    """

    run_id: RunId
    seq: Count
    status: RunStatus = RunStatus.RUNNING
    stop_reason: StopReason | None = None
    goal: Observation | None = None
    policy: Policy | None = None
    state: dict[str, Any] = Field(default_factory=dict)
    intent: Intent | None = None
    ts: Money = Field(default_factory=time.time)
    intents: tuple[Intent, ...] = ()
    parent_run_id: RunId | None = None

    @property
    def open_intents(self) -> tuple[Intent, ...]:
        """The calls in flight when this checkpoint was written, in the order they were opened."""
        if self.intents:
            return tuple(intent for intent in self.intents if intent.state == "open")
        if self.intent is not None and self.intent.state == "open":
            return (self.intent,)
        return ()


class ToolRequest(_Wire):
    """A call from an agent to a tool executor over ``rv.tool.<name>``."""

    run_id: RunId
    call_id: Text
    tool: Text
    args: Args = None
    idempotency_key: Text
    seq: Count = 0
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


class ToolResult(_Wire):
    """The executor's answer: a success, or a failure with its stop reason."""

    call_id: Text
    ok: bool
    observation: Observation | None = None
    error: Observation | None = None
    error_type: Text | None = None
    attempts: Annotated[int, Field(ge=0)] = 1
    stop_reason: StopReason | None = None
    retry_after_s: Money | None = None
    replayed: bool = False


__all__ = [
    "MAX_ARGS_CHARS",
    "MAX_COST_PER_EVENT",
    "MAX_COUNT",
    "MAX_MONEY",
    "MAX_OBSERVATION_CHARS",
    "MAX_TOKENS_PER_EVENT",
    "RUN_ID_PATTERN",
    "Checkpoint",
    "Command",
    "CommandName",
    "Counters",
    "Evidence",
    "FamilyEntry",
    "Intent",
    "Policy",
    "ProgressSignal",
    "RunState",
    "Spent",
    "StepEvent",
    "StepKind",
    "ToolRequest",
    "ToolResult",
    "Verdict",
    "args_fit",
    "check_run_id",
]
