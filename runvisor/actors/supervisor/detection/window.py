"""`RunWindow`: the per-run state the detectors read (DESIGN §4).

Memory is bounded and small (under 4 KB a run at the default window of 64): the last
``Policy.window`` *actions* live in packed rings (about 25 bytes per action: observation
and (action, observation) fingerprints, seq, flags), and the fields only the short-span
detectors read (action fingerprint, SimHash, error digest, negative-answer key) in rings
just as long as those spans. An action is a ``tool_call`` paired with its ``tool_result`` by ``call_id``, or a
``message`` with ``ok=false`` (a mini-swe-agent format error is the agent acting wrongly,
not talking).

Work per event is O(1): where else the latest fingerprints occur in the window is one
C-speed ``bytearray.find`` (see ``_ring``), and rolling cycle matching keeps, for each
period ``p``, how many consecutive actions equalled the one ``p`` back, so a cycle check
never rescans the window. A pair never seen before in the window resets all of that at once.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass

from runvisor.actors.supervisor.detection import _ring
from runvisor.actors.supervisor.detection._actions import NAVIGATION_TOOLS, action_of, is_empty_output
from runvisor.actors.supervisor.detection._negative import negative_key
from runvisor.actors.supervisor.detection.classify import content_required, error_text, is_hidden_failure
from runvisor.actors.supervisor.detection.fingerprint import (
    digest,
    normalize,
    normalize_loose,
    observation_fingerprint,
    short,
)
from runvisor.protocols.messages import RunState, StepEvent, StepKind, Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus

_MASK64 = (1 << 64) - 1
_BARE_STATUS = re.compile(r"(?:return ?code|exit(?:ed)?(?: with)?(?: code| status)?|status)[ :=]*-?\d+$", re.IGNORECASE)
_PAIR_MULT = 0x9E3779B97F4A7C15  # any odd 64-bit constant: makes (a, b) and (b, a) differ

FAILED = 1
RETRY = 2
TRIVIAL = 4  # empty output of a navigation command: never evidence of a loop (DESIGN §4)
MESSAGE = 8  # a malformed agent message (format error), not a tool call


@dataclass(slots=True)
class PendingCall:
    """A ``tool_call`` waiting for its result."""

    seq: int
    seen_at: float
    tool: str | None
    action: int
    label: str
    text: str  # the rendered arguments, only until the result comes (a negative answer needs the question)


class RunWindow:
    """The bounded recent history and counters of one run.

    Who writes what is fixed (see ``__slots__``): the window folds events into its own state,
    the Engine records its decisions and the commands applied, and detectors only read.
    """

    # Slots: thousands of windows per worker, and a per-instance dict would outweigh the rings.
    __slots__ = (  # noqa: RUF023 - grouped by who writes them, sorted within each group
        # Written only by the window itself, as it folds events in (``observe``, ``restore``,
        # ``set_policy``): the rings, the rolling detector state, the counters, identity, clocks.
        "act",
        "acted",
        "agent",
        "best_progress",
        "best_progress_at",
        "completed",
        "consecutive_failures",
        "cost_usd",
        "counted_until",
        "current_tool",
        "cycle_run",
        "err",
        "errors",
        "events",
        "fail_brief",
        "first_ts",
        "flags",
        "label",
        "labels",
        "last_kind",
        "last_novel_at",
        "last_result_call",
        "last_seq",
        "last_ts",
        "n",
        "neg",
        "obs",
        "obs_brief",
        "pair",
        "pair_count",
        "pending",
        "policy",
        "progress",
        "retries",
        "retry_next",
        "run_id",
        "seq",
        "sim",
        "size",
        "steps",
        "streak",
        "task",
        "tokens",
        "tool_calls",
        # Written only by the Engine: what it decided and what commands did (``apply_command``,
        # grading, stall timers). Detectors only read a window; they never write one.
        "last_seen",
        "last_verdict",
        "paused",
        "snooze_until",
        "stop_reason",
        "stopped",
        "warned",
    )  # fmt: skip

    def __init__(self, run_id: str, policy: Policy) -> None:
        """Create an empty window sized by ``policy.window`` actions."""
        self.run_id = run_id
        self.n = 0  # actions seen so far
        self.set_policy(policy)
        # Rolling state of the loop detectors.
        self.streak = 0
        self.pair_count = 0  # slots holding the latest (action, observation) pair
        self.consecutive_failures = 0
        # One line of the latest observation, and of the latest failure, for evidence:
        # the full text can be 64 KB, and the window must not keep it alive.
        self.obs_brief = ""
        self.fail_brief = ""
        # Counters; events up to ``counted_until`` are in them already (see ``restore``). Seqs
        # may start at 0 (recorded traffic does): -1 means none is.
        self.counted_until = -1
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
        # Oldest first (dicts keep insertion order); a plain dict is half an OrderedDict's size.
        self.pending: dict[str, PendingCall] = {}
        # The call_id of the latest tool_result: a tool_call reusing it is an executor's retry attempt.
        self.last_result_call: str | None = None
        self.retry_next = False  # the next recorded action is an executor's retry attempt
        # Engine bookkeeping: bit masks of reasons (see engine.py), not sets, to stay small.
        self.warned = 0
        self.acted = 0
        self.stopped = False
        self.paused = False
        self.completed = False
        self.stop_reason: str | None = None
        self.last_verdict: Verdict | None = None
        self.snooze_until = 0.0

    def set_policy(self, policy: Policy) -> None:
        """Adopt ``policy`` and size the rings by it; only before the first action."""
        if self.n:
            raise ValueError("a window's policy is fixed once it holds actions")
        self.policy = policy
        size = policy.window
        self.size = size
        # Whole-window rings, indexed by action number modulo ``size``.
        self.obs = _ring.new_ring(size)
        self.pair = _ring.new_ring(size)
        # Seqs as their low 32 bits: :meth:`seqs` restores them from ``last_seq`` (a window
        # never spans 2**31 seqs), which halves the largest ring.
        self.seq = array("I", bytes(4 * size))
        self.flags = bytearray(size)
        # Short rings, indexed by action number modulo their own length: only the
        # near-duplicate and same-error detectors read these, over their short spans.
        self.act = array("Q", bytes(8 * min(size, 2 * policy.near_dup_threshold)))
        self.sim = array("Q", bytes(8 * len(self.act)))
        self.err = array("Q", bytes(8 * min(size, 2 * policy.same_error_threshold)))
        # Fingerprints of negative answers (see ``_negative``), 0 for any other answer.
        self.neg = array("Q", bytes(8 * min(size, 2 * policy.fruitless_search_threshold)))
        period = policy.cycle_max_period
        # The last ``period`` action labels, cut to what cycle evidence shows, as one string of
        # fixed-width slots padded with newlines (never in a label): one object, not ``period``.
        self.labels = _PAD * (_LABEL_WIDTH * period)
        self.label = ""  # the latest action's label, whole
        self.cycle_run = array("I", bytes(4 * (period + 1)))  # 108 bytes; a list of ints is 144

    # ------------------------------------------------------------------ updates

    def restore(self, state: RunState) -> None:
        """Take back what the run's stored state says that this window has not seen.

        For a run first seen mid-way (a takeover replaying less than the whole run, or a run back
        after its eviction): its counters, as of ``state.last_seq``, so that its budgets go on
        from there (the events up to that seq that are replayed are judged again, not counted
        again); its identity and start; and a terminal end: a stopped or completed run stays so.
        """
        counters = state.counters
        self.steps, self.tokens, self.cost_usd = counters.steps, counters.tokens, counters.cost_usd
        self.tool_calls, self.retries, self.errors = counters.tool_calls, counters.retries, counters.errors
        self.counted_until = state.last_seq
        self.last_seq = max(self.last_seq, state.last_seq)
        self.first_ts = state.started_at or self.first_ts
        self.last_ts = max(self.last_ts, state.updated_at)
        self.task = self.task or state.task
        self.agent = self.agent or state.agent
        if state.progress is not None:
            self.progress = self.best_progress = state.progress
        self.last_verdict = state.last_verdict
        if state.status is RunStatus.STOPPED:
            self.stopped = True
            self.stop_reason = state.stop_reason
        elif state.status is RunStatus.COMPLETED:
            self.completed = True

    def observe(self, event: StepEvent, now: float) -> bool:
        """Fold one event into the window.

        Args:
            event: the step event, in seq order.
            now: the supervisor's clock when the event arrived.

        Returns:
            True when the event completed an action (the loop detectors then run).
        """
        if event.seq > self.counted_until:
            return self._fold(event, now)
        counted = (self.steps, self.tokens, self.cost_usd, self.tool_calls, self.retries, self.errors)
        acted = self._fold(event, now)
        self.steps, self.tokens, self.cost_usd, self.tool_calls, self.retries, self.errors = counted
        return acted

    def _fold(self, event: StepEvent, now: float) -> bool:
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
            self.pending = {}
        return False

    def _progress(self, value: float) -> None:
        self.progress = value
        if self.best_progress is None or value > self.best_progress:
            self.best_progress = value
            self.best_progress_at = self.n

    def _call(self, event: StepEvent, now: float) -> None:
        if event.call_id is not None and event.call_id == self.last_result_call and self.n:
            # A tool executor retrying the call whose failed attempt was just recorded (same call_id):
            # one call with several attempts, not an agent repeating itself. The failed attempt stays a
            # failure and the next one counts as a retry, but it must not feed the loop detectors.
            self._forget_attempt(self.n - 1)
            self.retry_next = True
        else:
            self.steps += 1
            self.tool_calls += 1
        self.current_tool = event.tool
        action, label, text = action_of(event)
        call = PendingCall(event.seq, now, event.tool, action, label, text)
        key = event.call_id or f"seq-{event.seq}"
        self.pending[key] = call
        if len(self.pending) > self.size:
            # An agent that never reports results must not grow the window without bound.
            del self.pending[next(iter(self.pending))]

    def _result(self, event: StepEvent) -> bool:
        call = self.pending.pop(event.call_id, None) if event.call_id else None
        if not self.pending:
            # A dict keeps its table after its last key goes (184 bytes instead of 64): most
            # runs wait on the model with no call pending, so the empty one is a fresh dict.
            self.pending = {}
        if call is None:
            # Traffic that began mid-run, or a result without its call: the result names the action.
            self.steps += 1
            self.tool_calls += 1
            action, label, text = action_of(event)
            call = PendingCall(event.seq, self.last_seen, event.tool, action, label, text)
        self.current_tool = None
        self.last_result_call = event.call_id
        required = content_required(call.tool)
        failed = event.ok is False or is_hidden_failure(event.observation, content_required=required)
        self._push(call.action, call.label, call.tool, call.seq, event.observation, failed, event.error, call.text)
        return True

    def _message(self, event: StepEvent) -> bool:
        if event.ok is not False:
            # A conversational turn: not an action, but new content from the user is novelty.
            if event.observation:
                obs = digest(normalize(event.observation))
                if not _ring.contains(self.obs, _ring.key(obs)):
                    self.last_novel_at = self.n
            return False
        self.steps += 1
        text = (event.args or {}).get("text") if event.args else None
        # A malformed response is judged by the harness's complaint, not by its varying prose.
        action = digest(f"message\x1f{normalize_loose(event.error or '')}")
        label = short(f"message {text or ''}")
        self._push(action, label, "message", event.seq, event.observation, True, event.error, "")
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
        command: str,
    ) -> None:
        obs, sim = observation_fingerprint(observation)
        n = self.n
        i = n % self.size
        act = self.act
        prev_flags = self.flags[(n - 1) % self.size] if n else 0
        pair = ((action * _PAIR_MULT) ^ obs) & _MASK64 or 1
        flags = 0
        if failed:
            flags |= FAILED
            self.errors += 1
        # A malformed message is the agent's failure, not a tool's: it neither extends nor breaks the streak.
        if tool != "message":
            self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        if self.retry_next or (n and act[(n - 1) % len(act)] == action and prev_flags & FAILED):
            flags |= RETRY
            self.retries += 1
            self.retry_next = False
        if tool == "message":
            flags |= MESSAGE
            negative = 0
        elif tool in NAVIGATION_TOOLS and is_empty_output(observation):
            flags |= TRIVIAL
            negative = 0
        else:
            negative = negative_key(command, observation, failed, NAVIGATION_TOOLS)
        self.neg[n % len(self.neg)] = negative
        obs_key = _ring.key(obs)
        if not _ring.contains(self.obs, obs_key):
            self.last_novel_at = n + 1
        pair_key = _ring.key(pair)
        self._roll(pair_key)
        _ring.put(self.obs, i, obs_key)
        _ring.put(self.pair, i, pair_key)
        near = n % len(act)
        act[near] = action
        self.sim[near] = sim
        # Exact normalization (numbers kept): "found 2 actions" and "found 3 actions" are different complaints.
        text = error_text(observation, error) if failed else ""
        # A bare exit status ("returncode 1" after an empty output) names no error: a grep that
        # found nothing in four different files is four different questions, not one error.
        # The tool is left out on purpose: each variation of an install command (pip, pip3,
        # python -m pip) failing with the same missing-package error is one error.
        self.err[n % len(self.err)] = digest(normalize(text)) if text and not _BARE_STATUS.match(text) else 0
        self.seq[i] = seq & _LOW32
        self.flags[i] = flags
        self.label = label
        at = n % (len(self.labels) // _LABEL_WIDTH) * _LABEL_WIDTH
        # ``label`` is already one flat line (from ``short``), so cutting it is ``short(label, 30)``.
        cut = label if len(label) <= _LABEL_WIDTH else label[: _LABEL_WIDTH - 3] + "..."
        cut = cut.ljust(_LABEL_WIDTH, _PAD)
        self.labels = f"{self.labels[:at]}{cut}{self.labels[at + _LABEL_WIDTH :]}"
        self.obs_brief = short(observation)
        self.fail_brief = self.obs_brief if observation else short(error)
        self.n = n + 1

    def _forget_attempt(self, action_index: int) -> None:
        """Take a retried attempt out of loop and repeated-error matching (its failure and counters stay)."""
        # A fingerprint no real pair has (real ones are 64-bit hashes): unique per action index.
        unique = (1 << 63) | (action_index + 1)
        _ring.put(self.pair, action_index % self.size, _ring.key(unique))
        self.act[action_index % len(self.act)] = unique  # nor does it make the action a near-duplicate
        self.err[action_index % len(self.err)] = 0  # one call's attempts failing alike are one error
        self.neg[action_index % len(self.neg)] = 0
        self.streak = 0
        self.cycle_run[:] = _zeros(len(self.cycle_run))
        self.pair_count = 0

    def _roll(self, pair_key: bytes) -> None:
        """Update the rolling loop state from where the new pair occurs, before its slot is overwritten."""
        n, size = self.n, self.size
        earlier = _ring.slots_of(self.pair, pair_key)
        cycle_run = self.cycle_run
        if earlier:
            self.streak = self.streak + 1 if (n - 1) % size in earlier else 1
            for p in range(2, len(cycle_run)):
                cycle_run[p] = cycle_run[p] + 1 if n >= p and (n - p) % size in earlier else 0
            self.pair_count = len(earlier) + (n % size not in earlier)
        else:
            # A pair new to the window: no streak, no cycle, no recurrence (the common case).
            self.streak = 1
            cycle_run[:] = _zeros(len(cycle_run))
            self.pair_count = 1

    # ------------------------------------------------------------------ queries

    def recent(self, k: int) -> list[int]:
        """Ring indices of the last ``k`` actions, oldest first."""
        k = min(k, self.n, self.size)
        return [(self.n - k + j) % self.size for j in range(k)]

    def seqs(self, indices: list[int]) -> tuple[int, ...]:
        """The seq numbers of ring slots, in seq order."""
        seq, last = self.seq, self.last_seq
        # The signed 32-bit distance from the latest seq, added back to it.
        return tuple(sorted(last + ((seq[i] - last + _HALF32) & _LOW32) - _HALF32 for i in indices))

    def slots_of_last_pair(self) -> list[int]:
        """Ring slots holding the latest (action, observation) pair."""
        return _ring.slots_of(self.pair, _ring.key(_ring.get(self.pair, self.last)))

    def last_labels(self, k: int) -> list[str]:
        """Labels of the last ``k`` actions, oldest first, cut to 30 characters; empty when fewer are kept."""
        labels, width = self.labels, _LABEL_WIDTH
        period = len(labels) // width
        if k > min(self.n, period):
            return []
        slots = ((self.n - k + j) % period * width for j in range(k))
        return [labels[at : at + width].rstrip(_PAD) for at in slots]

    @property
    def last(self) -> int:
        """Ring index of the latest action (valid only when ``n > 0``)."""
        return (self.n - 1) % self.size

    @property
    def finished(self) -> bool:
        """True once the run completed or was stopped: the engine no longer judges it."""
        return self.stopped or self.completed

    def ring_bytes(self) -> int:
        """Bytes held by the rings' buffers (for the memory benchmark)."""
        rings = (self.obs, self.pair, self.seq, self.flags, self.act, self.sim, self.err, self.neg)
        return sum(len(r) * (r.itemsize if isinstance(r, array) else 1) for r in rings)


_LOW32 = (1 << 32) - 1
_HALF32 = 1 << 31
_LABEL_WIDTH = 30
_PAD = "\n"
_ZEROS: dict[int, array[int]] = {}


def _zeros(length: int) -> array[int]:
    zeros = _ZEROS.get(length)
    if zeros is None:
        zeros = _ZEROS[length] = array("I", bytes(4 * length))
    return zeros


__all__ = ["FAILED", "MESSAGE", "NAVIGATION_TOOLS", "RETRY", "TRIVIAL", "PendingCall", "RunWindow"]
