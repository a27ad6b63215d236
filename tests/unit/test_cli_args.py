"""The CLI refuses numbers that make no sense with one line naming the option, before doing anything."""

from __future__ import annotations

import pytest

from runvisor.actors.cli import _parser, main
from runvisor.protocols.commands import refusal
from runvisor.protocols.messages import Command, RunState
from runvisor.protocols.reasons import RunStatus, StopReason


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--connect-timeout", "-1", "ps"], "argument --connect-timeout: must be more than 0, got -1"),
        (["top", "--interval", "0"], "argument --interval: must be more than 0, got 0"),
        (["top", "--limit", "x"], "argument --limit: not a whole number: 'x'"),
        (["top", "--limit", "0"], "argument --limit: must be 1 or more, got 0"),
        (["supervisor", "--partitions", "0"], "argument --partitions: must be 1 or more, got 0"),
        (["supervisor", "--lookback", "-5"], "argument --lookback: must be 0 or more, got -5"),
        (["supervisor", "--idle", "0"], "argument --idle: must be more than 0, got 0"),
        (["supervisor", "--lease-ttl", "nan"], "argument --lease-ttl: must be more than 0, got nan"),
        (["up", "--port", "70000"], "argument --port: must be a port from 0 to 65535, got 70000"),
        (["up", "--supervisors", "-1"], "argument --supervisors: must be 0 or more, got -1"),
        (["tools", "m:t", "--concurrency", "0"], "argument --concurrency: must be 1 or more, got 0"),
        (["supervisor", "--policy", "/nonexistent.json"], "argument --policy: cannot read /nonexistent.json"),
    ],
)
def test_a_nonsense_number_is_refused_by_name(args: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "dest", "value"),
    [
        (["up", "--port", "0"], "port", 0),
        (["supervisor", "--lookback", "0"], "lookback", 0.0),
        (["top", "--interval", "0.5"], "interval", 0.5),
        (["supervisor", "--idle", "60"], "idle", 60.0),
    ],
)
def test_edge_values_that_make_sense_are_accepted(args: list[str], dest: str, value: float) -> None:
    assert getattr(_parser().parse_args(args), dest) == value


def test_a_misspelt_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["puase", "run-1"])
    assert exit_.value.code == 2
    assert "unknown command 'puase'; did you mean 'pause'?" in capsys.readouterr().err


def test_a_command_without_its_run_asks_for_the_run_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pause"])
    err = capsys.readouterr().err
    assert "the following arguments are required: run_id" in err
    assert "note" not in err.splitlines()[-1], "the note is optional"


@pytest.mark.parametrize(
    ("status", "reason", "cmd", "refused"),
    [
        (RunStatus.RUNNING, None, "pause", None),
        (RunStatus.RUNNING, None, "resume", "run r is RUNNING: a resume would change nothing"),
        (RunStatus.PAUSED, StopReason.USER_PAUSED, "resume", None),
        (RunStatus.PAUSED, StopReason.USER_PAUSED, "kill", None),
        (RunStatus.STOPPED, StopReason.LOOP_DETECTED, "resume", "run r has ended (STOPPED, LOOP_DETECTED)"),
        (RunStatus.COMPLETED, StopReason.COMPLETED, "kill", "run r has ended (COMPLETED"),
    ],
)
def test_a_command_that_would_change_nothing_is_refused(
    status: RunStatus, reason: StopReason | None, cmd: str, refused: str | None
) -> None:
    said = refusal("r", RunState(run_id="r", status=status, stop_reason=reason), Command(cmd=cmd))
    assert (said is None) == (refused is None), said
    if refused is not None:
        assert said is not None
        assert refused in said


def test_a_command_for_an_unknown_run_is_refused() -> None:
    said = refusal("ghost", None, Command(cmd="kill"))
    assert said is not None
    assert "no run 'ghost' is known" in said
