"""runvisor: runtime supervision for AI agents over NATS JetStream.

What an agent developer and an operator's script import. Everything else lives in
``runvisor.actors`` (the processes) and ``runvisor.protocols`` (the wire contract), whose
modules are internal unless a name is re-exported here.

    from runvisor import Run, Policy

    async with Run.start(goal="fix the parser", policy=Policy(max_cost_usd=2.0)) as run:
        await run.llm(tokens_in=1200, tokens_out=80, cost_usd=0.004)
"""

from runvisor.actors.agent import Run, supervised_tool
from runvisor.actors.retry.policy import BackoffPolicy, BreakerPolicy, BudgetPolicy, ToolPolicy
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.errors import (
    ConfigError,
    ConnectError,
    DecodeError,
    EndpointError,
    NotProvisionedError,
    PermissionDenied,
    RateLimited,
    RunError,
    RunKilled,
    RunNotFound,
    RunNotResumable,
    RunStopped,
    RunvisorError,
    ServerError,
    TransientError,
)
from runvisor.protocols.messages import Command, RunState, StepEvent, Verdict
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason

__all__ = [
    "BackoffPolicy",
    "BreakerPolicy",
    "BudgetPolicy",
    "Command",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "EndpointError",
    "NotProvisionedError",
    "PermissionDenied",
    "Policy",
    "RateLimited",
    "Run",
    "RunError",
    "RunKilled",
    "RunNotFound",
    "RunNotResumable",
    "RunState",
    "RunStatus",
    "RunStopped",
    "RunvisorError",
    "ServerError",
    "StepEvent",
    "StopReason",
    "ToolExecutor",
    "ToolPolicy",
    "ToolRegistry",
    "TransientError",
    "Verdict",
    "supervised_tool",
]
