"""A three-node NATS cluster on loopback (examples/cluster): streams and buckets R3, one node
SIGKILLed under an agent's traffic; nothing is lost, supervision goes on, the node rejoins."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError
from test_supervisor import find_file_loop, watch

from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Credentials
from runvisor.actors.operator import fetch_state
from runvisor.actors.server import CONF_PATH, find_binary, free_port, provision
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent
from runvisor.protocols.reasons import RunStatus, StopReason
from runvisor.testing import eventually

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster"
NODES = 3
#: The ports in examples/cluster/node<N>.conf: client 4222+i, monitoring 8222+i, cluster 6222+i.
EXAMPLE_PORTS = {"client": 4222, "http": 8222, "cluster": 6222}
#: Every stream and bucket that provision() creates.
STREAMS = ("RV_STEPS", "RV_CONTROL", *(f"KV_{kv.bucket}" for kv in subjects.bucket_configs(30.0)))


class Node:
    """One nats-server of the cluster: the example's config with this test's ports and store."""

    def __init__(self, index: int, home: Path, ports: dict[str, list[int]]) -> None:
        self.index = index
        self.home = home
        self.port = ports["client"][index]
        self.monitor_port = ports["http"][index]
        self.proc: asyncio.subprocess.Process | None = None
        mapping = {EXAMPLE_PORTS[kind] + i: ports[kind][i] for kind in EXAMPLE_PORTS for i in range(NODES)}
        text = (EXAMPLE / f"node{index + 1}.conf").read_text()
        text = re.sub(r"127\.0\.0\.1:(\d+)\b", lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}", text)
        text = re.sub(r'store_dir: "[^"]*"', f'store_dir: "{home / "jetstream"}"', text)
        # nats-server resolves an include relative to the including file only: roles.conf goes beside it.
        text = text.replace('include "../../runvisor/roles.conf"', 'include "roles.conf"')
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONF_PATH.parent / "roles.conf", home / "roles.conf")
        self.conf = home / "node.conf"
        self.conf.write_text(text)
        self.name = re.findall(r"^server_name: (\S+)", text, re.MULTILINE)[0]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, env: dict[str, str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(find_binary()), "-c", str(self.conf), "-l", str(self.home / "nats-server.log"),
            env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def log_tail(self, lines: int = 3) -> str:
        try:
            return " | ".join((self.home / "nats-server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def monitor(self, path: str) -> dict[str, Any] | None:
        """A monitoring endpoint's JSON; None when the node does not answer (or not 200)."""

        def get() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except (OSError, ValueError):
                return None

        return await asyncio.to_thread(get)

    async def has_meta_leader(self) -> bool:
        """Healthy, with a meta leader; on the leader, both other peers current (placing R3 needs them)."""
        health, jsz = await self.monitor("/healthz"), await self.monitor("/jsz")
        meta = (jsz or {}).get("meta_cluster") or {}
        if health is None or not meta.get("leader") or meta.get("cluster_size") != NODES:
            return False
        peers = meta.get("replicas") or []
        return meta["leader"] != self.name or (
            len(peers) == NODES - 1 and all(p.get("current") and not p.get("offline") for p in peers)
        )


@contextlib.asynccontextmanager
async def cluster(tmp: Path, credentials: Credentials) -> AsyncIterator[list[Node]]:
    """Three nodes on free loopback ports, once they agree on a JetStream meta leader; all stopped on exit."""
    free: list[int] = []
    while len(free) < NODES * len(EXAMPLE_PORTS):  # nine distinct ports
        if (port := free_port()) not in free:
            free.append(port)
    ports = {kind: free[k * NODES : (k + 1) * NODES] for k, kind in enumerate(EXAMPLE_PORTS)}
    nodes = [Node(i, tmp / f"n{i + 1}", ports) for i in range(NODES)]
    try:
        for node in nodes:
            await node.start(credentials.environment())

        async def formed() -> bool:
            for node in nodes:
                if node.proc is not None and node.proc.returncode is not None:
                    raise AssertionError(f"{node.name} exited with {node.proc.returncode}: {node.log_tail()}")
            return all([await node.has_meta_leader() for node in nodes])

        try:
            await eventually(formed, timeout=30, interval=0.2, what="a JetStream meta leader for 3 nodes")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; " + "; ".join(f"{n.name}: {n.log_tail()}" for n in nodes)) from None
        yield nodes
    finally:
        for node in nodes:
            await node.kill(signal.SIGTERM)


async def publish_resending(nc: Client, events: Iterator[StepEvent], give_up_s: float = 30.0) -> list[StepEvent]:
    """Publish steps as the agent SDK does: each sent again until JetStream acknowledges it, deduplicated by id."""
    js = nc.jetstream()
    sent = []
    for event in events:
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                await js.publish(
                    subjects.step(event.run_id),
                    codec.encode(event),
                    timeout=1.0,
                    headers={"Nats-Msg-Id": f"{event.run_id}:{event.seq}"},
                )
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        sent.append(event)
    return sent


async def _stopped(nc: Client, run_id: str) -> bool:
    state = await fetch_state(nc, run_id)
    return state is not None and state.status is RunStatus.STOPPED and state.stop_reason is StopReason.LOOP_DETECTED


async def replicas_current(nc: Client, stream: str) -> bool:
    """Whether ``stream`` has a leader and two replicas, both online and current."""
    try:
        info = await nc.jetstream().stream_info(stream)
    except (nats.errors.Error, TimeoutError):
        return False
    peers = info.cluster.replicas if info.cluster is not None else None
    return (
        info.cluster is not None
        and bool(info.cluster.leader)
        and peers is not None
        and len(peers) == NODES - 1
        and all(p.current and not p.offline for p in peers)
    )


async def test_a_node_of_three_killed_under_traffic_loses_nothing_and_rejoins(tmp_path: Path, run_id: str) -> None:
    credentials = Credentials.load_or_create(tmp_path)
    async with cluster(tmp_path, credentials) as nodes:
        entry = nodes[0]  # every client of this test connects here
        admin = await connect(credentials.endpoint(entry.url, "admin"), "t-admin")
        operator = await connect(credentials.endpoint(entry.url, "operator"), "t-operator")
        agent = await connect(credentials.endpoint(entry.url, "agent"), "t-agent")
        stop = asyncio.Event()
        worker = SupervisorWorker(
            credentials.endpoint(entry.url, "supervisor"), worker_id="cluster", flush_s=0.05, tick_s=0.1
        )
        task: asyncio.Task[None] | None = None
        try:
            report = await provision(admin, replicas=3)
            assert set(report.values()) == {"created"}
            for stream in STREAMS:
                info = await admin.jetstream().stream_info(stream)
                assert info.config.num_replicas == 3, stream
            # Run again, with or without replicas, provisioning changes nothing.
            assert set((await provision(admin, replicas=3)).values()) == {"unchanged"}
            assert set((await provision(admin)).values()) == {"unchanged"}

            task = asyncio.create_task(worker.run(stop))
            await eventually(
                lambda: worker._leases is not None and len(worker.leases.owned) == worker.partitions,
                timeout=20,
                what="the worker's leases",
            )
            seen = await watch(operator, run_id)
            before = await publish_resending(agent, find_file_loop(run_id, 0, repeats=2))  # below the threshold
            await eventually(lambda: worker.processed >= len(before), what="the first steps processed")
            assert not seen.stops()

            # Kill the steps stream's leader (a failover), or another node when that is the clients' own.
            leader = (await admin.jetstream().stream_info("RV_STEPS")).cluster
            victim = next((n for n in nodes[1:] if leader is not None and n.name == leader.leader), nodes[NODES - 1])
            await victim.kill(signal.SIGKILL)

            after = await publish_resending(agent, find_file_loop(run_id, len(before), repeats=4))
            sent = before + after
            stops = await eventually(seen.stops, timeout=30, what="a stop after the node was killed")
            assert stops[0].reason is StopReason.LOOP_DETECTED
            await eventually(lambda: worker.processed >= len(sent), timeout=30, what="every step processed")
            assert all(c.reason is StopReason.LOOP_DETECTED for c in seen.stops())
            await eventually(lambda: _stopped(operator, run_id), timeout=30, what="STOPPED (LOOP_DETECTED) in rv_runs")
            steps = await admin.jetstream().stream_info("RV_STEPS")
            assert steps.state.messages == len(sent), "every step stored once"
            assert steps.cluster is not None
            assert steps.cluster.leader not in (None, victim.name), "a new leader took over"

            # The killed node, restarted on its store, catches up: three current replicas again.
            await victim.start(credentials.environment())

            async def rejoined() -> bool:
                return all([await replicas_current(admin, s) for s in STREAMS])

            await eventually(rejoined, timeout=60, interval=0.5, what="the killed node current again")
            assert (await admin.jetstream().stream_info("RV_STEPS")).state.messages == len(sent)
            # One decision, stored once. A watcher may see it twice: a stop whose acknowledgement was lost
            # in the failover is sent again (the same command, deduplicated in RV_CONTROL); one not stored
            # before the lease expired is made again from the replay, at the same step for the same reason
            # (timed when its step was stored, not when it was first judged: CI saw both).
            assert len({(c.reason, c.at_seq) for c in seen.stops()}) == 1, "never two decisions to stop one run"
            control = await admin.jetstream().stream_info("RV_CONTROL", subjects_filter=subjects.ctl(run_id))
            assert control.state.subjects == {subjects.ctl(run_id): 1}, "the stop stored once"
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 15)
            for nc in (agent, operator, admin):
                await nc.close()
