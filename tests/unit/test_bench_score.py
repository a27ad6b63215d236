"""bench.score: recall, false positives and delays counted in actions, on a tiny labelled set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.score import score


def _steps(path: Path, runs: dict[str, list[str]]) -> Path:
    """One event per kind listed, seq = position in the run."""
    with path.open("w", encoding="utf-8") as fh:
        for run_id, kinds in runs.items():
            for seq, kind in enumerate(kinds):
                fh.write(json.dumps({"run_id": run_id, "seq": seq, "ts": 1.0 + seq, "kind": kind}) + "\n")
    return path


def _label(run_id: str, label: str, onset: int | None = None, confirm: int | None = None) -> dict[str, Any]:
    return {"run_id": run_id, "label": label, "onset_seq": onset, "confirm_seq": confirm}


def _stop(run_id: str, at_seq: int, severity: str = "stop") -> dict[str, Any]:
    return {"run_id": run_id, "reason": "LOOP_DETECTED", "at_seq": at_seq, "severity": severity}


def test_recall_false_positives_and_delays(tmp_path: Path) -> None:
    # Actions are tool_calls; each is followed by its result, so action k sits at seq 2k.
    pairs = ["tool_call", "tool_result"] * 8
    steps = _steps(tmp_path / "steps.jsonl", {"loop-a": pairs, "loop-b": pairs, "ok-1": pairs, "ok-2": pairs})
    labels = [
        _label("loop-a", "loop", onset=2, confirm=8),  # actions 1..4: the rule confirms 3 actions after onset
        _label("loop-b", "loop", onset=4, confirm=12),  # missed: its rule span still counts
        _label("ok-1", "healthy"),
        _label("ok-2", "healthy"),
    ]
    decisions = [
        _stop("loop-a", 5, severity="warn"),  # warnings never count
        _stop("loop-a", 7),  # the stop on action 3's result: 2 actions after onset, 1 before confirm
        _stop("ok-2", 3),
    ]
    result = score(labels, decisions, steps)
    assert result["loop"]["recall"] == 0.5
    assert result["loop"]["positive_runs"] == ["loop-a"]
    assert result["healthy"]["positive_rate"] == 0.5
    assert result["delay_actions_from_onset"]["values"] == [2]
    assert result["delay_actions_from_confirm"]["values"] == [-1]
    assert result["label_rule_onset_to_confirm"]["values"] == [3, 4]
    assert result["label_rule_onset_to_confirm"]["median"] == 3.5
