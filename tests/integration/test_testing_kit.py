"""runvisor.testing.embedded_server: a real, provisioned server for tests of code built on runvisor."""

from __future__ import annotations

import pytest

from runvisor import Run
from runvisor.actors.connection import connect
from runvisor.protocols import subjects
from runvisor.testing import embedded_server

pytestmark = pytest.mark.integration


async def test_an_agent_runs_against_the_embedded_test_server() -> None:
    async with embedded_server() as server:
        async with Run.start(goal="try the kit", run_id="kit-1", endpoint=server.endpoint("agent")) as run:
            await run.message("hello")
        admin = await connect(server.endpoint("admin"), "t-kit")
        try:
            info = await admin.jetstream().stream_info(subjects.STEPS_STREAM)
        finally:
            await admin.close()
        assert info.state.messages == 3  # start, the message, final
