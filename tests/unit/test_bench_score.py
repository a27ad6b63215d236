"""bench.score: recall, false positives and delays counted in actions, on a tiny labelled set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.score import main, markdown, score


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


def _decision(run_id: str, at_seq: int, reason: str, detector: str) -> dict[str, Any]:
    return {"run_id": run_id, "reason": reason, "at_seq": at_seq, "severity": "stop", "detector": detector}


def _tiny(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Two sources, three shapes, three detectors; action k sits at seq 2k."""
    pairs = ["tool_call", "tool_result"] * 10
    ids = ("q1", "q2", "q3", "r1", "h1", "h2", "f1", "s1")
    steps = _steps(tmp_path / "steps.jsonl", dict.fromkeys(ids, pairs))
    labels = [
        _label("q1", "loop", onset=4) | {"source": "dev", "shape": "empty_queries"},  # caught 3 actions in
        _label("q2", "loop", onset=4) | {"source": "dev", "shape": "empty_queries"},  # caught, for another reason
        _label("q3", "loop", onset=4) | {"source": "dev", "shape": "empty_queries"},  # missed
        _label("r1", "loop", onset=2) | {"source": "synth", "shape": "rerun_rhythm"},  # caught 5 actions in
        _label("h1", "healthy") | {"source": "dev", "shape": "paging"},  # stopped: a false positive
        _label("h2", "healthy") | {"source": "synth", "shape": "paging"},
        _label("f1", "failed") | {"source": "dev"},  # stopped, no shape
        _label("s1", "stall", onset=6) | {"source": "synth", "shape": "stall"},  # caught 1 action in
    ]
    decisions = [
        _decision("q1", 10, "LOOP_DETECTED", "fruitless_search"),
        _decision("q1", 12, "TOOL_FAILURE", "consecutive_failures"),  # not the first: ignored
        _decision("q2", 12, "TOOL_FAILURE", "consecutive_failures"),
        _decision("r1", 12, "NO_PROGRESS", "novelty"),
        _decision("h1", 9, "LOOP_DETECTED", "fruitless_search"),
        _decision("f1", 5, "TOOL_FAILURE", "consecutive_failures"),
        _decision("s1", 8, "TIMEOUT", "stall"),
    ]
    return labels, decisions, steps


def test_breakdown_per_source_shape_and_detector(tmp_path: Path) -> None:
    labels, decisions, steps = _tiny(tmp_path)
    result = score(labels, decisions, steps)
    dev, synth = result["by_source"]["dev"], result["by_source"]["synth"]
    assert (dev["runs"], dev["loops"], dev["loops_caught"], dev["loops_as_loop"], dev["loops_other_reason"]) == (
        5, 3, 2, 1, 1,
    )  # fmt: skip
    assert (dev["healthy"], dev["healthy_stopped"], dev["failed"], dev["failed_stopped"]) == (1, 1, 1, 1)
    assert dev["delay_actions_from_onset"]["values"] == [3, 4]  # q1 at action 5 from onset 2; q2 at action 6
    assert list(dev["reasons"].items()) == [("LOOP_DETECTED", 2), ("TOOL_FAILURE", 2)]
    assert (synth["loops_caught"], synth["loops_as_loop"], synth["other"], synth["other_stopped"]) == (1, 1, 1, 1)
    assert synth["delay_actions_from_onset"]["values"] == [5, 1]  # r1, then s1
    shapes = result["by_shape"]
    assert set(shapes) == {"empty_queries", "rerun_rhythm", "paging", "stall", "?"}
    assert (shapes["empty_queries"]["loops"], shapes["empty_queries"]["loops_caught"]) == (3, 2)
    assert (shapes["paging"]["healthy"], shapes["paging"]["healthy_stopped"]) == (2, 1)
    assert shapes["empty_queries"]["delay_actions_from_onset"]["median"] == 3.5
    detectors = result["by_detector"]
    assert set(detectors) == {"fruitless_search", "consecutive_failures", "novelty", "stall"}
    assert (detectors["fruitless_search"]["loops_caught"], detectors["fruitless_search"]["healthy_stopped"]) == (1, 1)
    assert detectors["consecutive_failures"]["runs"] == 2  # q2 and f1: q1 was stopped first by another
    assert detectors["novelty"]["reasons"] == {"NO_PROGRESS": 1}


def test_markdown_prints_a_table_per_breakdown(tmp_path: Path) -> None:
    labels, decisions, steps = _tiny(tmp_path)
    text = markdown(score(labels, decisions, steps))
    assert "| loop | 4 | 3 | recall 0.75 |" in text
    assert "| shape | runs | loops caught | as loop | other reason |" in text
    assert "| empty_queries | 3 | 2/3 | 1 | 1 | - | - | - | 3.5 | LOOP_DETECTED 1, TOOL_FAILURE 1 |" in text
    assert "| paging | 2 | - | - | - | 1/2 | - | - | - | LOOP_DETECTED 1 |" in text
    assert "| consecutive_failures | 2 |" in text


def test_the_command_line_prints_json_markdown_or_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, decisions, steps = _tiny(tmp_path)
    label_file, verdict_file = tmp_path / "labels.jsonl", tmp_path / "verdicts.jsonl"
    label_file.write_text("".join(json.dumps(x) + "\n" for x in labels))
    verdict_file.write_text("".join(json.dumps(x) + "\n" for x in decisions))
    files = [str(label_file), str(verdict_file), "--steps", str(steps)]
    assert main([*files, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"by_source", "by_shape", "by_detector"} <= set(result)
    assert main([*files, "--markdown"]) == 0
    assert "**By shape**" in capsys.readouterr().out
    assert main(files) == 0
    assert "By detector" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("which", "content", "says"),
    [("labels", None, "cannot read it"), ("verdicts", "{not json\n", "line 1: not JSON"),
     ("verdicts", '{"run_id": "a"}\n', "line 1: expected an object with reason, at_seq"),
     ("steps", None, "no such steps file"), ("steps", '{"run_id": "a", "seq": 0}\n[1]\n', "line 2: not a step event")],
)  # fmt: skip
def test_an_unreadable_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, content: str | None, says: str
) -> None:
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("labels", "verdicts", "steps")}
    paths["labels"].write_text(json.dumps(_label("a", "loop", onset=0)) + "\n")
    paths["verdicts"].write_text(json.dumps(_stop("a", 1)) + "\n")
    _steps(paths["steps"], {"a": ["tool_call", "tool_result"]})
    paths[which].unlink()
    if content is not None:
        paths[which].write_text(content)
    assert main([str(paths["labels"]), str(paths["verdicts"]), "--steps", str(paths["steps"])]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert str(paths[which]) in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
