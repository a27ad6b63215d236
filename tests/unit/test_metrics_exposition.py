"""Prometheus metrics without a NATS server: the histogram, the decision tally, the exposition, the endpoint."""

from __future__ import annotations

import asyncio
import functools
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from runvisor.actors.metrics import DecisionTally, Metrics, MetricsServer, Timings, WorkerSnapshot, parse_address
from runvisor.protocols.messages import Evidence, Spent, Verdict
from runvisor.protocols.reasons import StopReason


def verdict(severity: str, spent: Spent | None, reason: StopReason = StopReason.LOOP_DETECTED) -> Verdict:
    evidence = Evidence(summary="seq 3-9: `search x` x3 in a row", seqs=(3, 6, 9), spent=spent)
    return Verdict.model_validate(
        {"run_id": "r1", "reason": reason, "severity": severity, "evidence": evidence, "detector": "exact_repeat"}
    )


def samples(text: bytes) -> dict[str, list[Sample]]:
    return {family.name: family.samples for family in text_string_to_metric_families(text.decode())}


def test_timings_count_each_observation_in_its_bucket_cumulatively() -> None:
    timings = Timings(bounds=(0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 2.0):
        timings.observe(seconds)
    assert timings.buckets() == [("0.001", 2.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert timings.sum == pytest.approx(2.0065)


def test_tally_counts_every_verdict_and_what_paused_or_stopped_runs_burned() -> None:
    tally = DecisionTally()
    tally.add(verdict("warn", Spent(since_seq=3, steps=2, tokens=400, cost_usd=0.01)))
    tally.add(verdict("stop", Spent(since_seq=3, steps=3, tokens=600, cost_usd=0.02)))
    tally.add(verdict("pause", None, StopReason.NO_PROGRESS))
    assert tally.verdicts == {
        ("exact_repeat", "LOOP_DETECTED", "warn"): 1,
        ("exact_repeat", "LOOP_DETECTED", "stop"): 1,
        ("exact_repeat", "NO_PROGRESS", "pause"): 1,
    }
    # a warning stops nothing, so only the stop's cost counts; a decision without its cost is "unknown"
    assert tally.tokens == {"LOOP_DETECTED": 600}
    assert tally.cost_usd == {"LOOP_DETECTED": pytest.approx(0.02)}
    assert tally.unknown == {"NO_PROGRESS": 1}


def test_exposition_has_a_sample_per_worker_and_no_run_ids() -> None:
    # Given two workers in one process (as `runvisor up --supervisors 2` runs them),
    metrics = Metrics()
    for worker, processed in (("w1", 10), ("w2", 20)):
        tally = DecisionTally()
        tally.add(verdict("stop", Spent(since_seq=1, steps=3, tokens=600, cost_usd=0.02)))
        timings = Timings()
        timings.observe(3e-5)
        snapshot = WorkerSnapshot(
            worker=worker, processed=processed, rejected={"step": 1}, commands=1, runs={"STOPPED": 1, "RUNNING": 2},
            partitions=16, lease_changes={"gained": 16, "released": 0, "lost": 0}, lag={0: 5, 1: 0},
            processing=timings, decisions=tally,
        )  # fmt: skip
        metrics.watch(worker, functools.partial(lambda s: s, snapshot))
    # when scraped, every family has a sample for each, labelled by worker (never by run).
    found = samples(metrics.text())
    processed_by = {s.labels["worker"]: s.value for s in found["runvisor_events_processed"]}
    assert processed_by == {"w1": 10, "w2": 20}
    assert {(s.labels["worker"], s.labels["partition"], s.value) for s in found["runvisor_consumer_lag"]} == {
        ("w1", "0", 5), ("w1", "1", 0), ("w2", "0", 5), ("w2", "1", 0)
    }  # fmt: skip
    counts = [s for s in found["runvisor_event_processing_seconds"] if s.name.endswith("_count")]
    assert [s.value for s in counts] == [1, 1]
    assert {s.value for s in found["runvisor_burned_tokens"]} == {600}
    assert all("run_id" not in s.labels for family in found.values() for s in family)


@pytest.mark.parametrize(
    ("text", "address"), [("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("0", ("127.0.0.1", 0))]
)
def test_metrics_address_is_a_port_or_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "http", "65536", ":9464", "host:", "-1"])
def test_metrics_address_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError, match="PORT or HOST:PORT"):
        parse_address(text)


async def test_endpoint_serves_get_on_metrics_only() -> None:
    async with MetricsServer(Metrics()) as endpoint:
        base = endpoint.url.removesuffix("/metrics")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            await asyncio.to_thread(urllib.request.urlopen, f"{base}/nothing", timeout=5)
        post = urllib.request.Request(endpoint.url, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError, match="405"):
            await asyncio.to_thread(urllib.request.urlopen, post, timeout=5)
        with await asyncio.to_thread(urllib.request.urlopen, endpoint.url, timeout=5) as response:
            text = response.read()
    # no worker watched yet: every family is described, none has a sample
    found = samples(text)
    assert "runvisor_events_processed" in found
    assert not any(found.values())
