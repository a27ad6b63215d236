"""The agent side: the ``Run`` handle an agent developer adds to an agent (DESIGN §6).

``_run`` is the handle; the parts it is built from are private modules: ``_steps`` (step
events out), ``_calls`` (tool requests), ``_commands`` (the desired state folded from
commands), ``_control`` (obeying them at step boundaries), ``_checkpointing`` and ``_store``
(``rv_checkpoints``), ``_limits`` (what fits on the wire).
"""

from runvisor.actors.agent._run import DEFAULT_HEARTBEAT_S, Run
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
]
