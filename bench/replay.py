"""Replay recorded agent traffic through real supervisor workers and measure them.

    python -m bench.replay FILE... [--max | --speed X | --rate N] [--workers N] [--verdicts OUT] [--json]

Starts the embedded server (or uses ``NATS_URL``) and N ``runvisor supervisor`` processes,
publishes the recorded events with each run's order preserved, waits until the workers
have processed every event, and reports throughput, detection latency and decisions.

* ``--max`` loads the stream first, then measures the raw ceiling (nats-py alone reading
  the same stream with an ordered consumer), the same consumer also decoding every event
  into a ``StepEvent`` (what any reader of the protocol pays before deciding anything), and
  the workers reading it, in the same run: ``ratio`` is ours over raw, ``decode_ratio``
  the decoding consumer's, so ``ratio / decode_ratio`` is what the detectors leave of it.
* ``--speed X`` keeps the recorded timing divided by X; ``--rate N`` publishes N events/s.
  Both start the workers first and measure latency from an offending event's publish to
  its command's arrival on ``rv.ctl``.

Replayed runs get fresh ids (a random prefix), so decisions from earlier replays of the same
file never mix with this one's; the verdicts file maps them back to the recorded ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.plan import Latencies, Namespace, at_rate, decision_record, paced, percentiles, renamed
from bench.traffic import read_events
from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.protocols import codec, subjects
from runvisor.protocols.codec import DecodeError
from runvisor.protocols.messages import StepEvent


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.shown = label, total, -1
        self.enabled = sys.stderr.isatty() and total > 0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        pct = min(100, done * 100 // self.total)
        if pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            print(f"\r{self.label:10} [{bar:25}] {pct:3d}% {done}/{self.total}", end="", file=sys.stderr, flush=True)
            if pct == 100:
                print(file=sys.stderr)


@contextlib.asynccontextmanager
async def nats_for_bench() -> AsyncIterator[tuple[Endpoint, dict[str, str]]]:
    """The admin endpoint and the environment worker processes need: embedded, or NATS_URL."""
    if os.environ.get("NATS_URL"):
        yield Endpoint.discover("admin"), dict(os.environ)
        return
    with tempfile.TemporaryDirectory(prefix="runvisor-bench-") as tmp:
        async with EmbeddedServer(Path(tmp)) as server:
            env = {
                **os.environ,
                "NATS_URL": server.url,
                "RV_SUPERVISOR_PASSWORD": server.credentials.passwords["supervisor"],
            }
            yield server.endpoint("admin"), env


class Workers:
    """N ``runvisor supervisor`` processes, and their throughput reports on ``rv.stats.*``."""

    def __init__(self, count: int, env: dict[str, str], lookback_s: float) -> None:
        self.count, self.env, self.lookback_s = count, env, lookback_s
        self.procs: list[asyncio.subprocess.Process] = []
        self.stats: dict[str, dict[str, Any]] = {}

    async def on_stats(self, msg: Msg) -> None:
        report = json.loads(msg.data)
        self.stats[report["worker"]] = report

    @property
    def processed(self) -> int:
        return sum(int(s["processed"]) for s in self.stats.values())

    def rate(self) -> tuple[float, float]:
        """(events per second, elapsed seconds) from the first to the last processed event."""
        first = min(s["first_at"] for s in self.stats.values() if s["first_at"] is not None)
        last = max(s["last_at"] for s in self.stats.values())
        elapsed = max(last - first, 1e-9)
        return self.processed / elapsed, elapsed

    async def start(self, nc: Client, partitions: int) -> None:
        env = {**self.env, "RUNVISOR_LOG": "WARNING"}
        nonce = secrets.token_hex(3)
        for i in range(self.count):
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "runvisor.actors.cli",
                    "supervisor",
                    "--id",
                    f"bench-{nonce}-{i}",
                    "--lookback",
                    str(self.lookback_s),
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            )
        await self._wait_balanced(nc, partitions, nonce)

    async def _wait_balanced(self, nc: Client, partitions: int, nonce: str) -> None:
        kv = await nc.jetstream().key_value(subjects.LEASES_BUCKET)
        share = -(-partitions // self.count)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owners: Counter[str] = Counter()
            for p in range(partitions):
                with contextlib.suppress(Exception):
                    entry = await kv.get(subjects.lease_key(p))
                    if entry.value:
                        owners[entry.value.decode()] += 1
            ours = {w: n for w, n in owners.items() if w.startswith(f"bench-{nonce}-")}
            if sum(ours.values()) == partitions and len(ours) == self.count and max(ours.values()) <= share:
                return
            for proc in self.procs:
                if proc.returncode is not None:
                    raise RuntimeError(f"a supervisor worker exited with code {proc.returncode}")
            await asyncio.sleep(0.2)
        raise RuntimeError("supervisor workers did not share the partitions within 60 s")

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def ceiling(nc: Client, total: int, start_seq: int) -> dict[str, float | None]:
    """Raw nats-py: one ordered consumer reading the same ``total`` messages and doing nothing else;
    then the same consumer decoding each one (``codec.decode``), and nothing else.

    Each is the best of two tries, so a noisy moment on a small machine does not flatter us.
    """
    rate = max([await _raw_rate(nc, total, start_seq) for _ in range(2)])
    if not rate:
        raise RuntimeError("the raw ceiling could not be measured: no try read the whole stream in time")
    decoding = max([await _raw_rate(nc, total, start_seq, _decode_step) for _ in range(2)])
    return {"ceiling_events_per_s": rate, "decode_ceiling_events_per_s": decoding or None}


def _decode_step(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        codec.decode(StepEvent, data)


async def _raw_rate(nc: Client, total: int, start_seq: int, work: Callable[[bytes], None] | None = None) -> float:
    count = 0
    first = last = 0.0
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        nonlocal count, first, last
        if count == 0:
            first = time.perf_counter()
        if work is not None:
            work(msg.data)
        count += 1
        if count >= total:
            last = time.perf_counter()
            done.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    js = nc.jetstream()
    sub = None
    # A stalled try (seen now and then with nats-py's ordered consumers under a large backlog on
    # this 2-core machine: a consumer reset times out) must not hang or end the bench: it counts as
    # no measurement, and the best completed try is the ceiling.
    limit = 30.0 + total / 5_000
    try:
        sub = await js.subscribe(
            f"{subjects.PREFIX}.step.>", stream=subjects.STEPS_STREAM, ordered_consumer=True, config=config, cb=on_msg
        )
        await asyncio.wait_for(done.wait(), limit)
    except (TimeoutError, NatsError) as exc:
        print(f"replay: a raw-ceiling try read {count} of {total} messages ({exc!r}); ignored", file=sys.stderr)
        return 0.0
    finally:
        if sub is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()
    return (total - 1) / max(last - first, 1e-9)


def load(files: list[Path], ns: Namespace) -> list[StepEvent]:
    """Every event of the files, renamed into this replay's namespace."""
    events = [renamed(e, ns) for path in files for e in read_events(path)]
    if not events:
        raise SystemExit("replay: no events in the given files")
    # Hundreds of thousands of loaded events make every full GC pass a long pause of the event
    # loop, long enough for the server to see a stalled consumer; they live to the end anyway.
    gc.collect()
    gc.freeze()
    return events


class Decisions:
    """The supervisors' commands for this replay's runs, with their detection latency."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.records: list[dict[str, Any]] = []
        self.latencies = Latencies()

    async def on_ctl(self, msg: Msg) -> None:
        original = self.ns.back(subjects.run_id_of(msg.subject))
        if original is None:
            return  # another replay's run, or a live one
        with contextlib.suppress(DecodeError):
            command = codec.decode_command(msg.data)
            if command.issuer.startswith("supervisor:"):
                self.latencies.arrived(subjects.run_id_of(msg.subject), command.at_seq, time.perf_counter())
                self.records.append(decision_record(command, original))

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentiles(self.latencies.delays_ms)
        return {
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "decisions": len(self.records),
            "decisions_by_reason": dict(Counter(str(d["reason"]) for d in self.records)),
        }


async def replay(args: argparse.Namespace) -> dict[str, Any]:
    ns = Namespace(secrets.token_hex(4))
    events = load(args.files, ns)
    decisions = Decisions(ns)
    result: dict[str, Any] = {
        "mode": _mode(args), "workers": args.workers, "events": len(events),
        "runs": len({e.run_id for e in events}), "ceiling_events_per_s": None,
        "decode_ceiling_events_per_s": None,
    }  # fmt: skip
    async with nats_for_bench() as (admin, env):
        nc = await connect(admin, "bench-replay")
        try:
            await provision(nc)
            partitions = subjects.partitions_in((await nc.jetstream().stream_info(subjects.STEPS_STREAM)).config) or 32
            await nc.subscribe(subjects.CTL_ALL, cb=decisions.on_ctl)
            workers = Workers(args.workers, env, lookback_s=3600.0)
            await nc.subscribe(subjects.STATS_ALL, cb=workers.on_stats)
            try:
                if args.max:
                    first_seq = await _publish_all(nc, events)
                    result |= await ceiling(nc, len(events), first_seq)
                    await workers.start(nc, partitions)
                else:
                    await workers.start(nc, partitions)
                    schedule = at_rate(events, args.rate) if args.rate else paced(events, args.speed)
                    await _publish_paced(nc, schedule, len(events), decisions.latencies)
                await _wait_processed(workers, len(events))
                await _wait_settled(decisions)
                await nc.flush()
            finally:
                await workers.stop()
        finally:
            await nc.close()
    rate, elapsed = workers.rate()
    ceiling_rate, decode_rate = result["ceiling_events_per_s"], result["decode_ceiling_events_per_s"]
    result |= {
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(rate, 1),
        "ratio": round(rate / ceiling_rate, 3) if ceiling_rate else None,
        "decode_ratio": round(decode_rate / ceiling_rate, 3) if ceiling_rate and decode_rate else None,
    } | decisions.summary()
    if args.latencies:
        args.latencies.write_text("".join(f"{ms:.3f}\n" for ms in decisions.latencies.delays_ms))
    if args.verdicts:
        args.verdicts.write_text("".join(json.dumps(record) + "\n" for record in decisions.records))
    return result


def _mode(args: argparse.Namespace) -> str:
    if args.max:
        return "max"
    return f"rate={args.rate}" if args.rate else f"speed={args.speed}"


async def _publish_all(nc: Client, events: list[StepEvent]) -> int:
    """Publish everything as fast as JetStream acks it; returns the first stream sequence."""
    js = nc.jetstream()
    progress = Progress("publish", len(events))
    first = await js.publish(subjects.step(events[0].run_id), codec.encode(events[0]))
    for i, event in enumerate(events[1:], start=2):
        await js.publish_async(subjects.step(event.run_id), codec.encode(event))
        if i % 1000 == 0:
            progress.update(i)
    await js.publish_async_completed()
    progress.update(len(events))
    return int(first.seq)


async def _publish_paced(
    nc: Client, schedule: Iterator[tuple[float, StepEvent]], total: int, latencies: Latencies
) -> None:
    js = nc.jetstream()
    progress = Progress("publish", total)
    start = time.perf_counter()
    for i, (offset, event) in enumerate(schedule, start=1):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        latencies.sent(event.run_id, event.seq, time.perf_counter())
        await js.publish_async(subjects.step(event.run_id), codec.encode(event))
        progress.update(i)
    await js.publish_async_completed()


async def _wait_processed(workers: Workers, total: int) -> None:
    progress = Progress("supervise", total)
    deadline = time.monotonic() + 900
    while workers.processed < total:
        progress.update(workers.processed)
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers processed {workers.processed} of {total} events in 900 s")
        await asyncio.sleep(0.1)
    progress.update(total)


async def _wait_settled(decisions: Decisions, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until no decision has arrived for ``quiet_s``: the last events' decisions are still
    being checked and stored when the workers report them processed (not part of the timing)."""
    deadline = time.monotonic() + limit_s
    seen = -1
    while len(decisions.records) != seen and time.monotonic() < deadline:
        seen = len(decisions.records)
        await asyncio.sleep(quiet_s)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="recorded traffic: .jsonl, .jsonl.gz or .msgpack")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--max", action="store_true", help="as fast as possible; also measures the raw ceiling")
    pace.add_argument("--speed", type=float, default=100.0, help="recorded timing divided by X (default 100)")
    pace.add_argument("--rate", type=float, default=None, help="publish N events per second")
    p.add_argument("--workers", type=int, default=1, help="supervisor worker processes (default 1)")
    p.add_argument("--verdicts", type=Path, default=None, help="write every decision here as JSON Lines")
    p.add_argument("--latencies", type=Path, default=None, help="write each detection latency (ms), one per line")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for path in args.files:
        if not path.exists():
            print(f"replay: {path}: no such file", file=sys.stderr)
            return 2
    if args.workers < 1:
        print("replay: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(replay(args))
    except (OSError, RuntimeError, ValueError, NatsError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
