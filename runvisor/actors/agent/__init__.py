"""The agent side: the ``Run`` handle an agent developer adds to an agent (DESIGN §6).

``_run`` is the handle; the parts it is built from are private modules: ``_steps`` (step
events out), ``_actions`` (tool calls, each checkpointed as an intent), ``_calls`` (tool
requests to executors), ``_local`` (tool calls in the agent's own process) and ``_supervised``
(their decorator), ``_commands`` (the desired state folded from commands), ``_control``
(obeying them at step boundaries), ``_checkpointing`` and ``_store`` (``rv_checkpoints``),
``_pricing`` (costs from tokens), ``_limits`` (what fits on the wire).
"""

from runvisor.actors.agent._local import ToolCall
from runvisor.actors.agent._run import DEFAULT_HEARTBEAT_S, Run
from runvisor.actors.agent._supervised import supervised_tool
from runvisor.errors import ConnectError, RunError, RunKilled, RunNotFound, RunNotResumable, RunStopped

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "ConnectError",
    "Run",
    "RunError",
    "RunKilled",
    "RunNotFound",
    "RunNotResumable",
    "RunStopped",
    "ToolCall",
    "supervised_tool",
]
