"""The public surface: what ``from runvisor import ...`` offers, pinned (temporalio's test_client_exports)."""

from __future__ import annotations

import inspect

import runvisor
import runvisor.errors

PUBLIC = {
    # the agent side
    "Run",
    "supervised_tool",
    "Policy",
    "RunStatus",
    "StopReason",
    # tools and their executor
    "ToolRegistry",
    "ToolPolicy",
    "ToolExecutor",
    "BackoffPolicy",
    "BreakerPolicy",
    "BudgetPolicy",
    # what operators' scripts read
    "Command",
    "RunState",
    "StepEvent",
    "Verdict",
    # errors
    "RunvisorError",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "EndpointError",
    "NotProvisionedError",
    "PermissionDenied",
    "RateLimited",
    "RunError",
    "RunKilled",
    "RunNotFound",
    "RunNotResumable",
    "RunStopped",
    "ServerError",
    "TransientError",
}


def test_the_public_names_are_exactly_these() -> None:
    assert set(runvisor.__all__) == PUBLIC
    assert len(runvisor.__all__) == len(PUBLIC), "no name listed twice"


def test_every_public_name_is_importable_and_none_is_private() -> None:
    for name in runvisor.__all__:
        assert not name.startswith("_")
        value = getattr(runvisor, name)
        assert value.__module__.startswith("runvisor."), f"{name} comes from {value.__module__}"


def test_nothing_public_is_left_out_of_all() -> None:
    exported = {
        name for name, value in vars(runvisor).items() if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert exported == set(runvisor.__all__)


def test_every_error_runvisor_raises_has_one_base() -> None:
    errors = [getattr(runvisor.errors, name) for name in runvisor.errors.__all__]
    assert all(issubclass(error, runvisor.RunvisorError) for error in errors)
    # An agent started with no server reachable catches the documented ConnectError.
    assert issubclass(runvisor.EndpointError, runvisor.ConnectError)
    # Bad input is also a ValueError, which pydantic validators and older callers expect.
    assert issubclass(runvisor.ConfigError, ValueError)
    assert issubclass(runvisor.DecodeError, ValueError)


def test_an_error_message_says_what_to_do() -> None:
    stopped = runvisor.RunStopped(runvisor.StopReason.BUDGET_EXCEEDED, run_id="r1")
    assert "run r1 was stopped: BUDGET_EXCEEDED" in str(stopped)
    assert "(next: " in str(stopped)
    assert "nothing to resume" in str(runvisor.RunNotFound("r1"))
