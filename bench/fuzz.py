"""How a live supervisor worker copes with hostile input: a fuzz run beside real loops.

    python -m bench.fuzz [--messages 100000] [--loops 50] [--rate 5000] [--seed 7] [--settle 10]
                         [--idle S] [--log FILE] [--json]

Starts a private nats-server (loopback, free ports, a temporary directory) and ONE
``runvisor supervisor --id fuzz`` process, its stderr captured, then runs two phases on it:

* clean: ``--loops`` exact-repeat loop runs (the ``find_file`` loop of DESIGN §4) beside as many
  healthy runs (``bench.synth``);
* hostile: as many fresh loop and healthy runs, interleaved with ``--messages`` hostile messages on
  ``rv.step.<run>`` (random bytes, truncated msgpack, wrong types, unknown fields, oversize fields,
  args nested 1,000 deep, invalid UTF-8, poison numbers, payload run ids that are not one subject
  token, sequence gaps and duplicates, steps of unknown runs, a burst of new run ids) and malformed
  commands on ``rv.ctl.<run>``.

Both phases publish at ``--rate`` messages per second (0: as fast as JetStream takes them). The
default, 5,000/s, leaves one worker headroom on a small, noisy machine (it spent 70-180 µs of CPU
on a message on 2 shared cores), so latency shows what the hostile input costs rather than a backlog
of the machine's making; the clean phase is the same work in every run, and its ``worker_cpu_s``
says how fast the machine was at the time.

It reports what was sent, by class; what the worker rejected (its ``rv.stats`` ``rejected``)
against what ``runvisor.protocols.codec`` rejects here; whether the worker survived; the loops it
stopped and their detection latency (publish of the step completing the loop to the ``stop`` on
``rv.ctl.<run>``); its RSS and the runs it holds before and right after the hostile phase and after
``--settle`` seconds (with ``--idle`` shorter than that, the worker has forgotten the runs by then:
what memory it keeps is not theirs); the WARNING/ERROR lines it wrote; and the wall time. The same
``--seed`` sends the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from bench._fuzz_messages import (
    BURST,
    CTL_MAKERS,
    MIX,
    PACE_BATCH,
    VICTIMS,
    Message,
    hostile_messages,
    interleave,
    log_summary,
    rejected_here,
    valid_traffic,
)
from bench.plan import percentiles
from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer
from runvisor.protocols import codec, subjects
from runvisor.protocols.codec import DecodeError
from runvisor.testing import embedded_server

WORKER_ID = "fuzz"

# --- the live worker ----------------------------------------------------------------------------------------


def proc_kb(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``); None once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return None


def cpu_s(pid: int) -> float | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def run_category(run_id: str) -> str:
    """Which kind of run an id of this bench names (``h-loop-3``: loop, ``h-v12``: victim, ...)."""
    name = run_id.partition("-")[2]
    for prefix, category in (("loop-", "loop"), ("ok-", "healthy"), ("v", "victim"), ("u", "unknown"), ("b", "burst")):
        if name.startswith(prefix):
            return category
    return "other"


def steal_s() -> float | None:
    """CPU time the hypervisor gave to others (all CPUs, ``/proc/stat``): a noisy neighbour shows here."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path("/proc/stat").read_text().split()[8]) / os.sysconf("SC_CLK_TCK")
    return None


@dataclass
class Observer:
    """The worker's ``rv.stats`` reports, and the supervisor's commands as they arrive on ``rv.ctl``."""

    stats: dict[str, Any] = field(default_factory=dict)
    stops: dict[str, tuple[int | None, float]] = field(default_factory=dict)
    #: Supervisor commands other than the first stop of a run, as "<cmd> <run category>".
    others: Counter[str] = field(default_factory=Counter)
    #: Set whenever a report or a command arrives (waiters clear it).
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_stats(self, msg: Msg) -> None:
        self.stats = json.loads(msg.data)
        self.changed.set()

    async def on_ctl(self, msg: Msg) -> None:
        arrived = time.perf_counter()
        try:
            command = codec.decode_command(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
        except DecodeError:
            return  # our own hostile commands
        if not command.issuer.startswith("supervisor:"):
            return
        run_id = subjects.run_id_of(msg.subject)
        if command.cmd == "stop" and run_id not in self.stops:
            self.stops[run_id] = (command.at_seq, arrived)
        else:
            self.others[f"{command.cmd} {run_category(run_id)}"] += 1
        self.changed.set()

    async def until(self, done: Callable[[], bool], limit_s: float, proc: asyncio.subprocess.Process) -> float:
        """Wait until ``done()``, the worker exits, or ``limit_s`` pass; the seconds waited."""
        start = time.perf_counter()
        while True:
            self.changed.clear()  # before looking: what arrives while we look wakes the next wait
            left = start + limit_s - time.perf_counter()
            if done() or proc.returncode is not None or left <= 0:
                return time.perf_counter() - start
            with contextlib.suppress(TimeoutError):  # woken at least twice a second, to notice the worker's exit
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    def count(self, name: str) -> int:
        return int(self.stats.get(name, 0))


@contextlib.asynccontextmanager
async def worker_process(
    server: EmbeddedServer, stderr: Path, idle_s: float | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``runvisor supervisor --id fuzz [--idle S]`` as a child process; terminated (then killed) on exit."""
    env = {**os.environ, "NATS_URL": server.url, "RUNVISOR_LOG": "WARNING",
           "RV_SUPERVISOR_PASSWORD": server.credentials.passwords["supervisor"]}  # fmt: skip
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runvisor.actors.cli", "supervisor", "--id", WORKER_ID,
            *(["--idle", str(idle_s)] if idle_s is not None else []), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def stop_worker(proc: asyncio.subprocess.Process, limit_s: float = 30.0) -> dict[str, Any]:
    """SIGTERM, as an operator stops a worker: its exit code, and how long its graceful stop took."""
    if proc.returncode is not None:
        return {"worker_exit_code_on_sigterm": None, "worker_stop_s": None}
    start = time.perf_counter()
    proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), limit_s)  # else killed on leaving worker_process
    return {"worker_exit_code_on_sigterm": proc.returncode, "worker_stop_s": round(time.perf_counter() - start, 2)}


async def wait_for_leases(nc: Client, proc: asyncio.subprocess.Process, partitions: int) -> None:
    kv = await nc.jetstream().key_value(subjects.LEASES_BUCKET)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        owned = 0
        for p in range(partitions):
            with contextlib.suppress(Exception):
                owned += (await kv.get(subjects.lease_key(p))).value == WORKER_ID.encode()
        if owned == partitions:
            return
        if proc.returncode is not None:
            raise RuntimeError(f"the supervisor worker exited with code {proc.returncode} before starting")
        await asyncio.sleep(0.2)
    raise RuntimeError("the supervisor worker did not take every partition within 60 s")


@dataclass
class Phase:
    """One phase's traffic, what runvisor's codec rejects of it, and when each valid step was published."""

    name: str
    loop_ids: list[str]
    ok_ids: list[str]
    traffic: list[Message]
    rejects: Counter[str] = field(default_factory=Counter)
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rejects.update(m.kind for m in self.traffic if m.kind != "valid" and rejected_here(m))

    def latencies_ms(self, stops: dict[str, tuple[int | None, float]]) -> list[float]:
        """Per loop stopped: from the publish of the step its stop names to the stop's arrival."""
        out = []
        for run_id in self.loop_ids:
            at_seq, arrived = stops.get(run_id, (None, 0.0))
            if at_seq is not None and (run_id, at_seq) in self.sent_at:
                out.append((arrived - self.sent_at[(run_id, at_seq)]) * 1e3)
        return out


def build_phases(messages: int, loops: int, seed: int) -> tuple[Phase, Phase]:
    c_loops, c_ok, c_valid = valid_traffic("c", loops, seed)
    clean = Phase("clean", c_loops, c_ok, [m for _, m in sorted(c_valid, key=lambda placed: placed[0])])
    h_loops, h_ok, h_valid = valid_traffic("h", loops, seed + 1)
    targets = [*h_loops, *h_ok, *(f"h-v{i}" for i in range(VICTIMS))]
    hostile = Phase("hostile", h_loops, h_ok, interleave(h_valid, hostile_messages(messages, seed, "h", targets)))
    return clean, hostile


async def publish(nc: Client, phase: Phase, rate: float) -> tuple[float, int]:
    """Publish the phase's traffic at ``rate`` messages/s; (seconds until every ack, refused publishes)."""
    js = nc.jetstream()
    refused = 0

    def count(ack: asyncio.Future[Any]) -> None:
        nonlocal refused
        refused += not ack.cancelled() and ack.exception() is not None

    start = time.perf_counter()
    for i, msg in enumerate(phase.traffic):
        if rate and i % PACE_BATCH == 0 and (delay := start + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if msg.is_command:
            await nc.publish(msg.subject, msg.data)
            continue
        if msg.kind == "valid":
            phase.sent_at[(msg.run_id, msg.seq)] = time.perf_counter()
        (await js.publish_async(msg.subject, msg.data)).add_done_callback(count)
    await asyncio.wait_for(js.publish_async_completed(), 120)
    await nc.flush()
    return time.perf_counter() - start, refused


def file_size(path: Path) -> int:
    return path.stat().st_size


def read_from(path: Path, offset: int) -> str:
    """What was written to ``path`` after ``offset`` bytes."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


async def run_phase(
    nc: Client, phase: Phase, rate: float, seen: Observer, proc: asyncio.subprocess.Process, stderr: Path
) -> dict[str, Any]:
    """Publish a phase, wait until the worker has consumed all of it and stopped its loops, and measure."""
    # Every step is either processed or rejected; of the commands, only the rejected are counted.
    expected = sum(not m.is_command for m in phase.traffic) + sum(
        n for k, n in phase.rejects.items() if k in CTL_MAKERS
    )
    processed0, rejected0 = seen.count("processed"), seen.count("rejected")
    log_from, cpu0, steal0 = file_size(stderr), cpu_s(proc.pid), steal_s()

    def consumed() -> int:
        return seen.count("processed") - processed0 + seen.count("rejected") - rejected0

    publish_s, refused = await publish(nc, phase, rate)
    # rv.stats comes once a second: drain_s is within a second of when the worker caught up.
    drain_s = await seen.until(lambda: consumed() >= expected, 60 + len(phase.traffic) / 2_000, proc)
    await seen.until(lambda: all(r in seen.stops for r in phase.loop_ids), 5.0, proc)
    cpu1, steal1 = cpu_s(proc.pid), steal_s()
    latencies = phase.latencies_ms(seen.stops)
    p50, p99 = percentiles(latencies)
    log = log_summary(read_from(stderr, log_from))
    return {
        "messages": len(phase.traffic), "valid_steps": sum(m.kind == "valid" for m in phase.traffic),
        "publish_s": round(publish_s, 2), "publish_refused": refused, "drain_s": round(drain_s, 2),
        "consumed": consumed(), "consumed_expected": expected, "rejected": seen.count("rejected") - rejected0,
        "rejected_expected": sum(phase.rejects.values()),
        "loops_stopped": sum(r in seen.stops for r in phase.loop_ids), "loops": len(phase.loop_ids),
        "healthy_stopped": sum(r in seen.stops for r in phase.ok_ids),
        "latency_ms_p50": _rounded(p50), "latency_ms_p99": _rounded(p99),
        "latency_ms_by_loop": [round(ms) for ms in latencies],  # in the order the loops run: where it grew
        "worker_cpu_s": _delta(cpu0, cpu1), "steal_s": _delta(steal0, steal1), "log": log,
    }  # fmt: skip


def burst_position(traffic: Sequence[Message]) -> list[float]:
    """Where the burst of new run ids starts and ends, as fractions of the phase."""
    at = [i for i, m in enumerate(traffic) if m.kind == BURST]
    return [round(at[0] / len(traffic), 3), round(at[-1] / len(traffic), 3)] if at else []


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


async def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    clean, hostile = build_phases(args.messages, args.loops, args.seed)
    result: dict[str, Any] = {
        "seed": args.seed, "rate": args.rate,
        "sent_by_class": dict(Counter(m.kind for m in hostile.traffic if m.kind != "valid")),
        "codec_rejects_by_class": dict(hostile.rejects), "burst_at": burst_position(hostile.traffic),
        "prepare_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    seen = Observer()
    with tempfile.TemporaryDirectory(prefix="runvisor-fuzz-") as tmp:
        stderr = args.log or Path(tmp) / "worker.stderr"
        async with embedded_server() as server:
            nc = await connect(server.endpoint("admin"), "bench-fuzz")
            watch = await connect(server.endpoint("admin"), "bench-fuzz-watch")
            try:
                await watch.subscribe(subjects.CTL_ALL, cb=seen.on_ctl)
                await watch.subscribe(subjects.stats(WORKER_ID), cb=seen.on_stats)
                await watch.flush()
                info = await nc.jetstream().stream_info(subjects.STEPS_STREAM)
                async with worker_process(server, stderr, args.idle) as proc:
                    await wait_for_leases(nc, proc, subjects.partitions_in(info.config) or subjects.DEFAULT_PARTITIONS)
                    result["clean"] = await run_phase(nc, clean, args.rate, seen, proc, stderr)
                    rss = {"before_hostile": _mb(proc_kb(proc.pid, "VmRSS"))}
                    runs = {"before_hostile": seen.stats.get("runs")}
                    result["hostile"] = await run_phase(nc, hostile, args.rate, seen, proc, stderr)
                    rss["after_hostile"] = _mb(proc_kb(proc.pid, "VmRSS"))
                    runs["after_hostile"] = seen.stats.get("runs")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), args.settle)
                    rss |= {"after_settle": _mb(proc_kb(proc.pid, "VmRSS")), "peak": _mb(proc_kb(proc.pid, "VmHWM"))}
                    runs["after_settle"] = seen.stats.get("runs")
                    result |= {"worker_rss_mb": rss, "worker_runs": runs, "worker_other_commands": dict(seen.others)}
                    result["worker_exited_by_itself"] = proc.returncode
                    result |= await stop_worker(proc)
            finally:
                await watch.close()
                await nc.close()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def render(result: dict[str, Any]) -> str:
    """The result as tables a person reads."""
    sent, rejects = result["sent_by_class"], result["codec_rejects_by_class"]
    lines = [f"{'hostile class':20} {'sent':>8} {'codec rejects':>14}"]
    lines += [f"{kind:20} {sent[kind]:>8,} {rejects.get(kind, 0):>14,}" for kind in MIX if kind in sent]
    lines += [f"{'total':20} {sum(sent.values()):>8,} {sum(rejects.values()):>14,}", ""]
    clean, hostile = result["clean"], result["hostile"]
    lines.append(f"{'':26} {'clean':>12} {'hostile':>12}")
    for key in ("messages", "valid_steps", "publish_s", "publish_refused", "drain_s", "consumed", "rejected",
                "rejected_expected", "loops_stopped", "healthy_stopped", "latency_ms_p50", "latency_ms_p99",
                "worker_cpu_s", "steal_s"):  # fmt: skip
        lines.append(f"{key:26} {clean[key]!s:>12} {hostile[key]!s:>12}")
    for key in ("warning", "error", "decision_lines", "tracebacks"):
        lines.append(f"{'log ' + key:26} {clean['log'][key]!s:>12} {hostile['log'][key]!s:>12}")
    lines.append("")
    for key in ("worker_rss_mb", "worker_runs", "worker_other_commands"):
        lines.append(f"{key:26} {result[key]}")
    lines.append(f"{'hostile log, other lines':26} {hostile['log']['other_lines']}")
    lines.append(f"{'burst of new runs at':26} {result['burst_at']} of the hostile phase")
    lines.append(f"{'hostile latency by loop':26} {hostile['latency_ms_by_loop']}")
    lines.append(f"{'worker exited by itself':26} {result['worker_exited_by_itself']}")
    lines.append(f"{'exit code on SIGTERM':26} {result['worker_exit_code_on_sigterm']}")
    lines.append(f"{'graceful stop took (s)':26} {result['worker_stop_s']}")
    lines.append(f"{'wall_s':26} {result['wall_s']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages (default 100000)")
    parser.add_argument("--loops", type=int, default=50, help="loop runs per phase, each beside a healthy run (50)")
    parser.add_argument("--rate", type=float, default=5_000.0, help="messages per second, 0: unpaced (5000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of every message (default 7)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the last RSS reading (10)")
    parser.add_argument(
        "--idle", type=float, default=None, metavar="S", help="the worker forgets runs silent this long (its default)"
    )
    parser.add_argument("--log", type=Path, default=None, help="keep the worker's stderr in this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (
        args.messages < 1
        or args.loops < 1
        or args.rate < 0
        or args.settle < 0
        or (args.idle is not None and args.idle <= 0)
    ):
        print("fuzz: --messages and --loops must be at least 1, --rate and --settle not negative, --idle positive",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = asyncio.run(fuzz(args))
    except (OSError, RuntimeError, TimeoutError, NatsError) as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
