"""The run's desired state folded from its commands: pure, no server."""

from __future__ import annotations

from runvisor.actors.agent._commands import Controls
from runvisor.protocols.commands import end_reason
from runvisor.protocols.messages import Command, Evidence
from runvisor.protocols.reasons import StopReason


def test_pause_then_resume_returns_to_running() -> None:
    controls = Controls()
    assert controls.apply(Command(cmd="pause", ts=1.0))
    assert controls.pause is not None
    assert controls.apply(Command(cmd="resume", ts=2.0))
    assert controls.pause is None
    assert controls.last is not None
    assert controls.last.cmd == "resume"


def test_the_same_command_twice_changes_nothing_the_second_time() -> None:
    controls = Controls()
    pause = Command(cmd="pause", ts=1.0)
    assert controls.apply(pause)
    assert not controls.apply(pause)
    assert not controls.apply_stored(pause)


def test_kill_is_final_whatever_comes_after() -> None:
    controls = Controls()
    controls.apply(Command(cmd="kill", ts=1.0))
    assert controls.killed
    assert not controls.apply(Command(cmd="resume", ts=2.0))
    assert controls.terminal is not None
    assert controls.terminal.cmd == "kill"


def test_stored_command_older_than_one_applied_live_is_ignored() -> None:
    controls = Controls()
    controls.apply(Command(cmd="resume", ts=5.0))
    assert not controls.apply_stored(Command(cmd="pause", ts=4.0))
    assert controls.pause is None
    assert controls.apply_stored(Command(cmd="pause", ts=6.0))


def test_stop_carries_its_reason_and_is_described_with_evidence() -> None:
    stop = Command(
        cmd="stop", reason=StopReason.LOOP_DETECTED, issuer="supervisor", evidence=Evidence(summary="x6 same call")
    )
    controls = Controls()
    controls.apply(stop)
    assert not controls.killed
    assert end_reason(stop) == StopReason.LOOP_DETECTED
    assert stop.describe() == "stop by supervisor LOOP_DETECTED (x6 same call)"
    assert end_reason(Command(cmd="kill")) == StopReason.USER_KILLED
