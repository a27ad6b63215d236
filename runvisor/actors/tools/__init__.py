"""Tool executors: registered tools served over ``rv.tool.<name>`` with retries, budgets and breakers (DESIGN §7).

``_registry`` holds the tools (pure), ``_attempt`` runs one attempt and turns retries into
step events, ``_kv`` keeps the breakers (``rv_breakers``) and results (``rv_results``) shared
by replicas, and ``_executor`` wires them to NATS.
"""

from runvisor.actors.retry.policy import ToolPolicy
from runvisor.actors.tools._executor import ToolExecutor
from runvisor.actors.tools._registry import Tool, ToolRegistry, kv_key, observation_text

__all__ = ["Tool", "ToolExecutor", "ToolPolicy", "ToolRegistry", "kv_key", "observation_text"]
