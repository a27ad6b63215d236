"""Score offline decisions against labelled runs.

Usage::

    .venv/bin/python -m bench.score LABELS VERDICTS [--steps STEPS] [--json]

Any pause or stop decision of any reason makes a run positive (warnings are ignored).
Prints recall on ``loop`` runs; false-positive rates on ``healthy``, ``failed`` and
``limit_exit`` runs, with a breakdown by reason; the detection delay in *actions* (tool
calls and agent messages) from a loop's ``onset_seq`` and from its ``confirm_seq`` to the
first decision (median and p90; 0 means at the onset action itself, negative means the
run was caught before the labelled onset), beside the label rule's own span from onset to
confirm (the delay of a detector that acted exactly when the rule became true: a ``pair4x``
loop is only a loop at its fourth occurrence); and, for stopped runs, the events and tokens
that came after the stop in the recording (what stopping would have saved).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_STEPS = Path("../shared/traces/dev.steps.jsonl")
_ACTION_KINDS = ("tool_call", "message")


@dataclass
class RunFacts:
    """What the score needs from a run's recorded events."""

    action_seqs: list[int] = field(default_factory=list)
    event_seqs: list[int] = field(default_factory=list)
    tokens_after: list[tuple[int, int]] = field(default_factory=list)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_facts(steps: Path, wanted: set[str]) -> dict[str, RunFacts]:
    """Action seqs, event seqs and token counts per run, for the runs in ``wanted``."""
    facts: dict[str, RunFacts] = defaultdict(RunFacts)
    with steps.open(encoding="utf-8") as fh:
        for line in fh:
            event = json.loads(line)
            run_id = event["run_id"]
            if run_id not in wanted:
                continue
            f = facts[run_id]
            seq = int(event["seq"])
            f.event_seqs.append(seq)
            if event["kind"] in _ACTION_KINDS and event.get("agent") != "user":
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


def score(labels: list[dict[str, Any]], decisions: list[dict[str, Any]], steps: Path | None) -> dict[str, Any]:
    """Compute the figures; see the module docstring."""
    first: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if d.get("severity", "stop") == "warn":
            continue
        if d["run_id"] not in first or d["at_seq"] < first[d["run_id"]]["at_seq"]:
            first[d["run_id"]] = d
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
    if steps is not None and steps.exists():
        loops = by_label.get("loop", [])
        facts = run_facts(steps, set(first) | {lab["run_id"] for lab in loops})
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
    return result


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


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, score, print."""
    parser = argparse.ArgumentParser(description="Score offline decisions against labelled runs.")
    parser.add_argument("labels", type=Path)
    parser.add_argument("verdicts", type=Path)
    parser.add_argument("--steps", type=Path, default=DEFAULT_STEPS, help="for delays and savings")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = score(load_jsonl(args.labels), load_jsonl(args.verdicts), args.steps)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
