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
from runvisor.actors.supervisor.detection.window import FAILED, MESSAGE, RETRY, TRIVIAL, RunWindow
from runvisor.protocols.messages import Evidence, Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RECOVERY_HINTS, StopReason


class Detector(Protocol):
    """What the engine asks of every detector."""

    name: str
    reason: StopReason

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Judge the window after its latest action; ``None`` when nothing is wrong."""
        ...


def _at(threshold: int, slack: int) -> int:
    """A count threshold lowered by ``slack``; a repeat needs at least two occurrences."""
    return max(2, threshold - slack)


def finding(window: RunWindow, detector: str, reason: StopReason, summary: str, seqs: tuple[int, ...]) -> Verdict:
    """A warn-severity verdict at the window's latest event; the engine raises the severity."""
    return Verdict(
        run_id=window.run_id,
        reason=reason,
        severity="warn",
        evidence=Evidence(summary=summary[:4096], seqs=seqs),
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

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire on the shortest period whose rolling match run covers the repeats."""
        if window.pair_count < 2:
            return None  # the latest pair is new to the window: nothing repeats
        top = min(policy.cycle_max_period, len(window.cycle_run) - 1)
        for period in range(2, top + 1):
            matched = window.cycle_run[period]
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
    """The same (action, observation) ``near_dup_threshold`` times in the window, in a row or not.

    Exact recurrence is the zero-distance case of a near-duplicate, so it shares that
    threshold, but it is counted over the whole window rather than a short span.

    An agent that re-issues an action and gets exactly the same answer learned nothing new
    the second time; by the fourth, whatever it does in between is not changing that part
    of the world (the same script re-run between edits with the same output, an 8-step
    investigation replayed). A re-run whose output changes is a different pair.
    """

    name = "recurrence"
    reason = StopReason.LOOP_DETECTED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest pair has occurred often enough in the window."""
        count = window.pair_count
        if window.n == 0 or count < _at(policy.near_dup_threshold, slack):
            return None
        if window.flags[window.last] & (TRIVIAL | MESSAGE):
            return None  # scattered format errors are SameError's to judge, by density
        seqs = window.seqs(window.slots_of_last_pair())
        summary = (
            f"{_span(seqs)}: `{window.label}` x{count} with the same result {_obs(window)}; "
            f"seqs {', '.join(map(str, seqs))}"
        )
        return finding(window, self.name, self.reason, summary, seqs)


class NearDuplicate:
    """The same action with a near-identical observation ``near_dup_threshold`` times in a short span.

    Catches the loops exact matching misses: the same edit applied again and again while
    the file grows (observations differ only in line counts or line numbers). The span is
    short on purpose (twice the threshold: about one other action between repeats):
    re-reading a file or re-running a script now and then during a long session also
    gives near-identical outputs, and that is work, not a loop.
    """

    name = "near_duplicate"
    reason = StopReason.LOOP_DETECTED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action has enough near-twins in the window."""
        n = window.n
        if n == 0:
            return None
        flags, size, act = window.flags, window.size, window.act
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
        """Near-twins (action numbers) of the latest action, walking back until a one-off action intervenes.

        A one-off action in between (an edit seen once in the span) changed the world, so a
        re-run after it that gives a near-identical result is testing, not looping; actions
        that themselves recur (a view between two identical edits) do not break the chain.
        """
        act, sim, flags, size = window.act, window.sim, window.flags, window.size
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
            elif acts.count(acts[pos]) == 1:
                break
        return twins


class SameError:
    """The same normalized error ``same_error_threshold`` times within twice as many actions.

    Density matters: an error hit now and then across a long run (a format slip, a
    missing module probed once per approach) is not the agent stuck on it.
    """

    name = "same_error"
    reason = StopReason.LOOP_DETECTED

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire when the latest action failed with an error seen often enough recently."""
        n = window.n
        err = window.err
        if n == 0 or not window.flags[window.last] & FAILED:
            return None
        error = err[(n - 1) % len(err)]
        if not error:
            return None
        span = range(n - min(2 * policy.same_error_threshold, n, window.size, len(err)), n)
        same = [m for m in span if err[m % len(err)] == error]
        count = len(same)
        if count < _at(policy.same_error_threshold, slack):
            return None
        seqs = window.seqs([m % window.size for m in same])
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


class ConsecutiveFailures:
    """``max_consecutive_failures`` failed actions in a row, hidden failures included."""

    name = "consecutive_failures"
    reason = StopReason.TOOL_FAILURE

    def check(self, window: RunWindow, policy: Policy, slack: int = 0) -> Verdict | None:
        """Fire while the failure streak is at or over the limit."""
        run = window.consecutive_failures
        if run < max(1, policy.max_consecutive_failures - slack):
            return None
        seqs = window.seqs(window.recent(run))
        text = short(window.fail_brief, 60)
        summary = f"{_span(seqs)}: {run} failed tool calls in a row, latest `{window.label}`: '{text}'"
        return finding(window, self.name, self.reason, summary, seqs)


class RetryStorm:
    """Retries in the window over the budget ``retry_budget_ratio * calls + retry_budget_floor``."""

    name = "retry_storm"
    reason = StopReason.RETRY_LIMIT_REACHED

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
        return finding(window, self.name, self.reason, summary, (window.last_seq,))


#: Detectors run after every completed action, in priority order (the first finding of a reason wins).
ACTION_DETECTORS: tuple[Detector, ...] = (
    ExactRepeat(),
    Cycle(),
    Recurrence(),
    NearDuplicate(),
    SameError(),
    FruitlessSearch(),
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
    "ExactRepeat",
    "FruitlessSearch",
    "NearDuplicate",
    "NoProgress",
    "Recurrence",
    "RetryStorm",
    "SameError",
    "finding",
]
