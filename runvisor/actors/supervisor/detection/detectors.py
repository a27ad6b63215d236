"""Detectors: small pure classes over a :class:`RunWindow` (DESIGN §4).

Each ``check(window, policy, slack=0)`` returns a ``Verdict`` (severity "warn"; the engine
grades it) or ``None``. Loop, failure and progress detectors are asked only when an action
has just completed, and they judge *that* action: a finding means "the latest action
extends the pattern", so one more repeat is what confirms it.

``slack`` lowers every count threshold by that many steps (never below 2): the engine asks
with ``slack=1`` for the early warning ("one more repeat and this is a loop") and with
``slack=0`` for the finding that acts, so the policy thresholds are where action happens.
Every detector is monotone in ``slack`` (a finding at ``slack=0`` is one at ``slack=1`` too):
the engine relies on it to ask once when the early answer is "nothing".
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from runvisor.actors.supervisor.detection.fingerprint import hamming, short
from runvisor.actors.supervisor.detection.window import (
    CHANGE,
    FAILED,
    LOOSE_REPEAT,
    MESSAGE,
    NEGATIVE,
    REJECTED,
    REPEAT,
    RETRY,
    TRIVIAL,
    RunWindow,
)
from runvisor.protocols.messages import Evidence, Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RECOVERY_HINTS, StopReason


class Detector(Protocol):
    """What the engine asks of every detector."""

    name: str
    reason: StopReason
    #: Signals (``RunWindow.signals``) the latest action must all have for this detector to find
    #: anything: the engine asks only then, so most actions cost one bit test per detector.
    needs: int

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Judge the window after its latest action; ``None`` when nothing is wrong."""
        ...


def _at(threshold: int, slack: int) -> int:
    """A count threshold lowered by ``slack``; a repeat needs at least two occurrences."""
    return max(2, threshold - slack)


def finding(
    window: RunWindow, detector: str, reason: StopReason, summary: str, seqs: tuple[int, ...], *, spent: bool = True
) -> Verdict:
    """A warn-severity verdict at the window's latest event; the engine raises the severity.

    With ``spent`` the evidence says what the run spent from the pattern's onset (its first seq)
    on, when that action is still in the window.
    """
    cost = window.spent_since(seqs[0]) if spent and seqs else None
    if cost is not None:
        summary = f"{summary}; it cost {cost.describe()}"
    return Verdict(
        run_id=window.run_id,
        reason=reason,
        severity="warn",
        evidence=Evidence(summary=summary[:4096], seqs=seqs, spent=cost),
        detector=detector,
        at_seq=window.last_seq,
        ts=window.last_seen,
        hint=RECOVERY_HINTS[reason],
    )


def _span(seqs: tuple[int, ...]) -> str:
    return f"seq {seqs[0]}-{seqs[-1]}" if len(seqs) > 1 else f"seq {seqs[0]}"


def _obs(window: RunWindow) -> str:
    # ``obs_brief`` is ``short(observation, 60)``; shortening it to 50 equals shortening the whole.
    return f"'{short(window.obs_brief, 50)}'" if window.obs_brief else "empty output"


class ExactRepeat:
    """The same (action, observation) ``repeat_threshold`` times in a row."""

    name = "exact_repeat"
    reason = StopReason.LOOP_DETECTED
    needs = REPEAT

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action extends a streak of identical pairs."""
        if window.n == 0 or window.streak < _at(policy.repeat_threshold, slack) or window.flags[window.last] & TRIVIAL:
            return None
        seqs = window.seqs(window.recent(window.streak))
        label = window.label
        summary = f"{_span(seqs)}: `{label}` x{window.streak} in a row, each {_obs(window)}"
        return finding(window, self.name, self.reason, summary, seqs)


class Cycle:
    """A block of 2..``cycle_max_period`` pairs repeated ``cycle_min_repeats`` times back to back."""

    name = "cycle"
    reason = StopReason.LOOP_DETECTED
    needs = REPEAT

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire on the shortest period whose rolling match run covers the repeats."""
        runs = window.runs
        if not runs:
            return None  # the latest pair is new to the window: nothing repeats
        for period in sorted(d for d in runs if 2 <= d <= policy.cycle_max_period):
            matched = runs[period]
            if matched < (policy.cycle_min_repeats - 1) * period - slack:
                continue
            if window.streak >= period:
                continue  # one action repeated: ExactRepeat's finding, not a cycle
            block = window.recent(period)
            if all(window.flags[i] & TRIVIAL for i in block):
                continue
            repeats = (matched + period) / period
            seqs = window.seqs(window.recent(matched + period))
            labels = window.last_labels(period)
            steps = " -> ".join(f"`{short(x, 30)}`" for x in labels) or f"{period} actions"
            summary = f"{_span(seqs)}: block of {period} actions repeated x{repeats:.1f}: {steps}"
            return finding(window, self.name, self.reason, summary, seqs)
        return None


class Recurrence:
    """The same (action, observation) ``near_dup_threshold`` times with nothing changed in between.

    Exact recurrence is the zero-distance case of a near-duplicate, so it shares that
    threshold, but it is counted over the whole window rather than a short span.

    An agent that re-issues an action and gets exactly the same answer learned nothing new
    the second time, unless it changed something in between: a test re-run after a real edit
    that still gives the same output is testing (DESIGN §4), so only the occurrences since the
    latest change (a first, successful edit, write, install or booking) count. A re-run whose
    output changes is a different pair.
    """

    name = "recurrence"
    reason = StopReason.LOOP_DETECTED
    needs = REPEAT

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest pair has occurred often enough in the window."""
        count = window.pair_count
        if window.n == 0 or count < _at(policy.near_dup_threshold, slack):
            return None
        if window.flags[window.last] & (TRIVIAL | MESSAGE):
            return None  # scattered format errors are SameError's to judge, by density
        slots = window.slots_of_last_pair()
        changed = window.last_change()
        if changed is not None:
            slots = [i for i in slots if window.index_of(i) > changed]
            count = len(slots)
            if count < _at(policy.near_dup_threshold, slack):
                return None
        seqs = window.seqs(slots)
        summary = (
            f"{_span(seqs)}: `{window.label}` x{count} with the same result {_obs(window)}; "
            f"seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class NearDuplicate:
    """The same action apart from numbers, with a near-identical observation, ``near_dup_threshold`` times.

    Catches the loops exact matching misses: the same edit applied again and again while
    the file grows (observations differ only in line counts or line numbers), an edit at a line
    number that shifts each time, ``goto N`` in a file that fits on one screen. Actions are
    compared with their lone numbers masked (``goto 120`` and ``goto 164``; not ``test_2``) and
    observations by SimHash, so paging through a file (new content each time) is not one. The
    span is short on purpose (twice the threshold: about one other action between repeats):
    re-reading a file or re-running a script now and then during a long session also
    gives near-identical outputs, and that is work, not a loop.
    """

    name = "near_duplicate"
    reason = StopReason.LOOP_DETECTED
    needs = LOOSE_REPEAT

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action has enough near-twins in the window."""
        n = window.n
        if n == 0:
            return None
        flags, size, act = window.flags, window.size, window.loose
        if flags[(n - 1) % size] & (TRIVIAL | MESSAGE):
            return None  # a malformed message has no action of its own to repeat; SameError judges it
        need = _at(policy.near_dup_threshold, slack)
        # Action numbers of the span, oldest first (the short rings hold at most the span).
        span = range(n - min(2 * policy.near_dup_threshold, n, size, len(act)), n)
        action = act[(n - 1) % len(act)]
        if act.count(action) < need:
            return None  # the cheap precondition: the action itself must recur
        same_action = [m for m in span if act[m % len(act)] == action and not flags[m % size] & TRIVIAL]
        if len(same_action) < need:
            return None
        near = self._twins(window, span, policy.near_dup_max_distance)
        count = len(near)
        if count < need:
            return None
        seqs = window.seqs([m % size for m in near])
        summary = (
            f"{_span(seqs)}: `{window.label}` x{count} with near-identical output "
            f"(numbers aside), latest {_obs(window)}; seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)

    @staticmethod
    def _twins(window: RunWindow, span: range, max_distance: int) -> list[int]:
        """Near-twins (action numbers) of the latest action, walking back until something new intervenes.

        A change in between (a first, successful edit), or any other action that worked and
        is seen once in the span, moved the agent on, so a re-run after it that gives a
        near-identical result is work, not looping. Actions that themselves recur (a view
        between two identical edits) and one-off attempts that failed do not break the chain.
        """
        act, sim, flags, size = window.loose, window.sim, window.flags, window.size
        last = span[-1]
        action = act[last % len(act)]
        fingerprint = sim[last % len(sim)]
        acts = [act[m % len(act)] for m in span]
        twins = [last]
        for pos in range(len(span) - 2, -1, -1):
            m = span[pos]
            if acts[pos] == action and not flags[m % size] & TRIVIAL:
                if hamming(sim[m % len(sim)], fingerprint) <= max_distance:
                    twins.append(m)
            elif flags[m % size] & CHANGE or (acts.count(acts[pos]) == 1 and not flags[m % size] & FAILED):
                break
        return twins


class SameError:
    """The same normalized error ``same_error_threshold`` times within twice as many actions, nothing changed.

    Density matters: an error hit now and then across a long run (a format slip, a
    missing module probed once per approach) is not the agent stuck on it. So does change:
    after a real edit the same failure is a test of that edit, so only occurrences since the
    latest change count here (:class:`ErrorRhythm` judges an error that keeps coming back).
    """

    name = "same_error"
    reason = StopReason.LOOP_DETECTED
    needs = FAILED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action failed with an error seen often enough recently."""
        n = window.n
        if n == 0 or not window.flags[window.last] & FAILED:
            return None
        # Within the span, and since the latest change: a script re-run after real edits that fails
        # the same way is testing (ErrorRhythm judges the same error coming back across changes).
        changed = window.last_change()
        since = max(n - 2 * policy.same_error_threshold, -1 if changed is None else changed + 1)
        same = [i for i in window.error_slots() if window.index_of(i) >= since]
        count = len(same)
        if count < _at(policy.same_error_threshold, slack):
            return None
        seqs = window.seqs(same)
        text = short(window.fail_brief, 60)
        summary = f"{_span(seqs)}: the same error x{count}: '{text}' (latest `{window.label}`)"
        return finding(window, self.name, self.reason, summary, seqs)


class FruitlessSearch:
    """The same search finding nothing ``fruitless_search_threshold`` times within twice as many actions.

    "Searching file after file for a term that does not exist" (DESIGN §4): each action and
    each answer names another place, so nothing else matches them, but with the places
    masked it is one question getting the same negative answer ("No matches found", "No
    such file", or an empty output with a non-zero status; see ``_negative``). An agent
    that checks two or three places before finding something stays under the threshold,
    and only negative answers count: reading file after file is not searching in vain.
    """

    name = "fruitless_search"
    reason = StopReason.LOOP_DETECTED
    needs = NEGATIVE

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest answer is negative and the same question got it often enough recently."""
        n, neg = window.n, window.neg
        if n == 0:
            return None
        key = neg[(n - 1) % len(neg)]
        # The ring holds exactly the span (twice the threshold): counting it is one C call.
        if not key or neg.count(key) < _at(policy.fruitless_search_threshold, slack):
            return None
        same = [m for m in range(n - min(n, len(neg)), n) if neg[m % len(neg)] == key]
        seqs = window.seqs([m % window.size for m in same])
        summary = (
            f"{_span(seqs)}: the same search found nothing x{len(same)} in different places, "
            f"latest `{window.label}`: {_obs(window)}; seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class ErrorRhythm:
    """The same error ``error_rhythm_threshold`` times, each within ``error_rhythm_gap`` actions of the last.

    The rabbit holes of DESIGN §4: an edit-rerun cycle on a stand-in script that gives the same
    error every few actions, or environment set-up where every command is new and each fails
    the same way. Edits in between do not excuse it, so the count is higher than for a re-run
    after real edits: a few re-runs with the same failure while fixing is work; the same error
    coming back at a steady rhythm, attempt after attempt, is not.
    """

    name = "error_rhythm"
    reason = StopReason.LOOP_DETECTED
    needs = FAILED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest failure's error has recurred at a steady rhythm often enough."""
        if window.n == 0 or not window.flags[window.last] & FAILED:
            return None
        slots = window.error_slots()
        need = _at(policy.error_rhythm_threshold, slack)
        if len(slots) < need:
            return None
        chain = [slots[-1]]
        for i in reversed(slots[:-1]):
            if window.index_of(chain[-1]) - window.index_of(i) > policy.error_rhythm_gap:
                break
            chain.append(i)
        if len(chain) < need:
            return None
        seqs = window.seqs(chain)
        text = short(window.fail_brief, 60)
        summary = (
            f"{_span(seqs)}: the same error x{len(chain)}, every {policy.error_rhythm_gap} actions or sooner, "
            f"whatever was tried in between: '{text}' (latest `{window.label}`); seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class Replay:
    """A block of at least ``replay_min_block`` actions replayed in order, with the same results, anywhere.

    "An 8-10-step investigation block replayed verbatim" (DESIGN §4), once or twice and not
    necessarily back to back, before a budget ends the run: every action of the replay got the
    answer it got the first time, so the agent is going round. Shorter blocks back to back
    are :class:`Cycle`'s.
    """

    name = "replay"
    reason = StopReason.LOOP_DETECTED
    needs = REPEAT

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest actions repeat, in order, a stretch at least a block's length back."""
        need = _at(policy.replay_min_block, slack)
        best = max(((run, d) for d, run in window.runs.items() if d >= need and run >= need), default=None)
        if best is None:
            return None
        length, distance = best
        block = window.recent(length)
        if all(window.flags[i] & TRIVIAL for i in block):
            return None
        size = window.size
        first = [(i - distance) % size for i in block]
        seqs = window.seqs(first + block)
        labels = window.last_labels(min(length, len(window.labels) // 30))
        steps = " -> ".join(f"`{short(x, 30)}`" for x in labels[:4]) + (" -> ..." if len(labels) > 4 else "")
        copies = window.seqs(first)
        summary = (
            f"{_span(seqs)}: a block of {length} actions replayed with the same results "
            f"(first at seq {copies[0]}-{copies[-1]}): {steps or f'{length} actions'}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class RejectedInput:
    """The agent's own input rejected ``rejected_input_threshold`` times within twice as many actions.

    Prose sent to the shell, unknown commands, usage errors, an edit the editor's syntax check
    rejects, a malformed response (see ``classify.failure_origin``): the tool works and the
    agent keeps feeding it input it refuses, in small variants that no repeat counter matches.
    That is the agent looping, not a tool failing. A slip recovered from on the next action (a
    valid action that did not fail) does not count, however often it happens, and neither do
    malformed responses (a harness's format complaint): strong models make and shed those, and
    the same complaint again and again is :class:`SameError`'s.
    """

    name = "rejected_input"
    reason = StopReason.LOOP_DETECTED
    needs = REJECTED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action was rejected and rejections are dense in the recent actions."""
        if window.n == 0 or window.flags[window.last] & (REJECTED | MESSAGE) != REJECTED:
            return None
        span = 2 * policy.rejected_input_threshold
        recent = window.recent(span)
        flags = window.flags
        # A rejection the agent recovered from on its next action (a format slip, then a valid
        # command) is not the agent stuck: only those followed by another failure, and the latest, count.
        rejected = [
            i
            for k, i in enumerate(recent)
            if flags[i] & (REJECTED | MESSAGE) == REJECTED and (k == len(recent) - 1 or flags[recent[k + 1]] & FAILED)
        ]
        if len(rejected) < _at(policy.rejected_input_threshold, slack):
            return None
        seqs = window.seqs(rejected)
        text = short(window.fail_brief, 60)
        summary = (
            f"{_span(seqs)}: the agent's own input was rejected {len(rejected)} times in {min(span, window.n)} "
            f"actions (the tool works; the agent keeps sending what it refuses), latest `{window.label}`: "
            f"'{text}'; seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class EmptyAnswers:
    """Negative answers in ``empty_answers_threshold`` of the last ``empty_answers_span`` actions, any query.

    Fresh queries that all come back empty (DESIGN §4): file names, class names or phrases
    guessed one after another, each once, each answered "no matches", an empty grep or "not
    found". No action repeats, so only the density of negative answers shows it; a search that
    finds something in between is a reprieve, and a few misses before a hit are far below it.
    """

    name = "empty_answers"
    reason = StopReason.LOOP_DETECTED
    needs = NEGATIVE

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest answer is negative and negative answers fill the recent actions."""
        if window.n == 0 or not window.flags[window.last] & NEGATIVE:
            return None
        negative = window.count_recent(NEGATIVE, policy.empty_answers_span)
        if len(negative) < _at(policy.empty_answers_threshold, slack):
            return None
        seqs = window.seqs(negative)
        summary = (
            f"{_span(seqs)}: {len(negative)} of the last {min(policy.empty_answers_span, window.n)} actions found "
            f"nothing, each asking something else, latest `{window.label}`: {_obs(window)}; "
            f"seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class ConsecutiveFailures:
    """``max_consecutive_failures`` failures of the tool itself in a row, hidden failures included.

    Only failures that come from the tool or its infrastructure count (``classify.Origin.TOOL``):
    the agent's rejected input is :class:`RejectedInput`'s, and a command that ran and exited
    non-zero is the agent's work.
    """

    name = "consecutive_failures"
    reason = StopReason.TOOL_FAILURE
    needs = 0

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire while the failure streak is at or over the limit."""
        run = window.consecutive_failures
        if run < max(1, policy.max_consecutive_failures - slack):
            return None
        seqs = window.seqs(window.tool_failures(run))
        text = short(window.fail_brief, 60)
        summary = f"{_span(seqs)}: the tool failed {run} times in a row, latest `{window.label}`: '{text}'"
        return finding(window, self.name, self.reason, summary, seqs)


class RetryStorm:
    """Retries in the window over the budget ``retry_budget_ratio * calls + retry_budget_floor``."""

    name = "retry_storm"
    reason = StopReason.RETRY_LIMIT_REACHED
    needs = RETRY

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action is a retry that overdraws the budget."""
        if window.n == 0 or not window.flags[window.last] & RETRY:
            return None
        calls = min(window.n, window.size)
        retried = [i for i, f in enumerate(window.flags) if f & RETRY]  # empty slots have no flags
        retries = len(retried)
        budget = policy.retry_budget_ratio * calls + policy.retry_budget_floor
        if retries + slack <= budget:
            return None
        seqs = window.seqs(retried)
        summary = (
            f"{_span(seqs)}: {retries} retries in the last {calls} calls, over the budget of {budget:.1f} "
            f"({policy.retry_budget_ratio:g} x calls + {policy.retry_budget_floor}); latest `{window.label}`"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class NoProgress:
    """Reported progress that has not risen, or no novelty, for ``no_progress_steps`` actions."""

    name = "no_progress"
    reason = StopReason.NO_PROGRESS
    needs = 0

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire while the run has gone too long without progress or anything new."""
        limit = policy.no_progress_steps
        if window.best_progress is not None:
            stale = window.n - window.best_progress_at
            what = f"progress stuck at or below {window.best_progress:g}"
        else:
            stale = window.n - window.last_novel_at
            what = "no new observation"
        if stale < limit - slack:
            return None
        seqs = window.seqs(window.recent(stale))
        summary = f"{_span(seqs)}: {what} for {stale} actions (limit {limit})"
        return finding(window, self.name, self.reason, summary, (seqs[0], seqs[-1]))


class Budget:
    """Tokens, cost, steps, tool calls and wall-clock (from event ts) against the policy's limits."""

    name = "budget"
    reason = StopReason.BUDGET_EXCEEDED
    needs = 0
    _LIMITS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("tokens", "tokens", "max_tokens"),
        ("cost", "cost_usd", "max_cost_usd"),
        ("steps", "steps", "max_steps"),
        ("tool calls", "tool_calls", "max_tool_calls"),
    )

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire on the first budget whose figure exceeds its limit."""
        # No early stage: a budget is a hard figure. ``slack`` is accepted for the common
        # interface and ignored; the engine warns on the first overrun and acts on the next.
        del slack
        # Asked on every event: plain comparisons first, the labelled walk only on an overrun.
        if (
            (policy.max_tokens is None or window.tokens <= policy.max_tokens)
            and (policy.max_cost_usd is None or window.cost_usd <= policy.max_cost_usd)
            and (policy.max_steps is None or window.steps <= policy.max_steps)
            and (policy.max_tool_calls is None or window.tool_calls <= policy.max_tool_calls)
            and policy.max_wall_s is None
        ):
            return None
        for label, attr, field in self._LIMITS:
            limit = getattr(policy, field)
            figure = getattr(window, attr)
            if limit is not None and figure > limit:
                return self._over(window, label, figure, limit, field)
        if policy.max_wall_s is not None and window.first_ts is not None:
            wall = window.last_ts - window.first_ts
            if wall > policy.max_wall_s:
                return self._over(window, "wall-clock seconds", wall, policy.max_wall_s, "max_wall_s")
        return None

    def _over(self, window: RunWindow, label: str, figure: float, limit: float, field: str) -> Verdict:
        summary = f"seq {window.last_seq}: {label} budget exceeded: {figure:g} of {limit:g} (policy {field})"
        return finding(window, self.name, self.reason, summary, (window.last_seq,), spent=False)


#: Detectors run after every completed action, in priority order (the first finding of a reason wins).
ACTION_DETECTORS: tuple[Detector, ...] = (
    ExactRepeat(),
    Cycle(),
    Recurrence(),
    NearDuplicate(),
    Replay(),
    SameError(),
    FruitlessSearch(),
    RejectedInput(),
    EmptyAnswers(),
    ErrorRhythm(),
    RetryStorm(),
    ConsecutiveFailures(),
    NoProgress(),
)

__all__ = [
    "ACTION_DETECTORS",
    "Budget",
    "ConsecutiveFailures",
    "Cycle",
    "Detector",
    "EmptyAnswers",
    "ErrorRhythm",
    "ExactRepeat",
    "FruitlessSearch",
    "NearDuplicate",
    "NoProgress",
    "Recurrence",
    "RejectedInput",
    "Replay",
    "RetryStorm",
    "SameError",
    "finding",
]
