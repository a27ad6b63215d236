"""Scripted agents that reproduce each failure mode, and the tools they call (DESIGN §1).

Used by ``runvisor demo`` and its tests. Each scenario is an ordinary agent written against the
public SDK (``from runvisor import Run``), the way a user would write one; only its decisions are
scripted. ``demo_tools`` is a registry a ``ToolExecutor`` serves
(``runvisor tools runvisor.actors.sim:demo_tools``).
"""

from runvisor.actors.sim._scenarios import SCENARIOS, OperatorScript, Scenario, scenario
from runvisor.actors.sim._tools import demo_tools

__all__ = ["SCENARIOS", "OperatorScript", "Scenario", "demo_tools", "scenario"]
