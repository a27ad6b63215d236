"""`RunWindow`: the per-run state the detectors read (DESIGN §4).

Memory is bounded and small (under 4 KB a run at the default window of 64): the last
``Policy.window`` *actions* live in packed rings (about 29 bytes per action: observation,
(action, observation) and error keys, seq, flags, and the tokens and cost spent before it,
so that a verdict can say what its pattern cost), and the fields only the short-span
detectors read (number-masked action fingerprint, SimHash, negative-answer key) in rings
just as long as those spans. An action is a ``tool_call`` paired with its ``tool_result`` by ``call_id``, or a
``message`` with ``ok=false`` (a mini-swe-agent format error is the agent acting wrongly,
not talking).

Work per event is O(1): where else the latest fingerprints occur in the window is one
C-speed ``bytearray.find`` (see ``_ring``), and rolling cycle matching keeps, for each
distance ``d`` at which the latest pair occurred before, how many consecutive actions equalled
the one ``d`` back (a cycle is such a run at a short distance, a replayed block one at any), so a
cycle or replay check never rescans the window. A pair never seen before in the window resets
all of that at once.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass

from runvisor.actors.supervisor.detection import _ring
from runvisor.actors.supervisor.detection._actions import NAVIGATION_TOOLS, action_of, is_change, is_empty_output
from runvisor.actors.supervisor.detection._negative import mask_places, negative_key
from runvisor.actors.supervisor.detection.classify import (
    Origin,
    content_required,
    error_text,
    failure_origin,
    is_hidden_failure,
    is_usage_reply,
)
from runvisor.actors.supervisor.detection.fingerprint import (
    digest,
    normalize,
    normalize_loose,
    observation_fingerprint,
    short,
)
from runvisor.protocols.messages import (
    MAX_COUNT,
    MAX_MONEY,
    ProgressSignal,
    RunState,
    Spent,
    StepEvent,
    StepKind,
    Verdict,
)
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus

_MASK64 = (1 << 64) - 1
_BARE_STATUS = re.compile(r"(?:return ?code|exit(?:ed)?(?: with)?(?: code| status)?|status)[ :=]*-?\d+$", re.IGNORECASE)
_PAIR_MULT = 0x9E3779B97F4A7C15  # any odd 64-bit constant: makes (a, b) and (b, a) differ

FAILED = 1
RETRY = 2
TRIVIAL = 4  # empty output of a navigation command: never evidence of a loop (DESIGN §4)
MESSAGE = 8  # a malformed agent message (format error), not a tool call
REJECTED = 16  # failed because the agent's input was rejected (classify.Origin.AGENT)
CHANGE = 32  # a first, successful change to the world: an edit, a write, an install, a booking
NEGATIVE = 64  # a negative answer: no matches, not found, an empty search (see ``_negative``)
BROKE = 128  # failed because the tool or its infrastructure did (classify.Origin.TOOL)
# Signals of the latest action only (``RunWindow.signals``), never stored in a slot.
REPEAT = 256  # its (action, observation) pair occurred before in the window
LOOSE_REPEAT = 512  # its action, numbers masked, occurred before in the short span


@dataclass(slots=True)
class PendingCall:
    """A ``tool_call`` waiting for its result."""

    seq: int
    seen_at: float
    tool: str | None
    action: int
    loose: int  # the action with lone numbers masked
    label: str
    text: str  # the rendered arguments, only until the result comes (a negative answer needs the question)
    shell: bool  # its arguments are a shell ``command``


class RunWindow:
    """The bounded recent history and counters of one run.

    Who writes what is fixed (see ``__slots__``): the window folds events into its own state,
    the Engine records its decisions and the commands applied, and detectors only read.
    """

    # Slots: thousands of windows per worker, and a per-instance dict would outweigh the rings.
    __slots__ = (  # noqa: RUF023 - grouped by who writes them, sorted within each group
        # Written only by the window itself, as it folds events in (``observe``, ``restore``,
        # ``set_policy``): the rings, the rolling detector state, the counters, identity, clocks.
        "acted",
        "agent",
        "best_progress",
        "budgeted",
        "best_progress_at",
        "completed",
        "consecutive_failures",
        "cost_usd",
        "counted_until",
        "current_tool",
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
        "loose",
        "n",
        "neg",
        "obs",
        "obs_brief",
        "pair",
        "pair_count",
        "parent_run_id",
        "pending",
        "policy",
        "progress",
        "retries",
        "retry_next",
        "run_id",
        "runs",
        "seq",
        "signals",
        "sim",
        "size",
        "steps",
        "streak",
        "spend",
        "task",
        "tokens",
        "tool_calls",
        # Written only by the Engine: what it decided and what commands did (``apply_command``,
        # grading, stall timers). Detectors only read a window; they never write one.
        "escalate",
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
        # Distance -> how many actions in a row, ending with the latest, equal the ones that far back.
        # Never changed in place: a shared empty dict stands for none (most actions are new).
        self.runs: dict[int, int] = _NO_RUNS
        self.consecutive_failures = 0  # failures of the tool itself (Origin.TOOL) in a row
        # The latest action's flags with REPEAT and LOOSE_REPEAT: what the detectors can find there.
        self.signals = 0
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
        self.parent_run_id: str | None = None  # the run that started this one as a sub-agent
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
        self.escalate = 0  # reasons that paused the run before its resume: the next finding stops it
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
        self.budgeted = (
            any(
                limit is not None
                for limit in (policy.max_tokens, policy.max_cost_usd, policy.max_steps, policy.max_tool_calls)
            )
            or policy.max_wall_s is not None
        )  # else no budget can be exceeded: the engine skips the check
        size = policy.window
        self.size = size
        self._new_evidence(policy)
        # Seqs as their low 32 bits: :meth:`seqs` restores them from ``last_seq`` (a window
        # never spans 2**31 seqs), which halves the largest ring.
        self.seq = array("I", bytes(4 * size))
        # The tokens and micro-dollars spent before each action, as pairs of their low 32 bits: what
        # a pattern cost since its onset is a difference, exact modulo 2**32 (4 billion tokens,
        # $4,294). One pair more than the window: the end of the latest action starts the next one.
        self.spend = array("I", bytes(8 * (size + 1)))
        period = policy.cycle_max_period
        # The last ``period`` action labels, cut to what cycle evidence shows, as one string of
        # fixed-width slots padded with newlines (never in a label): one object, not ``period``.
        self.labels = _PAD * (_LABEL_WIDTH * period)
        self.label = ""  # the latest action's label, whole

    def _new_evidence(self, policy: Policy) -> None:
        """Empty rings of loop and progress evidence, sized by ``policy`` (see :meth:`rearm`)."""
        size = policy.window
        # Whole-window rings, indexed by action number modulo ``size``.
        self.obs = _ring.new_ring(size)
        self.pair = _ring.new_ring(size)
        self.err = _ring.new_ring(size)  # the failure's normalized error, empty for a success
        self.flags = bytearray(size)
        # Short rings, indexed by action number modulo their own length: only the
        # near-duplicate detector reads these, over its short span.
        self.loose = array("Q", bytes(8 * min(size, 2 * policy.near_dup_threshold)))
        self.sim = array("Q", bytes(8 * len(self.loose)))
        # Fingerprints of negative answers (see ``_negative``), 0 for any other answer.
        self.neg = array("Q", bytes(8 * min(size, 2 * policy.fruitless_search_threshold)))

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
        self.parent_run_id = self.parent_run_id or state.parent_run_id
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
            # A run's parent is the one its first start names; a run is never its own parent.
            if self.parent_run_id is None and event.parent_run_id != self.run_id:
                self.parent_run_id = event.parent_run_id
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
        action, loose, label, text = action_of(event)
        call = PendingCall(event.seq, now, event.tool, action, loose, label, text, _is_shell(event))
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
            action, loose, label, text = action_of(event)
            call = PendingCall(event.seq, self.last_seen, event.tool, action, loose, label, text, _is_shell(event))
        self.current_tool = None
        self.last_result_call = event.call_id
        required = content_required(call.tool)
        failed = (
            event.ok is False
            or is_hidden_failure(event.observation, content_required=required)
            or is_usage_reply(event.observation, call.text)
        )
        origin = failure_origin(event.observation, event.error, shell=call.shell) if failed else None
        self._push(call, event.observation, origin, event.error)
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
        call = PendingCall(event.seq, self.last_seen, "message", action, action, label, "", shell=False)
        self._push(call, event.observation, Origin.AGENT, event.error)
        return True

    def _push(self, call: PendingCall, observation: str | None, origin: Origin | None, error: str | None) -> None:
        """Record a completed action; ``origin`` is where its failure came from, None for a success."""
        obs, sim = observation_fingerprint(observation)
        n = self.n
        i = n % self.size
        flags = self._judge(call, observation, origin)
        obs_key = _ring.key(obs)
        if not _ring.contains(self.obs, obs_key):
            self.last_novel_at = n + 1
        pair_key = _ring.key(((call.action * _PAIR_MULT) ^ obs) & _MASK64 or 1)
        self._roll(pair_key)
        if origin is None and self.pair_count == 1 and call.tool != "message" and is_change(call.tool, call.text):
            flags |= CHANGE
        _ring.put(self.obs, i, obs_key)
        _ring.put(self.pair, i, pair_key)
        near = n % len(self.loose)
        loose = self.loose
        signals = flags | (REPEAT if self.pair_count > 1 else 0)
        if (call.loose in loose and loose[near] != call.loose) or loose.count(call.loose) > 1:
            signals |= LOOSE_REPEAT  # seen in the span, not only in the slot this action takes over
        loose[near] = call.loose
        self.sim[near] = sim
        # Exact normalization (numbers kept): "found 2 actions" and "found 3 actions" are different complaints.
        text = error_text(observation, error) if origin is not None else ""
        # A bare exit status ("returncode 1" after an empty output) names no error: a grep that
        # found nothing in four different files is four different questions, not one error.
        # The tool is left out on purpose: each variation of an install command (pip, pip3,
        # python -m pip) failing with the same missing-package error is one error.
        # Places are masked (paths, file and host names): the same complaint about another mirror,
        # file or URL is the same error, as a negative answer about another place is the same answer.
        error_key = digest(mask_places(normalize(text))) if text and not _BARE_STATUS.match(text) else 0
        _ring.put(self.err, i, _ring.key(error_key) if error_key else _NO_KEY)
        self.seq[i] = call.seq & _LOW32
        self.flags[i] = flags
        self.signals = signals | (flags & CHANGE)
        after = 2 * ((n + 1) % (self.size + 1))
        self.spend[after] = self.tokens & _LOW32
        self.spend[after + 1] = round(self.cost_usd * 1e6) & _LOW32
        self._remember_label(call.label)
        self.obs_brief = short(observation)
        self.fail_brief = self.obs_brief if observation else short(error)
        self.n = n + 1

    def _judge(self, call: PendingCall, observation: str | None, origin: Origin | None) -> int:
        """The action's flags but novelty and change, and the failure, retry and negative-answer state."""
        n, tool = self.n, call.tool
        flags = 0
        if origin is not None:
            flags |= FAILED
            self.errors += 1
            if origin is Origin.AGENT:
                flags |= REJECTED
            elif origin is Origin.TOOL:
                flags |= BROKE
        # Only the tool's own failures make a TOOL_FAILURE streak: the agent's rejected input and a
        # command that ran and exited non-zero neither extend nor break it; a success breaks it.
        if origin is None:
            self.consecutive_failures = 0
        elif origin is Origin.TOOL:
            self.consecutive_failures += 1
        # The same action again (numbers aside: ``sleep 10 && curl`` after ``sleep 5 && curl``) after a failure.
        loose = self.loose
        again = n and loose[(n - 1) % len(loose)] == call.loose and self.flags[(n - 1) % self.size] & FAILED
        if self.retry_next or again:
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
            negative = negative_key(call.text, observation, origin is not None, NAVIGATION_TOOLS)
            if negative:
                flags |= NEGATIVE
        self.neg[n % len(self.neg)] = negative
        return flags

    def _remember_label(self, label: str) -> None:
        self.label = label
        at = self.n % (len(self.labels) // _LABEL_WIDTH) * _LABEL_WIDTH
        # ``label`` is already one flat line (from ``short``), so cutting it is ``short(label, 30)``.
        cut = label if len(label) <= _LABEL_WIDTH else label[: _LABEL_WIDTH - 3] + "..."
        cut = cut.ljust(_LABEL_WIDTH, _PAD)
        self.labels = f"{self.labels[:at]}{cut}{self.labels[at + _LABEL_WIDTH :]}"

    def _forget_attempt(self, action_index: int) -> None:
        """Take a retried attempt out of loop and repeated-error matching (its failure and counters stay)."""
        # A fingerprint no real pair has (real ones are 64-bit hashes): unique per action index.
        unique = (1 << 63) | (action_index + 1)
        _ring.put(self.pair, action_index % self.size, _ring.key(unique))
        self.loose[action_index % len(self.loose)] = unique  # nor does it make the action a near-duplicate
        _ring.put(self.err, action_index % self.size, _NO_KEY)  # one call's attempts failing alike are one error
        self.neg[action_index % len(self.neg)] = 0
        self.flags[action_index % self.size] &= ~NEGATIVE & 0xFF
        self.streak = 0
        self.runs = _NO_RUNS
        self.pair_count = 0

    def _roll(self, pair_key: bytes) -> None:
        """Update the rolling loop state from where the new pair occurs, before its slot is overwritten."""
        n, size = self.n, self.size
        earlier = _ring.slots_of(self.pair, pair_key)
        if earlier:
            i = n % size
            self.streak = self.streak + 1 if (n - 1) % size in earlier else 1
            before = self.runs
            # Distances to the earlier occurrences; the slot about to be overwritten is out of the window.
            self.runs = {d: before.get(d, 0) + 1 for d in ((i - slot) % size for slot in earlier) if d and d <= n}
            self.pair_count = len(earlier) + (i not in earlier)
        else:
            # A pair new to the window: no streak, no cycle, no recurrence (the common case).
            self.streak = 1
            self.runs = _NO_RUNS
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

    def count_recent(self, flag: int, span: int) -> list[int]:
        """Ring slots among the last ``span`` actions whose flags have ``flag``, oldest first."""
        flags = self.flags
        return [i for i in self.recent(span) if flags[i] & flag]

    def tool_failures(self, k: int) -> list[int]:
        """Ring slots of the latest ``k`` failures of the tool itself, oldest first."""
        flags = self.flags
        found = [i for i in reversed(self.recent(self.size)) if flags[i] & BROKE][:k]
        return found[::-1]

    def last_change(self) -> int | None:
        """The action number of the latest change (see ``CHANGE``) before the latest action, if in the window."""
        flags = self.flags
        for i in reversed(self.recent(self.size)[:-1]):
            if flags[i] & CHANGE:
                return self.index_of(i)
        return None

    def error_slots(self) -> list[int]:
        """Ring slots that failed with the latest action's error, oldest first; empty when it names none."""
        key = _ring.get(self.err, self.last)
        if not key:
            return []
        slots = _ring.slots_of(self.err, _ring.key(key))
        return sorted(slots, key=self.index_of)

    def index_of(self, slot: int) -> int:
        """The action number held in ring ``slot`` (the most recent one there)."""
        return self.n - 1 - (self.n - 1 - slot) % self.size

    def spent_since(self, seq: int) -> Spent | None:
        """What the run spent from the action at ``seq`` (its tool call) to now; None when it left the window."""
        low = seq & _LOW32
        for i in self.recent(self.size):
            if self.seq[i] == low:
                m = self.index_of(i)
                before = 2 * (m % (self.size + 1))
                tokens = (self.tokens - self.spend[before]) & _LOW32
                usd = (round(self.cost_usd * 1e6) - self.spend[before + 1]) & _LOW32
                return Spent(since_seq=seq, steps=self.n - m, tokens=min(tokens, MAX_COUNT), cost_usd=usd / 1e6)
        return None

    def signal(self) -> ProgressSignal:
        """The run's progress signal: the agent's own ``progress`` where it reports one, else novelty."""
        limit = self.policy.no_progress_steps
        kept = min(self.n, self.size)
        if self.best_progress is not None:
            return ProgressSignal(
                source="agent",
                value=min(max(self.best_progress, -MAX_MONEY), MAX_MONEY),
                stale_actions=self.n - self.best_progress_at,
                limit=limit,
                window=kept,
            )
        # Novelty: the share of distinct observations among the actions kept (1.0: each was new).
        distinct = len({bytes(self.obs[k : k + _ring.WIDTH]) for k in range(0, kept * _ring.WIDTH, _ring.WIDTH)})
        return ProgressSignal(
            source="novelty",
            value=round(distinct / kept, 3) if kept else 0.0,
            stale_actions=self.n - self.last_novel_at,
            limit=limit,
            window=kept,
        )

    def rearm(self) -> None:
        """Watch afresh from here: the run was resumed, so the patterns before the pause are the past.

        The loop and progress evidence is cleared (a pattern must build up again from this action
        on); counters, budgets and what the engine decided stay.
        """
        self._new_evidence(self.policy)
        self.streak = self.pair_count = self.consecutive_failures = self.signals = 0
        self.runs = _NO_RUNS
        self.last_novel_at = self.best_progress_at = self.n

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
        packed = (self.obs, self.pair, self.err, self.flags)
        arrays = (self.seq, self.spend, self.loose, self.sim, self.neg)
        return sum(map(len, packed)) + sum(len(r) * r.itemsize for r in arrays)


_LOW32 = (1 << 32) - 1
_HALF32 = 1 << 31
_LABEL_WIDTH = 30
_PAD = "\n"
_NO_RUNS: dict[int, int] = {}  # shared, never written: "no earlier occurrence"
_NO_KEY = bytes(_ring.WIDTH)  # an empty slot


def _is_shell(event: StepEvent) -> bool:
    """Whether the action is a shell command (its arguments are a ``command`` string)."""
    command = event.args.get("command") if event.args else None
    return isinstance(command, str) and command != ""


__all__ = [
    "BROKE",
    "CHANGE",
    "FAILED",
    "LOOSE_REPEAT",
    "MESSAGE",
    "NAVIGATION_TOOLS",
    "NEGATIVE",
    "REJECTED",
    "REPEAT",
    "RETRY",
    "TRIVIAL",
    "PendingCall",
    "RunWindow",
]
