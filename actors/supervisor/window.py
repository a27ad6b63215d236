"""`RunWindow`: the per-run state the detectors read (DESIGN §4).

Memory is bounded: the last ``Policy.window`` *actions* live in fixed-size numpy ring
buffers (about 50 bytes per action), plus a few scalars. An action is a ``tool_call``
paired with its ``tool_result`` by ``call_id``, or a ``message`` with ``ok=false`` (a
mini-swe-agent format error is the agent acting wrongly, not talking).

Work per event is O(1) amortized, apart from a handful of vectorized numpy compares over
the ring, which for the default window of 64 cost about a microsecond each. Rolling
cycle matching keeps, for each period ``p``, how many consecutive actions equalled the
one ``p`` back, so a cycle check never rescans the window.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from actors.supervisor.classify import error_text, is_hidden_failure
from actors.supervisor.fingerprint import (
    action_digest,
    digest,
    normalize,
    normalize_loose,
    observation_fingerprint,
    render_args,
    short,
)
from protocols.messages import StepEvent, StepKind, Verdict
from protocols.policy import Policy

_MASK64 = (1 << 64) - 1
_BARE_STATUS = re.compile(r"(?:return ?code|exit(?:ed)?(?: with)?(?: code| status)?|status)[ :=]*-?\d+$", re.IGNORECASE)
_PAIR_MULT = 0x9E3779B97F4A7C15  # any odd 64-bit constant: makes (a, b) and (b, a) differ

FAILED = 1
RETRY = 2
TRIVIAL = 4  # empty output of a navigation command: never evidence of a loop (DESIGN §4)
MESSAGE = 8  # a malformed agent message (format error), not a tool call

#: Commands whose empty output is never evidence of a loop: moving around and listing
#: (DESIGN §4). A classification, not a threshold, so it lives here rather than in Policy.
NAVIGATION_TOOLS = frozenset({"cd", "ls", "pwd", "pushd", "popd", "dir", "tree", "clear", "true"})


@dataclass(slots=True)
class PendingCall:
    """A ``tool_call`` waiting for its result."""

    seq: int
    seen_at: float
    tool: str | None
    action: int
    label: str


class RunWindow:
    """The bounded recent history and counters of one run."""

    # Slots: thousands of windows per worker, and a per-instance dict would outweigh the rings.
    __slots__ = (
        "act",
        "acted",
        "agent",
        "best_progress",
        "best_progress_at",
        "completed",
        "consecutive_failures",
        "cost_usd",
        "current_tool",
        "cycle_run",
        "err",
        "errors",
        "events",
        "first_ts",
        "flags",
        "labels",
        "last_error_text",
        "last_kind",
        "last_novel_at",
        "last_obs_text",
        "last_seen",
        "last_seq",
        "last_ts",
        "last_verdict",
        "n",
        "obs",
        "pair",
        "paused",
        "pending",
        "policy",
        "progress",
        "retries",
        "run_id",
        "seq",
        "sim",
        "size",
        "snooze_until",
        "steps",
        "stop_reason",
        "stopped",
        "streak",
        "task",
        "tokens",
        "tool_calls",
        "warned",
    )  # fmt: skip

    def __init__(self, run_id: str, policy: Policy) -> None:
        """Create an empty window sized by ``policy.window`` actions."""
        self.run_id = run_id
        self.policy = policy
        size = policy.window
        self.size = size
        # Ring buffers, indexed by action number modulo ``size``.
        self.act = np.zeros(size, dtype=np.uint64)
        self.obs = np.zeros(size, dtype=np.uint64)
        self.pair = np.zeros(size, dtype=np.uint64)
        self.sim = np.zeros(size, dtype=np.uint64)
        self.err = np.zeros(size, dtype=np.uint64)
        self.seq = np.zeros(size, dtype=np.int64)
        self.flags = np.zeros(size, dtype=np.uint8)
        self.labels: deque[str] = deque(maxlen=policy.cycle_max_period + 1)
        self.n = 0  # actions seen so far
        # Rolling state of the loop detectors.
        self.cycle_run = [0] * (policy.cycle_max_period + 1)
        self.streak = 0
        self.consecutive_failures = 0
        self.last_obs_text = ""
        self.last_error_text = ""
        # Counters.
        self.events = 0
        self.steps = 0
        self.tokens = 0
        self.cost_usd = 0.0
        self.tool_calls = 0
        self.retries = 0
        self.errors = 0
        # Progress and novelty.
        self.progress: float | None = None
        self.best_progress: float | None = None
        self.best_progress_at = 0
        self.last_novel_at = 0
        # Identity and clocks.
        self.task: str | None = None
        self.agent: str | None = None
        self.first_ts: float | None = None
        self.last_ts = 0.0
        self.last_seq = 0
        self.last_kind: StepKind | None = None
        self.current_tool: str | None = None
        self.last_seen = 0.0  # supervisor clock
        self.pending: OrderedDict[str, PendingCall] = OrderedDict()
        # Engine bookkeeping.
        self.warned: set[str] = set()
        self.acted: set[str] = set()
        self.stopped = False
        self.paused = False
        self.completed = False
        self.stop_reason: str | None = None
        self.last_verdict: Verdict | None = None
        self.snooze_until = 0.0

    # ------------------------------------------------------------------ updates

    def observe(self, event: StepEvent, now: float) -> bool:
        """Fold one event into the window.

        Args:
            event: the step event, in seq order.
            now: the supervisor's clock when the event arrived.

        Returns:
            True when the event completed an action (the loop detectors then run).
        """
        self.events += 1
        self.last_seen = now
        self.snooze_until = 0.0
        if self.first_ts is None:
            self.first_ts = event.ts
        self.last_ts = max(self.last_ts, event.ts)
        self.last_seq = event.seq
        self.last_kind = event.kind
        if event.agent and event.agent != "user":
            self.agent = event.agent
        self.tokens += (event.tokens_in or 0) + (event.tokens_out or 0)
        self.cost_usd += event.cost_usd or 0.0
        if event.progress is not None:
            self._progress(event.progress)
        kind = event.kind
        if kind == "start":
            self.task = event.task or self.task
        elif kind == "tool_call":
            self._call(event, now)
        elif kind == "tool_result":
            return self._result(event)
        elif kind == "message":
            return self._message(event)
        elif kind == "final":
            self.completed = True
            self.pending.clear()
        return False

    def _progress(self, value: float) -> None:
        self.progress = value
        if self.best_progress is None or value > self.best_progress:
            self.best_progress = value
            self.best_progress_at = self.n

    def _call(self, event: StepEvent, now: float) -> None:
        self.steps += 1
        self.tool_calls += 1
        self.current_tool = event.tool
        call = PendingCall(event.seq, now, event.tool, action_digest(event.tool, event.args), _label(event))
        key = event.call_id or f"seq-{event.seq}"
        self.pending[key] = call
        if len(self.pending) > self.size:
            # An agent that never reports results must not grow the window without bound.
            self.pending.popitem(last=False)

    def _result(self, event: StepEvent) -> bool:
        call = self.pending.pop(event.call_id, None) if event.call_id else None
        if call is None:
            # Traffic that began mid-run, or a result without its call: the result names the action.
            self.steps += 1
            self.tool_calls += 1
            call = PendingCall(
                event.seq, self.last_seen, event.tool, action_digest(event.tool, event.args), _label(event)
            )
        self.current_tool = None
        failed = event.ok is False or is_hidden_failure(event.observation)
        self._push(call.action, call.label, call.tool, call.seq, event.observation, failed, event.error)
        return True

    def _message(self, event: StepEvent) -> bool:
        if event.ok is not False:
            # A conversational turn: not an action, but new content from the user is novelty.
            if event.observation:
                obs, _ = observation_fingerprint(event.observation)
                if not bool(np.any(self.obs == np.uint64(obs))):
                    self.last_novel_at = self.n
            return False
        self.steps += 1
        text = (event.args or {}).get("text") if event.args else None
        # A malformed response is judged by the harness's complaint, not by its varying prose.
        action = digest(f"message\x1f{normalize_loose(event.error or '')}")
        label = short(f"message {text or ''}")
        self._push(action, label, "message", event.seq, event.observation, True, event.error)
        return True

    def _push(
        self,
        action: int,
        label: str,
        tool: str | None,
        seq: int,
        observation: str | None,
        failed: bool,
        error: str | None,
    ) -> None:
        obs, sim = observation_fingerprint(observation)
        size = self.size
        i = self.n % size
        prev = (self.n - 1) % size
        has_prev = self.n > 0
        pair = ((action * _PAIR_MULT) ^ obs) & _MASK64 or 1
        flags = 0
        if failed:
            flags |= FAILED
            self.errors += 1
        # A malformed message is the agent's failure, not a tool's: it neither extends nor breaks the streak.
        if tool != "message":
            self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        if has_prev and int(self.act[prev]) == action and self.flags[prev] & FAILED:
            flags |= RETRY
            self.retries += 1
        if tool == "message":
            flags |= MESSAGE
        if tool in NAVIGATION_TOOLS and _is_empty_output(observation):
            flags |= TRIVIAL
        novel = not bool(np.any(self.obs == np.uint64(obs)))
        if novel:
            self.last_novel_at = self.n + 1
        # Rolling loop state, before the slot is overwritten.
        self.streak = self.streak + 1 if has_prev and int(self.pair[prev]) == pair else 1
        for p in range(2, len(self.cycle_run)):
            if self.n >= p and int(self.pair[(self.n - p) % size]) == pair:
                self.cycle_run[p] += 1
            else:
                self.cycle_run[p] = 0
        self.act[i] = action
        self.obs[i] = obs
        self.pair[i] = pair
        self.sim[i] = sim
        # Exact normalization (numbers kept): "found 2 actions" and "found 3 actions" are different complaints.
        text = error_text(observation, error) if failed else ""
        # A bare exit status ("returncode 1" after an empty output) names no error: a grep that
        # found nothing in four different files is four different questions, not one error.
        # The tool is left out on purpose: each variation of an install command (pip, pip3,
        # python -m pip) failing with the same missing-package error is one error.
        self.err[i] = digest(normalize(text)) if text and not _BARE_STATUS.match(text) else 0
        self.seq[i] = seq
        self.flags[i] = flags
        self.labels.append(label)
        self.last_obs_text = observation or ""
        self.last_error_text = error or ""
        self.n += 1

    # ------------------------------------------------------------------ queries

    def recent(self, k: int) -> list[int]:
        """Ring indices of the last ``k`` actions, oldest first."""
        k = min(k, self.n, self.size)
        return [(self.n - k + j) % self.size for j in range(k)]

    def valid(self) -> np.ndarray[tuple[int], np.dtype[np.bool_]]:
        """Mask of ring slots that hold an action."""
        if self.n >= self.size:
            return np.ones(self.size, dtype=np.bool_)
        mask = np.zeros(self.size, dtype=np.bool_)
        mask[: self.n] = True
        return mask

    def seqs(self, indices: list[int] | np.ndarray[tuple[int], np.dtype[np.intp]]) -> tuple[int, ...]:
        """The seq numbers of ring slots, in seq order."""
        return tuple(sorted(int(self.seq[i]) for i in indices))

    @property
    def last(self) -> int:
        """Ring index of the latest action (valid only when ``n > 0``)."""
        return (self.n - 1) % self.size

    @property
    def finished(self) -> bool:
        """True once the run completed or was stopped: the engine no longer judges it."""
        return self.stopped or self.completed


def _label(event: StepEvent) -> str:
    """A short human name for an action: the shell command itself, or ``tool args``."""
    rendered = render_args(event.args)
    tool = event.tool or ""
    if rendered.startswith(tool):
        return short(rendered)
    return short(f"{tool} {rendered}".strip())


def _is_empty_output(observation: str | None) -> bool:
    text = (observation or "").replace("<returncode>0</returncode>", "").replace("<output>", "")
    return not text.replace("</output>", "").strip()


__all__ = ["FAILED", "MESSAGE", "NAVIGATION_TOOLS", "RETRY", "TRIVIAL", "PendingCall", "RunWindow"]
