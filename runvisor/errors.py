"""Every error runvisor raises, under one base (dramatiq's ``errors.py``, nats.py's ``errors.py``).

Each message says what happened and what to do. Catch :class:`RunvisorError` for all of them::

    RunvisorError
    ├── ConfigError           input runvisor refuses: a run id, a policy, a number (also a ValueError)
    ├── DecodeError           bytes that are not a valid message (also a ValueError)
    ├── ConnectError          NATS could not be reached, or refused the login
    │   └── EndpointError     no server found, or its credentials are missing
    ├── PermissionDenied      the server refused this role an operation (README "Security")
    ├── ServerError           the embedded server could not be started or stopped
    │   └── NotProvisionedError   the streams and buckets are missing: run `runvisor up`
    ├── RunError              raised into the agent's code by its run
    │   ├── RunKilled         an operator killed it; it can never continue
    │   ├── RunStopped        stopped, with the reason and the evidence
    │   ├── RunNotResumable   resume of a run that ended for good
    │   └── RunNotFound       resume of a run with no checkpoint
    └── TransientError        raised by a tool: worth retrying
        └── RateLimited       the tool refused the call for now

``ConfigError`` and ``DecodeError`` are also ``ValueError``: pydantic turns a ``ValueError``
raised in a validator into its own validation error, and both are raised there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runvisor.protocols.reasons import RECOVERY_HINTS, RunStatus, StopReason

if TYPE_CHECKING:  # the wire models raise these errors: importing them here would be a cycle
    from runvisor.protocols.messages import Command, Evidence


class RunvisorError(Exception):
    """Base of every error runvisor raises."""


class ConfigError(RunvisorError, ValueError):
    """Input runvisor refuses (a run id that is not one subject token, an unknown policy field)."""


class DecodeError(RunvisorError, ValueError):
    """Bytes that are not a valid message; the message names the problem for a human."""


class ConnectError(RunvisorError):
    """The server could not be reached, or refused the login; the message says where and why."""


class ConnectStoppedError(ConnectError):
    """Told to stop (``stop`` was set) before a connection was made."""


class EndpointError(ConnectError):
    """No server could be found, or its credentials are missing; the message says what to do."""


class PermissionDenied(RunvisorError):  # noqa: N818 - named for what the server said, like RunKilled
    """The server refused this role a publish or subscription; the message names the user and subject.

    Raised at the call that was refused (a request, a JetStream or KV call, a subscription), instead
    of the timeout or the silence nats-py alone would give.
    """


class ServerError(RunvisorError):
    """The embedded server could not be started, or stopped; the message says why and what to check."""


class NotProvisionedError(ServerError):
    """A stream or bucket runvisor needs is missing: the server was never provisioned."""


class RunError(RunvisorError):
    """Base of every error a run raises into the agent's code."""


class RunKilled(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """An operator killed the run; it can never continue."""

    def __init__(self, run_id: str, command: Command) -> None:
        self.run_id = run_id
        self.command = command
        super().__init__(f"run {run_id} was killed ({command.describe()}); it cannot be resumed")


class RunStopped(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """A supervisor (or operator) stopped the run, with the reason and the evidence for it."""

    def __init__(self, reason: StopReason, evidence: Evidence | None = None, *, run_id: str = "") -> None:
        self.reason = reason
        self.evidence = evidence
        self.run_id = run_id
        why = f": {evidence.summary}" if evidence else ""
        super().__init__(f"run {run_id} was stopped: {reason.value}{why} (next: {RECOVERY_HINTS[reason]})")


class RunNotResumable(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """``Run.resume`` of a run that ended for good (killed, stopped or completed)."""

    def __init__(self, run_id: str, status: RunStatus, reason: StopReason | None) -> None:
        self.run_id = run_id
        self.status = status
        self.reason = reason
        because = f" ({reason.value})" if reason else ""
        super().__init__(f"run {run_id} cannot be resumed: it is {status.value}{because}")


class RunNotFound(RunError):  # noqa: N818 - the public names agents catch, as agreed
    """``Run.resume`` of a run that has no checkpoint."""

    def __init__(self, run_id: str) -> None:
        from runvisor.protocols.subjects import CHECKPOINTS_BUCKET  # noqa: PLC0415 - see TYPE_CHECKING above

        self.run_id = run_id
        super().__init__(f"run {run_id} has no checkpoint in KV {CHECKPOINTS_BUCKET}: nothing to resume")


class TransientError(RunvisorError):
    """Raised by a tool: a failure likely to pass on its own (a flaky backend, a 503).

    Its name is in ``ToolPolicy.retryable_error_types`` by default, and the planner matches
    base-class names too, so a tool's own ``class Flaky(TransientError)`` is retried.
    """


class RateLimited(TransientError):  # noqa: N818 - the name is the error type the policy matches
    """The tool refused the call before running it; ``retry_after_s`` is the server's hint.

    Args:
        message: What the tool said.
        retry_after_s: Wait at least this long before the next attempt, when known.
    """

    def __init__(self, message: str = "rate limited", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


__all__ = [
    "ConfigError",
    "ConnectError",
    "ConnectStoppedError",
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
    "RunvisorError",
    "ServerError",
    "TransientError",
]
