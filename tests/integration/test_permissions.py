"""The permission matrix (README "Security"): for each role, what it may and may not do, for real.

Each row is one operation by one role against the embedded server's configuration
(``runvisor/nats.conf`` with ``runvisor/roles.conf``), and what comes of it: done, or refused by
the server with the ``PermissionDenied`` our client raises at the call (never a timeout, never
silence). The second tenant's rows are in ``test_tenants.py``. Run the matrix with

    .venv/bin/python -m pytest tests/integration/test_permissions.py tests/integration/test_tenants.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import APIError, KeyNotFoundError

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Role
from runvisor.actors.operator import list_states, run_steps
from runvisor.actors.server import EmbeddedServer
from runvisor.actors.streams._bucket import latest_values
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.errors import PermissionDenied
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import RunState, StepEvent
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

Operation = Callable[[Client, str], Awaitable[object]]


@dataclass(frozen=True)
class Row:
    role: Role
    what: str
    operation: Operation
    #: None: allowed; else the subject the server refuses (publish) or the subscription it refuses.
    refused: str | None = None

    def __str__(self) -> str:
        return f"{self.role}: {self.what}"


def step(run_id: str, seq: int = 1) -> bytes:
    return codec.encode(StepEvent(run_id=run_id, seq=seq, ts=time.time(), kind="llm", tokens_in=1))


async def publish_step(nc: Client, run_id: str) -> object:
    return await nc.jetstream().publish(subjects.step(run_id), step(run_id), timeout=4)


async def command(nc: Client, run_id: str) -> object:
    return await nc.jetstream().publish(subjects.ctl(run_id), b"pause", timeout=4)


def kv_put(bucket: str) -> Operation:
    async def put(nc: Client, run_id: str) -> object:
        return await (await nc.jetstream().key_value(bucket)).put(run_id, b"{}")

    return put


def kv_get(bucket: str) -> Operation:
    async def get(nc: Client, run_id: str) -> object:
        kv = await nc.jetstream().key_value(bucket)
        try:
            return await kv.get(run_id)
        except KeyNotFoundError:
            return None  # read, and nothing there: allowed

    return get


def subscribe(subject: str) -> Operation:
    async def sub(nc: Client, run_id: str) -> object:
        return await nc.subscribe(subject.replace("RUN", run_id))

    return sub


def purge(stream: str) -> Operation:
    async def do(nc: Client, run_id: str) -> object:
        return await nc.jetstream().purge_stream(stream)

    return do


def delete_stream(stream: str) -> Operation:
    async def do(nc: Client, run_id: str) -> object:
        return await nc.jetstream().delete_stream(stream)

    return do


async def create_stream(nc: Client, run_id: str) -> object:
    return await nc.jetstream().add_stream(StreamConfig(name=f"X_{run_id[-8:]}", subjects=[f"x.{run_id}"]))


async def update_steps_stream(nc: Client, run_id: str) -> object:
    config = (await nc.jetstream().stream_info(subjects.STEPS_STREAM)).config
    return await nc.jetstream().update_stream(config)


async def delete_consumer(nc: Client, run_id: str) -> object:
    return await nc.jetstream().delete_consumer(subjects.STEPS_STREAM, "anyone")


async def read_steps(nc: Client, run_id: str) -> object:
    return [s async for s in run_steps(nc, run_id)]


async def read_runs(nc: Client, run_id: str) -> object:
    return await list_states(nc)


async def read_family(nc: Client, run_id: str) -> object:
    return await latest_values(nc.jetstream(), subjects.FAMILY_BUCKET, subjects.family_filter(0))


async def call_tool(nc: Client, run_id: str) -> object:
    return await nc.request(subjects.tool("t-perm"), b"x", timeout=4)


AGENT: Role = "agent"
TOOL: Role = "tool"
SUPERVISOR: Role = "supervisor"
OPERATOR: Role = "operator"
MATRIX = [
    # Agents: their steps, tools, checkpoints and commands; nothing of the supervisors' or the store's.
    Row(AGENT, "publish a step", publish_step),
    Row(AGENT, "write its checkpoint", kv_put(subjects.CHECKPOINTS_BUCKET)),
    Row(AGENT, "read its checkpoint", kv_get(subjects.CHECKPOINTS_BUCKET)),
    Row(AGENT, "read run states", kv_get(subjects.RUNS_BUCKET)),
    Row(AGENT, "subscribe to its commands", subscribe("rv.ctl.RUN")),
    Row(AGENT, "command a run", command, "rv.ctl.RUN"),
    Row(AGENT, "write a run state", kv_put(subjects.RUNS_BUCKET), "$KV.rv_runs.RUN"),
    Row(AGENT, "write a sub-agent's spending", kv_put(subjects.FAMILY_BUCKET), "$JS.API.STREAM.INFO.KV_rv_family"),
    Row(AGENT, "read others' replies (_INBOX)", subscribe("_INBOX.>"), "_INBOX.>"),
    Row(AGENT, "read operators' replies", subscribe("_INBOX_operator.>"), "_INBOX_operator.>"),
    Row(AGENT, "read supervisors' consumers", subscribe("_INBOX_supervisor.>"), "_INBOX_supervisor.>"),
    Row(AGENT, "read every step live", subscribe("rv.step.>"), "rv.step.>"),
    Row(AGENT, "purge checkpoints", purge("KV_rv_checkpoints"), "$JS.API.STREAM.PURGE.KV_rv_checkpoints"),
    Row(AGENT, "delete RV_STEPS", delete_stream("RV_STEPS"), "$JS.API.STREAM.DELETE.RV_STEPS"),
    Row(AGENT, "create a stream", create_stream, "$JS.API.STREAM.CREATE.X_"),
    # Known limits (README "Security"): agents of one tenant share one user, so nothing tells runs apart.
    Row(AGENT, "write another run's checkpoint (limit)", kv_put(subjects.CHECKPOINTS_BUCKET)),
    Row(AGENT, "publish another run's steps (limit)", publish_step),
    Row(AGENT, "read other agents' replies (limit)", subscribe("_INBOX_agent.>")),
    # Tool executors: steps (retry events), breakers and results; answer calls, make none.
    Row(TOOL, "publish a step", publish_step),
    Row(TOOL, "write a breaker", kv_put(subjects.BREAKERS_BUCKET)),
    Row(TOOL, "publish any run's steps (limit)", publish_step),
    Row(TOOL, "command a run", command, "rv.ctl.RUN"),
    Row(TOOL, "write a checkpoint", kv_put(subjects.CHECKPOINTS_BUCKET), "$JS.API.STREAM.INFO.KV_rv_checkpoints"),
    Row(TOOL, "write a run state", kv_put(subjects.RUNS_BUCKET), "$JS.API.STREAM.INFO.KV_rv_runs"),
    Row(TOOL, "call a tool", call_tool, "rv.tool.t-perm"),
    Row(TOOL, "subscribe to commands", subscribe("rv.ctl.*"), "rv.ctl.*"),
    Row(TOOL, "read agents' replies", subscribe("_INBOX_agent.>"), "_INBOX_agent.>"),
    # Supervisors: run states, leases, commands, step consumers; no checkpoints, no purges.
    Row(SUPERVISOR, "write a run state", kv_put(subjects.RUNS_BUCKET)),
    Row(SUPERVISOR, "write a lease", kv_put(subjects.LEASES_BUCKET)),
    Row(SUPERVISOR, "write a sub-agent's spending", kv_put(subjects.FAMILY_BUCKET)),
    Row(SUPERVISOR, "read sub-agents' spending (consumer)", read_family),
    Row(SUPERVISOR, "command a run", command),
    Row(SUPERVISOR, "read steps (consumer)", read_steps),
    Row(SUPERVISOR, "read run states (consumer)", read_runs),
    Row(SUPERVISOR, "publish a step", publish_step, "rv.step.RUN"),
    Row(SUPERVISOR, "read a checkpoint", kv_get(subjects.CHECKPOINTS_BUCKET), "$JS.API.STREAM.INFO.KV_rv_checkpoints"),
    Row(SUPERVISOR, "purge checkpoints", purge("KV_rv_checkpoints"), "$JS.API.STREAM.PURGE.KV_rv_checkpoints"),
    Row(SUPERVISOR, "purge run states", purge("KV_rv_runs"), "$JS.API.STREAM.PURGE.KV_rv_runs"),
    Row(SUPERVISOR, "delete RV_STEPS", delete_stream("RV_STEPS"), "$JS.API.STREAM.DELETE.RV_STEPS"),
    Row(SUPERVISOR, "read agents' replies", subscribe("_INBOX_agent.>"), "_INBOX_agent.>"),
    # Operators: command, read everything, reset breakers; change nothing in the store.
    Row(OPERATOR, "command a run", command),
    Row(OPERATOR, "read run states", read_runs),
    Row(OPERATOR, "read a run's steps", read_steps),
    Row(OPERATOR, "read a checkpoint", kv_get(subjects.CHECKPOINTS_BUCKET)),
    Row(OPERATOR, "reset a breaker", kv_put(subjects.BREAKERS_BUCKET)),
    Row(OPERATOR, "watch everything", subscribe("rv.>")),
    Row(OPERATOR, "publish a step", publish_step, "rv.step.RUN"),
    Row(OPERATOR, "write a run state", kv_put(subjects.RUNS_BUCKET), "$KV.rv_runs.RUN"),
    Row(OPERATOR, "read sub-agents' spending", read_family),
    Row(OPERATOR, "write a sub-agent's spending", kv_put(subjects.FAMILY_BUCKET), "$KV.rv_family.RUN"),
    Row(OPERATOR, "write a checkpoint", kv_put(subjects.CHECKPOINTS_BUCKET), "$KV.rv_checkpoints.RUN"),
    Row(OPERATOR, "purge run states", purge("KV_rv_runs"), "$JS.API.STREAM.PURGE.KV_rv_runs"),
    Row(OPERATOR, "purge RV_STEPS", purge("RV_STEPS"), "$JS.API.STREAM.PURGE.RV_STEPS"),
    Row(OPERATOR, "delete RV_CONTROL", delete_stream("RV_CONTROL"), "$JS.API.STREAM.DELETE.RV_CONTROL"),
    Row(OPERATOR, "change RV_STEPS", update_steps_stream, "$JS.API.STREAM.UPDATE.RV_STEPS"),
    Row(OPERATOR, "delete a consumer", delete_consumer, "$JS.API.CONSUMER.DELETE.RV_STEPS.anyone"),
    Row(OPERATOR, "create a stream", create_stream, "$JS.API.STREAM.CREATE.X_"),
    Row(OPERATOR, "read agents' replies", subscribe("_INBOX_agent.>"), "_INBOX_agent.>"),
]


@pytest.mark.parametrize("row", MATRIX, ids=str)
async def test_permission_matrix(server: EmbeddedServer, run_id: str, row: Row) -> None:
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await connect(server.endpoint(row.role), f"t-{row.role}", error_cb=record, allow_reconnect=False)
    try:
        started = time.monotonic()
        if row.refused is None:
            await row.operation(nc, run_id)
            assert not errors, f"{row}: the server refused something: {errors}"
            return
        refused = row.refused.replace("RUN", run_id)
        verb = "subscribe to" if row.operation.__qualname__.startswith("subscribe") else "publish to"
        with pytest.raises(PermissionDenied, match=rf"user '{row.role}' may not {verb} '{_escaped(refused)}"):
            await row.operation(nc, run_id)
        assert time.monotonic() - started < 3, "refused by the server's answer, not after a timeout"
        assert any("permissions violation" in e for e in errors), "the refusal still reaches error_cb"
    finally:
        await nc.close()


def _escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in ".*$>+?()[]{}|^\\" else c for c in text)


# -- beyond subjects: what permissions alone do not stop ------------------------------------


async def test_no_writer_of_a_bucket_can_empty_it_with_a_rollup(server: EmbeddedServer, run_id: str) -> None:
    # An agent may write checkpoints; with roll-ups allowed (nats-py's KV default) one message with
    # `Nats-Rollup: all` would have purged every run's checkpoint. Provisioning turns them off.
    agent = await connect(server.endpoint("agent"), "t-rollup")
    try:
        kv = await agent.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)
        await kv.put(f"{run_id}-other", b"kept")
        with pytest.raises(APIError, match="rollup not permitted"):
            await agent.jetstream().publish(
                subjects.kv_subject(subjects.CHECKPOINTS_BUCKET, run_id), b"x", headers={"Nats-Rollup": "all"}
            )
        assert (await kv.get(f"{run_id}-other")).value == b"kept"
    finally:
        await agent.close()


async def test_a_responder_never_writes_to_a_reply_subject_named_by_the_caller(
    server: EmbeddedServer, run_id: str
) -> None:
    # Once, tool executors and supervisors had `allow_responses`: a caller naming
    # `$KV.rv_checkpoints.<run>` as its reply had the executor write over that checkpoint, though
    # the caller may not. Now executors may publish only to inboxes.
    admin = await connect(server.endpoint("admin"), "t-victim")
    tool = await connect(server.endpoint("tool"), "t-deputy")
    agent = await connect(server.endpoint("agent"), "t-caller")
    try:
        kv = await admin.jetstream().key_value(subjects.CHECKPOINTS_BUCKET)
        await kv.put(run_id, b"victim's checkpoint")
        answered = asyncio.Event()

        async def answer(msg: Msg) -> None:
            await msg.respond(b"overwritten")
            await tool.flush()
            answered.set()

        await tool.subscribe(subjects.tool("t-deputy"), queue=subjects.tool_queue("t-deputy"), cb=answer)
        await agent.publish(
            subjects.tool("t-deputy"), b"call", reply=subjects.kv_subject(subjects.CHECKPOINTS_BUCKET, run_id)
        )
        await asyncio.wait_for(answered.wait(), 5)
        assert (await kv.get(run_id)).value == b"victim's checkpoint"
    finally:
        for nc in (agent, tool, admin):
            await nc.close()


async def test_a_known_limit_any_client_can_have_jetstream_answer_onto_a_subject(
    server: EmbeddedServer, run_id: str
) -> None:
    # Measured, not fixed (README "Security"): JetStream sends its answers (a publish's ack, an API
    # response) to whatever reply subject a request names, whatever the requester may publish to.
    # An agent can thus overwrite a run's state with JSON it does not choose; it cannot forge one,
    # and readers skip what is not a state.
    agent = await connect(server.endpoint("agent"), "t-limit")
    operator = await connect(server.endpoint("operator"), "t-reader")
    try:
        await agent.publish(
            subjects.step(run_id), step(run_id), reply=subjects.kv_subject(subjects.RUNS_BUCKET, run_id)
        )
        kv = await operator.jetstream().key_value(subjects.RUNS_BUCKET)

        async def written() -> bytes | None:
            try:
                return (await kv.get(run_id)).value
            except KeyNotFoundError:
                return None

        value = await eventually(written, what="JetStream's ack written into rv_runs")
        assert value.startswith(b'{"stream":"RV_STEPS"'), value
        assert run_id not in {state.run_id for state in await list_states(operator)}
    finally:
        await agent.close()
        await operator.close()


async def test_a_supervisor_answers_status_only_on_an_inbox(server: EmbeddedServer, run_id: str) -> None:
    # A supervisor may write rv_runs: an agent asking `rv.status.<its run>` with `$KV.rv_runs.<victim>`
    # as the reply once had the supervisor write its run's state over the victim's.
    victim = f"{run_id}-victim"
    stop = asyncio.Event()
    worker = SupervisorWorker(server.endpoint("supervisor"), worker_id="t-deputy", flush_s=0.05, tick_s=0.1)
    serving = asyncio.create_task(worker.run(stop))
    agent = await connect(server.endpoint("agent"), "t-asker")
    try:
        await eventually(lambda: worker._leases is not None and worker.owns(run_id), what="the worker's leases")
        await agent.jetstream().publish(subjects.step(run_id), step(run_id))
        await eventually(lambda: run_id in worker.engine.windows, what="the run judged")
        await agent.publish(subjects.status(run_id), b"", reply=subjects.kv_subject(subjects.RUNS_BUCKET, victim))
        # Answers to one asker come in order: once the second is answered, the first was refused.
        answer = await agent.request(subjects.status(run_id), b"", timeout=4)
        assert codec.decode_stored(RunState, answer.data).run_id == run_id
        with pytest.raises(KeyNotFoundError):
            await (await agent.jetstream().key_value(subjects.RUNS_BUCKET)).get(victim)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
        await agent.close()
