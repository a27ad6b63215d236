"""Score offline decisions against labelled runs.

Usage::

    .venv/bin/python -m bench.score LABELS VERDICTS [--steps STEPS] [--json | --markdown]

Any pause or stop decision of any reason makes a run positive (warnings are ignored).
Prints recall on ``loop`` runs; false-positive rates on ``healthy``, ``failed`` and
``limit_exit`` runs, with a breakdown by reason; the detection delay in *actions* (tool
calls and agent messages) from a loop's ``onset_seq`` and from its ``confirm_seq`` to the
first decision (median and p90; 0 means at the onset action itself, negative means the
run was caught before the labelled onset), beside the label rule's own span from onset to
confirm (the delay of a detector that acted exactly when the rule became true: a ``pair4x``
loop is only a loop at its fourth occurrence); and, for stopped runs, the events and tokens
that came after the stop in the recording (what stopping would have saved).

Then the same per group of runs: by ``source`` (the dev labels have one), by ``shape`` (the
synthetic labels have one) and by the ``detector`` of each run's first decision. Each row gives
the loops caught and how many of them as ``LOOP_DETECTED``/``NO_PROGRESS`` (the rest for another
reason), the healthy, failed and other runs stopped, the median delay in actions from the onset
(every labelled failure with an onset that was caught), and the reasons given. ``--markdown``
prints these tables as Markdown, ``--json`` everything as one JSON object (``by_source``,
``by_shape``, ``by_detector``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.traffic import TrafficError, read_events, traffic_format

DEFAULT_STEPS = Path("../shared/traces/dev.steps.jsonl")
_ACTION_KINDS = ("tool_call", "message")
#: The reasons a loop should be stopped with (DESIGN §4): the rest caught it for another reason.
LOOP_REASONS = ("LOOP_DETECTED", "NO_PROGRESS")
_PROGRESS_EVERY = 1_000_000  # events read between progress lines (on a terminal)


class ScoreError(ValueError):
    """An input file that cannot be scored; the message names the file and the line."""


@dataclass
class RunFacts:
    """What the score needs from a run's recorded events."""

    action_seqs: list[int] = field(default_factory=list)
    event_seqs: list[int] = field(default_factory=list)
    tokens_after: list[tuple[int, int]] = field(default_factory=list)


def load_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read a JSON Lines file of objects, each with the ``required`` keys.

    Raises:
        ScoreError: the file is missing, or a line is not such an object.
    """
    records = []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ScoreError(f"{path}: line {number}: not JSON ({exc.msg})") from None
                missing = [k for k in required if not isinstance(record, dict) or k not in record]
                if missing:
                    raise ScoreError(f"{path}: line {number}: expected an object with {', '.join(missing)}")
                records.append(record)
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ScoreError(f"{path}: not UTF-8 text") from None
    return records


def _step_records(steps: Path) -> Iterator[dict[str, Any]]:
    """The events of a steps file as dicts: JSON Lines read raw (fast), other formats through ``bench.traffic``."""
    try:
        plain_jsonl = traffic_format(steps) == ("jsonl", False)
    except TrafficError:
        plain_jsonl = True  # an unusual name: read it as JSON Lines
    if not plain_jsonl:
        try:
            for event in read_events(steps):
                yield event.model_dump(exclude_none=True)
        except TrafficError as exc:
            raise ScoreError(str(exc)) from None
        return
    try:
        with steps.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or "run_id" not in event or "seq" not in event:
                        raise ValueError("expected a step event with run_id and seq")
                except ValueError as exc:
                    problem = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    raise ScoreError(f"{steps}: line {number}: not a step event ({problem})") from None
                yield event
    except OSError as exc:
        raise ScoreError(f"{steps}: cannot read it ({exc.strerror or exc})") from None


def run_facts(steps: Path, wanted: set[str]) -> dict[str, RunFacts]:
    """Action seqs, event seqs and token counts per run, for the runs in ``wanted``."""
    facts: dict[str, RunFacts] = defaultdict(RunFacts)
    report = sys.stderr.isatty()
    for count, event in enumerate(_step_records(steps), 1):
        if report and count % _PROGRESS_EVERY == 0:
            print(f"score: {count:,} events read from {steps}", file=sys.stderr, flush=True)
        run_id = event["run_id"]
        if run_id not in wanted:
            continue
        f = facts[run_id]
        seq = int(event["seq"])
        f.event_seqs.append(seq)
        if event.get("kind") in _ACTION_KINDS and event.get("agent") != "user":
            f.action_seqs.append(seq)
        tokens = int(event.get("tokens_in") or 0) + int(event.get("tokens_out") or 0)
        if tokens:
            f.tokens_after.append((seq, tokens))
    return facts


def actions_between(facts: RunFacts, start: int, end: int) -> int:
    """Actions from the one at or after ``start`` up to ``end``: 0 when ``end`` is that action's own step.

    Negative when ``end`` comes first: -k means ``end`` was k actions before that one.
    """
    if end >= start:
        return max(0, sum(1 for s in facts.action_seqs if start <= s <= end) - 1)
    anchor = next((s for s in facts.action_seqs if s >= start), start)
    return -sum(1 for s in facts.action_seqs if end < s <= anchor)


def _stats(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "p90": None}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90))}


def first_decisions(decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each run's first pause or stop (warnings ignored): the one that acted."""
    first: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if d.get("severity", "stop") == "warn":
            continue
        if d["run_id"] not in first or d["at_seq"] < first[d["run_id"]]["at_seq"]:
            first[d["run_id"]] = d
    return first


Grouping = Callable[[dict[str, Any], dict[str, Any] | None], str | None]


def by_source(label: dict[str, Any], _: dict[str, Any] | None) -> str | None:
    return str(label.get("source") or "?")


def by_shape(label: dict[str, Any], _: dict[str, Any] | None) -> str | None:
    return str(label.get("shape") or "?")


def by_detector(_: dict[str, Any], decision: dict[str, Any] | None) -> str | None:
    return None if decision is None else str(decision.get("detector") or "?")


def breakdown(
    labels: list[dict[str, Any]],
    first: dict[str, dict[str, Any]],
    facts: dict[str, RunFacts] | None,
    group_of: Grouping,
) -> dict[str, dict[str, Any]]:
    """Per group (``group_of(label, first decision)``, None to leave a run out): see the module docstring."""
    groups: dict[str, dict[str, Any]] = {}
    for lab in labels:
        hit = first.get(lab["run_id"])
        name = group_of(lab, hit)
        if name is None:
            continue
        g = groups.setdefault(
            name,
            {"runs": 0, "loops": 0, "loops_caught": 0, "loops_as_loop": 0, "loops_other_reason": 0, "healthy": 0,
             "healthy_stopped": 0, "failed": 0, "failed_stopped": 0, "other": 0, "other_stopped": 0,
             "delays": [], "reasons": Counter()},
        )  # fmt: skip
        g["runs"] += 1
        kind = lab["label"] if lab["label"] in ("loop", "healthy", "failed") else "other"
        g["loops" if kind == "loop" else kind] += 1
        if hit is None:
            continue
        reason = str(hit.get("reason") or "?")
        g["reasons"][reason] += 1
        if kind == "loop":
            g["loops_caught"] += 1
            g["loops_as_loop" if reason in LOOP_REASONS else "loops_other_reason"] += 1
        else:
            g[f"{kind}_stopped"] += 1
        onset = lab.get("onset_seq")
        if kind != "healthy" and onset is not None and facts is not None and lab["run_id"] in facts:
            g["delays"].append(actions_between(facts[lab["run_id"]], int(onset), int(hit["at_seq"])))
    for g in groups.values():
        delays = g.pop("delays")
        g["delay_actions_from_onset"] = _stats(delays) | {"values": delays}
        g["reasons"] = dict(sorted(g["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(groups.items()))


def score(labels: list[dict[str, Any]], decisions: list[dict[str, Any]], steps: Path | None) -> dict[str, Any]:
    """Compute the figures; see the module docstring."""
    first = first_decisions(decisions)
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lab in labels:
        by_label[lab["label"]].append(lab)
    result: dict[str, Any] = {"runs": {k: len(v) for k, v in by_label.items()}}
    for label, runs in sorted(by_label.items()):
        hits = [r for r in runs if r["run_id"] in first]
        reasons = Counter(first[r["run_id"]]["reason"] for r in hits)
        detectors = Counter(first[r["run_id"]].get("detector", "?") for r in hits)
        key = "recall" if label == "loop" else "positive_rate"
        result[label] = {
            key: len(hits) / len(runs) if runs else 0.0,
            "positives": len(hits),
            "runs": len(runs),
            "by_reason": dict(reasons),
            "by_detector": dict(detectors),
            "positive_runs": sorted(r["run_id"] for r in hits),
        }
    facts: dict[str, RunFacts] | None = None
    if steps is not None and steps.exists():
        loops = by_label.get("loop", [])
        facts = run_facts(steps, set(first) | {lab["run_id"] for lab in loops})
        if labels and not any(lab["run_id"] in facts for lab in labels):
            print(f"score: warning: none of the labelled runs is in {steps}; pass the steps they came from "
                  "(--steps) for delays and savings", file=sys.stderr)  # fmt: skip
        onset_delays: list[int] = []
        confirm_delays: list[int] = []
        rule_spans: list[int] = []
        for lab in loops:
            if lab.get("onset_seq") is None:
                continue
            f = facts[lab["run_id"]]
            if lab.get("confirm_seq") is not None:
                rule_spans.append(actions_between(f, int(lab["onset_seq"]), int(lab["confirm_seq"])))
            hit = first.get(lab["run_id"])
            if hit is None:
                continue
            onset_delays.append(actions_between(f, int(lab["onset_seq"]), int(hit["at_seq"])))
            if lab.get("confirm_seq") is not None:
                confirm_delays.append(actions_between(f, int(lab["confirm_seq"]), int(hit["at_seq"])))
        result["delay_actions_from_onset"] = _stats(onset_delays) | {"values": onset_delays}
        result["delay_actions_from_confirm"] = _stats(confirm_delays) | {"values": confirm_delays}
        result["label_rule_onset_to_confirm"] = _stats(rule_spans) | {"values": rule_spans}
        saved: dict[str, dict[str, int]] = {}
        for label, runs in by_label.items():
            ev = tok = 0
            for r in runs:
                stop = first.get(r["run_id"])
                if stop is None or stop.get("severity") != "stop":
                    continue
                f = facts[r["run_id"]]
                ev += sum(1 for s in f.event_seqs if s > stop["at_seq"])
                tok += sum(t for s, t in f.tokens_after if s > stop["at_seq"])
            saved[label] = {"events_after_stop": ev, "tokens_after_stop": tok}
        result["saved"] = saved
    if any(lab.get("source") for lab in labels):
        result["by_source"] = breakdown(labels, first, facts, by_source)
    if any(lab.get("shape") for lab in labels):
        result["by_shape"] = breakdown(labels, first, facts, by_shape)
    result["by_detector"] = breakdown(labels, first, facts, by_detector)
    return result


# --- printing ----------------------------------------------------------------------------------------

_COLUMNS = ("runs", "loops caught", "as loop", "other reason", "healthy stopped", "failed stopped",
            "others stopped", "median delay", "reasons")  # fmt: skip


def _of(stopped: int, total: int) -> str:
    return f"{stopped}/{total}" if total else "-"


def table_rows(groups: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row of ``_COLUMNS`` per group: counts as "caught/of", a dash where a group has no such runs."""
    rows = []
    for name, g in groups.items():
        median = g["delay_actions_from_onset"]["median"]
        rows.append([
            name, str(g["runs"]), _of(g["loops_caught"], g["loops"]),
            str(g["loops_as_loop"]) if g["loops"] else "-", str(g["loops_other_reason"]) if g["loops"] else "-",
            _of(g["healthy_stopped"], g["healthy"]), _of(g["failed_stopped"], g["failed"]),
            _of(g["other_stopped"], g["other"]), "-" if median is None else f"{median:g}",
            ", ".join(f"{reason} {n}" for reason, n in g["reasons"].items()) or "-",
        ])  # fmt: skip
    return rows


def _tables(result: dict[str, Any]) -> Iterator[tuple[str, str, list[list[str]]]]:
    for key, title, what in (("by_source", "By source", "source"), ("by_shape", "By shape", "shape"),
                             ("by_detector", "By detector (of each run's first decision)", "detector")):  # fmt: skip
        if result.get(key):
            yield title, what, table_rows(result[key])


def markdown(result: dict[str, Any]) -> str:
    """The overall figures and the breakdowns as Markdown tables."""
    lines = ["| label | runs | stopped or paused | rate |", "|---|---|---|---|"]
    order = ("loop", "healthy", "failed", "limit_exit")
    for label, runs in sorted(
        result["runs"].items(), key=lambda kv: (kv[0] not in order, order.index(kv[0]) if kv[0] in order else 0, kv[0])
    ):
        r = result[label]
        rate = f"recall {r['recall']:.2f}" if label == "loop" else f"{r['positive_rate']:.2%}"
        lines.append(f"| {label} | {runs} | {r['positives']} | {rate} |")
    for title, what, rows in _tables(result):
        lines += ["", f"**{title}**", "", "| " + " | ".join((what, *_COLUMNS)) + " |"]
        lines += ["|---" * (len(_COLUMNS) + 1) + "|", *("| " + " | ".join(row) + " |" for row in rows)]
    lines += ["", "Delays are in actions from the labelled onset (median over the caught runs that have one)."]
    return "\n".join(lines)


def _print(result: dict[str, Any]) -> None:
    for label in ("loop", "healthy", "failed", "limit_exit"):
        if label not in result:
            continue
        r = result[label]
        key = "recall" if label == "loop" else "positive_rate"
        print(f"{label:10s} {key}={r[key]:.3f} ({r['positives']}/{r['runs']}) by reason {r['by_reason']}")
        if r["positives"] and label != "loop":
            print(f"{'':10s} by detector {r['by_detector']}")
    for key in ("delay_actions_from_onset", "delay_actions_from_confirm", "label_rule_onset_to_confirm"):
        if key in result:
            s = result[key]
            print(f"{key}: median={s['median']} p90={s['p90']} values={s['values']}")
    if "saved" in result:
        for label, s in result["saved"].items():
            print(f"saved by stops on {label}: {s['events_after_stop']} events, {s['tokens_after_stop']} tokens")
    for title, what, rows in _tables(result):
        header = [what, *_COLUMNS]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        print(f"\n{title}:")
        for row in (header, *rows):
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)) + "  " + row[-1])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, score, print; exit 2 with one line on stderr for a file that cannot be read."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.score", description="Score offline decisions against labelled runs."
    )
    parser.add_argument("labels", type=Path, help="labels JSONL: run_id, label, onset_seq, and source or shape")
    parser.add_argument("verdicts", type=Path, help="decisions JSONL (bench.offline --out): run_id, reason, at_seq")
    parser.add_argument("--steps", type=Path, help=f"the runs' step events, for delays and savings (default: "
                        f"{DEFAULT_STEPS} if it exists)")  # fmt: skip
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the figures as JSON")
    out.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    args = parser.parse_args(argv)
    try:
        if args.steps is not None and not args.steps.exists():
            raise ScoreError(f"{args.steps}: no such steps file")
        labels = load_jsonl(args.labels, ("run_id", "label"))
        verdicts = load_jsonl(args.verdicts, ("run_id", "reason", "at_seq"))
        result = score(labels, verdicts, args.steps or DEFAULT_STEPS)
    except ScoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.json:
            print(json.dumps(result, indent=2))
        elif args.markdown:
            print(markdown(result))
        else:
            _print(result)
        sys.stdout.flush()
    except BrokenPipeError:  # ``| head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
