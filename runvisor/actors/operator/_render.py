"""How runs, steps and verdicts read on an operator's terminal: ``ps``, ``top``, ``why``, ``steps``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runvisor.actors.streams.control import StoredCommand
from runvisor.actors.streams.steps import StoredStep
from runvisor.protocols.messages import ProgressSignal, RunState, StepEvent
from runvisor.protocols.reasons import next_step

#: Marks a step that the run's last verdict names as evidence (``runvisor steps``, ``why``).
EVIDENCE_MARK = ">"
#: The narrowest a RUN column gets when a table is fitted to a terminal.
MIN_RUN_WIDTH = 12
ARGS_CHARS = 60
TEXT_CHARS = 80


def age(seconds: float) -> str:
    """A duration in its largest unit: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def short_count(n: int) -> str:
    """``950``, ``6.1k``, ``448k``, ``1.2M``: a count in at most 5 characters."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def stale(signal: ProgressSignal | None) -> str:
    """Actions without progress of the no-progress limit, ``12/30``; ``-`` when unknown."""
    return f"{signal.stale_actions}/{signal.limit}" if signal is not None else "-"


@dataclass(frozen=True)
class Column:
    header: str
    width: int
    cell: Callable[[RunState, float], str]
    right: bool = False


PS_COLUMNS = (
    Column("AGENT", 10, lambda s, _: s.agent or "-"),
    Column("STATUS", 9, lambda s, _: s.status),
    Column("REASON", 19, lambda s, _: s.stop_reason or "-"),
    Column("AGE", 4, lambda s, now: age(now - s.started_at) if s.started_at else "-", right=True),
    Column("TOKENS", 6, lambda s, _: short_count(s.counters.tokens), right=True),
    Column("COST", 7, lambda s, _: f"${s.counters.cost_usd:.2f}", right=True),
)
TOP_COLUMNS = (
    *(c for c in PS_COLUMNS if c.header != "AGENT"),
    Column("STALE", 9, lambda s, _: stale(s.signal), right=True),
)


#: Indentation of a sub-agent under its parent in ``runvisor ps``, per level, and the deepest shown.
INDENT = "  "
MAX_INDENT = 8


def family_tree(states: Iterable[RunState]) -> list[tuple[RunState, int]]:
    """The runs in the order given, each followed by its sub-agents among them (in the same order),
    with how deep each lies: 0 for a run whose parent is not among ``states``."""
    rows = list(states)
    known = {s.run_id for s in rows}
    children: dict[str, list[RunState]] = {}
    for s in rows:
        if s.parent_run_id in known and s.parent_run_id != s.run_id:
            children.setdefault(s.parent_run_id, []).append(s)
    out: list[tuple[RunState, int]] = []
    seen: set[str] = set()
    # Top-level runs first; then any left (a cycle of parents, possible only with made-up ids), flat.
    tops = [s for s in rows if s.parent_run_id not in known or s.parent_run_id == s.run_id]
    for top in [*tops, *rows]:
        stack = [(top, 0)]
        while stack:
            state, depth = stack.pop()
            if state.run_id in seen:
                continue
            seen.add(state.run_id)
            out.append((state, depth))
            stack.extend((child, depth + 1) for child in reversed(children.get(state.run_id, [])))
    return out


def runs_table(
    states: Iterable[RunState], columns: tuple[Column, ...] = PS_COLUMNS, width: int | None = None,
    now: float | None = None, *, tree: bool = False,
) -> str:  # fmt: skip
    """Runs one a line under a header; with ``width``, every line fits in it (run ids are cut).
    With ``tree``, sub-agents follow their parent, indented (see :func:`family_tree`)."""
    now = time.time() if now is None else now
    rows = family_tree(states) if tree else [(s, 0) for s in states]
    names = [INDENT * min(depth, MAX_INDENT) + s.run_id for s, depth in rows]
    fixed = sum(c.width + 1 for c in columns)
    longest = max([3, *map(len, names)])
    run_width = longest if width is None else max(MIN_RUN_WIDTH, min(longest, width - fixed))

    def line(run: str, cells: list[str]) -> str:
        out = [_fit(run, run_width).ljust(run_width)]
        for column, text in zip(columns, cells, strict=True):
            cell = _fit(text, column.width)
            out.append(cell.rjust(column.width) if column.right else cell.ljust(column.width))
        return " ".join(out).rstrip()

    lines = [line("RUN", [c.header for c in columns])]
    lines += [line(name, [c.cell(s, now) for c in columns]) for name, (s, _) in zip(names, rows, strict=True)]
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def step_line(step: StoredStep, marked: bool = False) -> str:
    """One stored step in one compact line: seq, kind, tool, args, result, tokens."""
    mark = EVIDENCE_MARK if marked else " "
    event = step.event
    if event is None:
        return f"{mark} {'?':>5} {'undecodable':12} (stream seq {step.stream_seq}) {clip(step.error or '', TEXT_CHARS)}"
    return f"{mark} {event.seq:>5} {event.kind:12} {_step_detail(event)}".rstrip()


def _step_detail(e: StepEvent) -> str:
    parts: list[str] = []
    if e.kind == "start":
        parts += [e.agent or "", clip(e.task or "", TEXT_CHARS)]
    if e.tool:
        parts.append(e.tool)
    if e.args:
        parts.append(clip(json.dumps(e.args, ensure_ascii=False, separators=(",", ":")), ARGS_CHARS))
    if e.kind in ("tool_result", "final") and e.ok is not None:
        parts.append("ok" if e.ok else "FAILED")
    if e.error:
        parts.append(f"error: {clip(e.error, TEXT_CHARS)}")
    if e.observation:
        parts.append(repr(clip(e.observation, TEXT_CHARS)))
    if e.tokens_in or e.tokens_out:
        parts.append(f"tokens {e.tokens_in or 0:,}+{e.tokens_out or 0:,}")
    if e.cost_usd:
        parts.append(f"${e.cost_usd:.4f}")
    if e.progress is not None:
        parts.append(f"progress {e.progress:g}")
    return " ".join(p for p in parts if p)


def signal_text(signal: ProgressSignal) -> str:
    """The progress signal as a sentence."""
    if signal.source == "agent":
        what = f"best reported progress {signal.value:g}"
        since = "without a rise"
    else:
        what = f"{signal.value:.0%} of the last {signal.window} actions saw something new"
        since = "without a new observation"
    return f"{what}; {signal.stale_actions} of {signal.limit} actions {since}"


def describe(
    state: RunState, *, evidence: Iterable[StoredStep] = (), command: StoredCommand | None = None,
    now: float | None = None,
) -> str:  # fmt: skip
    """A run as ``runvisor why`` shows it: its state, why it is held or ended, the steps that prove
    it, what the pattern cost, the progress signal, the operator's word, and what to do next."""
    now = time.time() if now is None else now
    c = state.counters
    status = f"{state.status}" + (f" ({state.stop_reason})" if state.stop_reason else "")
    started = f", started {age(now - state.started_at)} ago" if state.started_at else ""
    lines = [
        f"run {state.run_id}: {status}",
        *([f"  sub-agent of run {state.parent_run_id}"] if state.parent_run_id else []),
        f"  agent: {state.agent or '-'}{started}; task: {clip(state.task or '-', TEXT_CHARS)}",
        f"  now: step {state.last_seq} {state.last_kind or ''}, tool {state.current_tool or '-'}, "
        f"updated {age(now - state.updated_at)} ago",
        f"  counters: steps={c.steps} tokens={c.tokens:,} cost=${c.cost_usd:.4f} tool_calls={c.tool_calls} "
        f"retries={c.retries} errors={c.errors}",
    ]
    if state.signal is not None:
        lines.append(f"  progress: {signal_text(state.signal)}")
    if command is not None:
        said = command.command
        at = f" at {command.stored_at.astimezone():%H:%M:%S}" if command.stored_at else ""
        lines.append(f"  operator: {said.cmd} by {said.issuer}{at}" + (f": {said.note}" if said.note else " (no note)"))
    verdict = state.last_verdict
    if verdict is not None:
        by = f" ({verdict.detector})" if verdict.detector else ""
        lines.append(f"  last verdict: {verdict.severity} {verdict.reason}{by} at seq {verdict.at_seq}: "
                     f"{verdict.evidence.summary}")  # fmt: skip
        spent = verdict.evidence.spent
        if spent is not None and spent.describe() not in verdict.evidence.summary:  # a summary may say it already
            lines.append(f"  cost of the pattern: {spent.describe()}")
    shown = list(evidence)
    if shown:
        lines.append("  evidence:")
        lines += [f"  {step_line(step, marked=True)}" for step in shown]
    hint = next_step(state.status, state.stop_reason, state.run_id)
    if hint:
        lines.append(f"  next: {hint}")
    return "\n".join(lines)


def step_json(step: StoredStep, marked: bool = False) -> dict[str, Any]:
    """A stored step for ``--json``: its event's fields, its stream seq and whether it is evidence."""
    body: dict[str, Any] = step.event.model_dump(mode="json", exclude_none=True) if step.event else {}
    if step.error is not None:
        body["error"] = step.error
        body["undecodable"] = True
    return {"stream_seq": step.stream_seq, "evidence": marked, **body}


__all__ = [
    "EVIDENCE_MARK", "PS_COLUMNS", "TOP_COLUMNS", "age", "clip", "describe", "family_tree", "runs_table", "short_count",
    "signal_text", "stale", "step_json", "step_line",
]  # fmt: skip
