"""The one fold of a run's commands, shared by the agent SDK and supervisors: pure, no server."""

from __future__ import annotations

from runvisor.actors.agent._commands import Controls
from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols.commands import CommandState, fold
from runvisor.protocols.messages import Command, StepEvent
from runvisor.protocols.reasons import RunStatus, StopReason

RUNNING = CommandState()


def test_pause_resume_and_kill() -> None:
    paused = fold(RUNNING, Command(cmd="pause"))
    assert paused == CommandState(RunStatus.PAUSED, StopReason.USER_PAUSED)
    assert fold(paused, Command(cmd="resume")) == RUNNING
    killed = fold(paused, Command(cmd="kill"))
    assert killed == CommandState(RunStatus.STOPPED, StopReason.USER_KILLED)


def test_an_ended_run_stays_as_it_ended() -> None:
    killed = fold(RUNNING, Command(cmd="kill"))
    completed = CommandState(RunStatus.COMPLETED, StopReason.COMPLETED)
    for command in ("pause", "resume", "kill"):
        assert fold(killed, Command(cmd=command)) is killed
        assert fold(completed, Command(cmd=command)) is completed
    assert fold(killed, Command(cmd="stop", reason=StopReason.LOOP_DETECTED)) is killed


def test_resume_of_a_running_run_changes_nothing() -> None:
    assert fold(RUNNING, Command(cmd="resume")) is RUNNING


def test_the_agent_and_the_supervisor_agree_on_every_sequence() -> None:
    sequences = [
        ["pause", "resume", "pause"],
        ["pause", "kill", "resume"],
        ["kill", "pause"],
        ["resume", "pause", "pause", "resume"],
    ]
    for names in sequences:
        controls, engine = Controls(), Engine()
        engine.observe(StepEvent(run_id="r", seq=0, ts=1.0, kind="start", task="t"), 1.0)
        for i, name in enumerate(names):
            command = Command(cmd=name, ts=float(i))
            controls.apply(command)
            engine.apply_command("r", command, float(i))
        state = engine.state("r")
        assert (state.status, state.stop_reason) == (controls.state.status, controls.state.reason), names


def test_a_kill_after_completion_does_not_rewrite_the_run() -> None:
    engine = Engine()
    engine.observe(StepEvent(run_id="r", seq=0, ts=1.0, kind="start", task="t"), 1.0)
    engine.observe(StepEvent(run_id="r", seq=1, ts=2.0, kind="final", observation="done"), 2.0)
    before = engine.state("r")
    assert before.status is RunStatus.COMPLETED
    engine.apply_command("r", Command(cmd="kill"), 3.0)
    after = engine.state("r")
    assert (after.status, after.stop_reason) == (before.status, before.stop_reason)
