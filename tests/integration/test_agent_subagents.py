"""Sub-agents: a run started by another names its parent in its ``start`` event, and keeps it on resume."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from test_agent import checkpoint

from runvisor import Run, RunKilled, RunNotResumable, RunStatus, StopReason
from runvisor.actors.operator import send_command
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, StepEvent

pytestmark = pytest.mark.integration


async def start_events(admin: Client, run_id: str) -> list[StepEvent]:
    subject = subjects.stored_step(subjects.partition_of(run_id), run_id)
    sub = await admin.jetstream().subscribe(subject, stream=subjects.STEPS_STREAM, ordered_consumer=True)
    events: list[StepEvent] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            events.append(codec.decode(StepEvent, msg.data))
            if msg.metadata.num_pending == 0:
                return [e for e in events if e.kind == "start"]
    finally:
        await sub.unsubscribe()


async def test_a_sub_agent_names_its_parent_in_its_start_event_and_keeps_it_on_resume(
    agent_nc: Client, admin: Client, run_id: str
) -> None:
    child_id = f"{run_id}-child"

    async def sub_agent(parent: Run) -> None:
        async with Run.start(goal="book flights", run_id=child_id, nc=agent_nc, parent=parent) as child:
            assert child.parent_run_id == run_id
            raise ValueError("no flights")

    async with Run.start(goal="plan the trip", run_id=run_id, nc=agent_nc) as parent:
        # Given a sub-agent whose own code fails
        with pytest.raises(ValueError, match="no flights"):
            await sub_agent(parent)
        # When it is resumed, by its id alone
        async with Run.resume(child_id, nc=agent_nc) as again:
            assert again.parent_run_id == run_id

    # Then both of its start events name the parent, and the parent's names none
    assert [e.parent_run_id for e in await start_events(admin, child_id)] == [run_id, run_id]
    assert [e.parent_run_id for e in await start_events(admin, run_id)] == [None]


def test_a_parent_given_by_id_must_be_a_run_id() -> None:
    with pytest.raises(ValueError, match="run_id"):
        Run.start(goal="g", parent="not a run id")


async def test_a_sub_agent_ended_by_its_parent_being_killed_is_killed_not_crashed(
    agent_nc: Client, operator: Client, admin: Client, run_id: str
) -> None:
    child_id = f"{run_id}-child"

    # Given a sub-agent whose code calls its parent (a heartbeat) inside its own block,
    async def family() -> None:
        async with (
            Run.start(goal="plan the trip", run_id=run_id, nc=agent_nc) as parent,
            Run.start(goal="book flights", run_id=child_id, nc=agent_nc, parent=parent) as child,
        ):
            await child.llm(tokens_in=10, tokens_out=5)
            # when an operator kills the parent,
            await send_command(operator, run_id, Command(cmd="kill", note="enough"))
            for _ in range(200):
                await parent.heartbeat()  # raises the parent's RunKilled, through the child's block
                await asyncio.sleep(0.05)

    with pytest.raises(RunKilled):
        await family()
    # then the sub-agent ended killed with its parent, not crashed (which could be resumed).
    ended = await checkpoint(admin, child_id)
    assert ended is not None
    assert (ended.status, ended.stop_reason) == (RunStatus.STOPPED, StopReason.USER_KILLED)
    with pytest.raises(RunNotResumable):
        async with Run.resume(child_id, nc=agent_nc):
            pass
