"""What the three adapter benches share: a provisioned embedded server, the summary, the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client

from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer, provision


class Timings(Protocol):
    """Milliseconds per model call, per tool call and per agent run, as one bench's agents measured them."""

    model_ms: list[float]
    tool_ms: list[float]
    run_ms: list[float]


@asynccontextmanager
async def agent_connection(name: str) -> AsyncIterator[Client]:
    """An agent's connection to a provisioned embedded nats-server in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"runvisor-bench-{name}-") as tmp:
        async with EmbeddedServer(Path(tmp)) as server:
            admin = await connect(server.endpoint("admin"), f"bench-{name}")
            await provision(admin)
            agent_nc = await connect(server.endpoint("agent"), f"bench-{name}-agent")
            try:
                yield agent_nc
            finally:
                await agent_nc.close()
                await admin.close()


def overheads(calls: int, plain: Timings, supervised: Timings) -> dict[str, float]:
    """p50 of each measure without and with the adapter, and what the adapter adds."""
    result = {"calls": float(calls)}
    for name, without, with_adapter in (
        ("model_call", plain.model_ms, supervised.model_ms),
        ("tool_call", plain.tool_ms, supervised.tool_ms),
        ("agent_run", plain.run_ms, supervised.run_ms),
    ):
        result[f"{name}_p50_ms"] = statistics.median(without)
        result[f"{name}_supervised_p50_ms"] = statistics.median(with_adapter)
        result[f"{name}_overhead_ms"] = result[f"{name}_supervised_p50_ms"] - result[f"{name}_p50_ms"]
    return {key: round(value, 4) for key, value in result.items()}


def main(measure: Callable[[int], Coroutine[Any, Any, dict[str, float]]], doc: str | None) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument(
        "--calls", type=int, default=200, help="agent runs each way (two model calls, one tool call each)"
    )
    args = parser.parse_args()
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    print(json.dumps(asyncio.run(measure(args.calls)), indent=2))
