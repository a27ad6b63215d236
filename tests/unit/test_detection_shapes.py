"""Each new detector catches its synthetic shape (bench.synth), and no detector stops the healthy shapes.

The shapes are the loops of weaker coding agents that DESIGN §4 describes and that no repeat
counter sees, and the false stops it names; ``bench.synth.shape_run`` builds one run of each.
"""

from __future__ import annotations

import pytest

from bench.synth import HEALTHY_SHAPES, shape_run
from runvisor.actors.supervisor.detection import Engine, RunWindow
from runvisor.actors.supervisor.detection.detectors import (
    ACTION_DETECTORS,
    Detector,
    EmptyAnswers,
    ErrorRhythm,
    NearDuplicate,
    RejectedInput,
    Replay,
    SameError,
)
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import StopReason

SEEDS = range(6)
#: The detector that exists for each shape (DESIGN §4's list of loops that are not repeats).
CATCHES: dict[str, tuple[Detector, ...]] = {
    "empty_queries": (EmptyAnswers(),),
    "numbers_only": (NearDuplicate(),),
    "replay_once": (Replay(),),
    "rejected_input": (RejectedInput(),),
    "env_hole": (SameError(), ErrorRhythm()),
    "rerun_rhythm": (ErrorRhythm(),),
}


def _firings(shape: str, seed: int, detectors: tuple[Detector, ...], actions: int = 40) -> list[int]:
    """Seqs at which any of ``detectors`` finds something, judging the run action by action."""
    events, _label = shape_run(shape, seed=seed, actions=actions)
    window = RunWindow(events[0].run_id, Policy())
    found: list[int] = []
    for event in events:
        if window.observe(event, event.ts):
            found.extend(event.seq for d in detectors if d.check(window, window.policy) is not None)
    return found


@pytest.mark.parametrize("shape", sorted(CATCHES))
@pytest.mark.parametrize("seed", SEEDS)
def test_each_new_detector_catches_its_shape_after_the_onset(shape: str, seed: int) -> None:
    _events, label = shape_run(shape, seed=seed, actions=60)
    found = _firings(shape, seed, CATCHES[shape], actions=60)
    assert found, f"{shape} (seed {seed}) was never found by {[d.name for d in CATCHES[shape]]}"
    assert label.onset_seq is not None
    assert min(found) >= label.onset_seq


@pytest.mark.parametrize("shape", sorted(CATCHES))
@pytest.mark.parametrize("seed", SEEDS)
def test_the_engine_stops_each_shape_as_a_loop_never_as_a_tool_failure(shape: str, seed: int) -> None:
    events, _label = shape_run(shape, seed=seed, actions=60)
    engine = Engine()
    acted = [v for e in events for v in engine.observe(e, e.ts) if v.severity != "warn"]
    assert acted, f"{shape} (seed {seed}) was not stopped"
    assert acted[0].reason is StopReason.LOOP_DETECTED
    assert acted[0].evidence.spent is not None  # what the loop cost, from its first evidence on


@pytest.mark.parametrize("shape", HEALTHY_SHAPES)
@pytest.mark.parametrize("seed", range(10))
def test_no_detector_finds_anything_in_the_healthy_shapes(shape: str, seed: int) -> None:
    loop_and_failure = tuple(d for d in ACTION_DETECTORS if d.reason is not StopReason.NO_PROGRESS)
    assert _firings(shape, seed, loop_and_failure) == []
    events, _label = shape_run(shape, seed=seed)
    engine = Engine()
    assert [v for e in events for v in engine.observe(e, e.ts) if v.severity != "warn"] == []
