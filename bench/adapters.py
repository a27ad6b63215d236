"""What each framework adapter adds per model call and per tool call, side by side in one run.

    python -m bench.adapters [--calls 200] [--json]

Each framework's own bench (``bench.overhead_pydantic_ai``, ``bench.overhead_openai_agents``,
``bench.overhead_langgraph``) runs the same offline agent with and without its adapter, the two
interleaved so that a busy machine slows both alike, against an embedded nats-server; this runs
the three one after the other and prints one table (p50 milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from bench import overhead_langgraph, overhead_openai_agents, overhead_pydantic_ai

Measure = Callable[[int], Awaitable[dict[str, float]]]
ADAPTERS: tuple[tuple[str, Measure], ...] = (
    ("PydanticAI", overhead_pydantic_ai.measure),
    ("OpenAI Agents SDK", overhead_openai_agents.measure),
    ("LangGraph", overhead_langgraph.measure),
)


async def measure_all(calls: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, measure in ADAPTERS:
        print(f"{name}: {calls} agent runs each way...", file=sys.stderr, flush=True)
        results[name] = await measure(calls)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: per call without the adapter, with it, and what it adds."""
    lines = [
        "| framework | model call | + adapter | added | tool call | + adapter | added | agent run added |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        keys = ("model_call_p50_ms", "model_call_supervised_p50_ms", "model_call_overhead_ms", "tool_call_p50_ms",
                "tool_call_supervised_p50_ms", "tool_call_overhead_ms", "agent_run_overhead_ms")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(f"{r[key]:.2f}" for key in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=200, help="agent runs each way, per framework (200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    results = asyncio.run(measure_all(args.calls))
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
