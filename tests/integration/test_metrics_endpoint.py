"""Prometheus metrics of real workers, scraped over HTTP and parsed with the client library's parser."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from runvisor.actors.metrics import Metrics, MetricsServer
from runvisor.actors.operator import fetch_state
from runvisor.actors.server import EmbeddedServer, free_port
from runvisor.actors.supervisor import worker as worker_module
from runvisor.actors.supervisor.worker import SupervisorWorker
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import RunState, StepEvent
from runvisor.protocols.reasons import RunStatus
from runvisor.testing import eventually

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[str, list[Sample]]:
    """The families at ``url``, as Prometheus reads them (a blocking HTTP GET: run it in a thread)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: dict[str, list[Sample]], sample: str, **labels: str) -> float | None:
    """The value of the sample named ``sample`` with these labels; None when there is none."""
    matching = [s.value for f in found.values() for s in f if s.name == sample and s.labels == labels]
    assert len(matching) <= 1, f"{sample} {labels}: {matching}"
    return matching[0] if matching else None


def search_loop(run_id: str, repeats: int) -> list[StepEvent]:
    """An agent searching again and again for what is not there (each search: a call and its result)."""
    events = [StepEvent(run_id=run_id, seq=1, ts=1e9, kind="start", task="find the parser")]
    for i in range(repeats):
        seq, call = 2 + 2 * i, f"c{i}"
        search = {"tool": "find_file", "call_id": call, "ts": 1e9 + seq}
        events.append(StepEvent(run_id=run_id, seq=seq, kind="tool_call", args={"command": "find_file Json"}, **search))
        events.append(StepEvent(run_id=run_id, seq=seq + 1, kind="tool_result", observation="No matches found",
                                ok=True, tokens_in=500, cost_usd=0.001, **search))  # fmt: skip
    return events


@contextlib.asynccontextmanager
async def worker_with_metrics(server: EmbeddedServer) -> AsyncIterator[tuple[SupervisorWorker, str]]:
    """A worker reporting to a metrics endpoint on a free port, once it holds every partition."""
    stop = asyncio.Event()
    metrics = Metrics()
    worker = SupervisorWorker(server.endpoint("supervisor"), worker_id="metrics", flush_s=0.05, tick_s=0.1,
                              metrics=metrics)  # fmt: skip
    async with MetricsServer(metrics) as endpoint:
        task = asyncio.create_task(worker.run(stop))
        try:
            await eventually(lambda: worker._leases is not None and len(worker.leases.owned) == worker.partitions)
            yield worker, endpoint.url
        finally:
            stop.set()
            await task


@pytest.mark.timeout(60)
async def test_a_scrape_shows_events_decisions_runs_leases_lag_and_what_the_loop_burned(
    fresh_server: EmbeddedServer, fresh_admin: Client, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "LAG_EVERY_S", 0.2)  # measured often, so the test need not wait
    async with worker_with_metrics(fresh_server) as (worker, url):
        # Given a run that loops (the same search finding nothing, again and again) and one undecodable step,
        sent = search_loop(run_id, 5)
        js = fresh_admin.jetstream()
        for event in sent:
            await js.publish(subjects.step(run_id), codec.encode(event))
        await js.publish(subjects.step(run_id), b"\xc1 not msgpack")
        state = await eventually(lambda: _stopped(fresh_admin, run_id), what="the loop stopped")
        await eventually(lambda: worker.processed == len(sent) and worker._rejections.total == 1)
        # when Prometheus scrapes the worker's endpoint,
        found = await eventually(lambda: _with_lag(url), what="a scrape with the lag measured")
    # then it shows the steps judged and refused, each timed,
    w = "metrics"
    assert value(found, "runvisor_events_processed_total", worker=w) == len(sent)
    assert value(found, "runvisor_events_rejected_total", worker=w, kind="step") == 1
    assert value(found, "runvisor_event_processing_seconds_count", worker=w) == len(sent) + 1
    # the loop's warning and stop, by detector and reason, and the stop stored once,
    for severity in ("warn", "stop"):
        labels = {"worker": w, "detector": "exact_repeat", "reason": "LOOP_DETECTED", "severity": severity}
        assert value(found, "runvisor_verdicts_total", **labels) == 1, found["runvisor_verdicts"]
    assert value(found, "runvisor_commands_stored_total", worker=w) == 1
    # the run as stopped, every partition held and followed with nothing left to judge,
    assert value(found, "runvisor_runs", worker=w, status="STOPPED") == 1
    assert value(found, "runvisor_runs", worker=w, status="RUNNING") == 0
    assert value(found, "runvisor_partitions", worker=w) == worker.partitions
    assert value(found, "runvisor_lease_changes_total", worker=w, change="gained") == worker.partitions
    lags = {int(s.labels["partition"]): s.value for s in found["runvisor_consumer_lag"]}
    assert lags == dict.fromkeys(range(worker.partitions), 0)
    # and what the loop had burned when it was stopped (or that its verdict did not say).
    assert state.last_verdict is not None
    spent = state.last_verdict.evidence.spent
    loop = {"worker": w, "reason": "LOOP_DETECTED"}
    if spent is None:
        assert value(found, "runvisor_burned_unknown_total", **loop) == 1
    else:
        assert value(found, "runvisor_burned_tokens_total", **loop) == spent.tokens > 0
        assert value(found, "runvisor_burned_cost_usd_total", **loop) == pytest.approx(spent.cost_usd)
    assert not any(run_id in s.labels.values() for f in found.values() for s in f)


async def _stopped(nc: Client, run_id: str) -> RunState | None:
    state = await fetch_state(nc, run_id, timeout=0.5)
    return state if state is not None and state.status is RunStatus.STOPPED else None


async def _with_lag(url: str) -> dict[str, list[Sample]] | None:
    found = await asyncio.to_thread(scrape, url)
    return found if found.get("runvisor_consumer_lag") else None


@pytest.mark.timeout(60)
async def test_runvisor_up_serves_metrics_on_its_metrics_port(tmp_path: Path) -> None:
    # Given `runvisor up --metrics-port 0` with two workers in its process,
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runvisor.actors.cli", "up", "--home", str(tmp_path / "home"), "--port",
        str(free_port()), "--monitor-port", str(free_port()), "--metrics-port", "0", "--supervisors", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )  # fmt: skip
    try:
        assert up.stdout is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(up.stdout.readline(), 30)).decode()
            assert line, "runvisor up ended before it served metrics"
            if match := re.search(r"Prometheus metrics at (http://\S+)", line):
                url = match.group(1)

        # then a scrape shows both workers, which share the partitions between them.
        async def both_hold() -> dict[str, list[Sample]] | None:
            found = await asyncio.to_thread(scrape, url)
            held = [s.value for s in found.get("runvisor_partitions", [])]
            return found if len(held) == 2 and sum(held) == subjects.DEFAULT_PARTITIONS else None

        found = await eventually(both_hold, timeout=30, what="two workers sharing the partitions")
        assert len({s.labels["worker"] for s in found["runvisor_events_processed"]}) == 2
    finally:
        up.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(up.wait(), 20)
        except TimeoutError:
            up.kill()
            await up.wait()
