"""How long a burst of new runs holds up the stop of a loop sent right behind it.

    python -m bench.burst [--runs 4000] [--repeats 2] [--json]

Starts a private nats-server and ONE ``runvisor supervisor`` process (as ``bench.fuzz`` does); then,
per repeat, publishes ``--runs`` ``start`` steps of runs the worker has never seen, all at once, and
right behind them a loop (the ``find_file`` loop of DESIGN §4). Each new run waits on one lookup of
its first stored step before it is judged (is it new, or an ended run starting again?); the loop's
steps queue behind them. Printed per repeat: seconds from the loop's last step published to its
``stop`` arriving on ``rv.ctl.<run>``, and with ``--runs 0`` the same without a burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from bench._fuzz_messages import loop_run
from bench.fuzz import wait_for_leases, worker_process
from runvisor.actors.connection import connect
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent
from runvisor.testing import embedded_server

#: How long one repeat may wait for its loop's stop.
STOP_LIMIT_S = 120.0


async def measure(runs: int, repeats: int) -> list[float]:
    """Seconds from each repeat's loop completed to its stop."""
    delays = []
    with tempfile.TemporaryDirectory(prefix="runvisor-burst-") as tmp:
        async with embedded_server() as server:
            nc = await connect(server.endpoint("admin"), "bench-burst")
            try:
                info = await nc.jetstream().stream_info(subjects.STEPS_STREAM)
                async with worker_process(server, Path(tmp) / "worker.stderr") as proc:
                    await wait_for_leases(nc, proc, subjects.partitions_in(info.config) or subjects.DEFAULT_PARTITIONS)
                    for repeat in range(repeats):
                        delays.append(await _one(nc, runs, f"r{repeat}"))
            finally:
                await nc.close()
    return delays


async def _one(nc: Client, runs: int, tag: str) -> float:
    """One burst of ``runs`` new runs, then a loop: seconds from the loop's last step to its stop."""
    loop_id = f"loop-{tag}"
    stopped = asyncio.Event()

    async def on_ctl(msg: Msg) -> None:
        command = codec.decode_command(msg.data, (msg.headers or {}).get(codec.CONTENT_TYPE))
        if command.cmd == "stop":
            stopped.set()

    sub = await nc.subscribe(subjects.ctl(loop_id), cb=on_ctl)
    js = nc.jetstream()
    for i in range(runs):
        start = StepEvent(run_id=f"new-{tag}-{i}", seq=1, ts=time.time(), kind="start", task="burst")
        await js.publish_async(subjects.step(start.run_id), codec.encode(start))
    for message in loop_run(loop_id):
        await js.publish_async(message.subject, message.data)
    await js.publish_async_completed()
    completed = time.perf_counter()  # every step stored, the loop's last one included
    await asyncio.wait_for(stopped.wait(), STOP_LIMIT_S)
    await sub.unsubscribe()
    return time.perf_counter() - completed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4000, help="new runs per burst (default 4000)")
    parser.add_argument("--repeats", type=int, default=2, help="bursts, one after another (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.repeats < 1:
        print("burst: --runs must not be negative, --repeats at least 1", file=sys.stderr)
        return 2
    try:
        delays = asyncio.run(measure(args.runs, args.repeats))
    except (OSError, RuntimeError, TimeoutError, NatsError) as exc:
        print(f"burst: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    result = {"runs": args.runs, "stop_after_s": [round(d, 3) for d in delays]}
    print(
        json.dumps(result)
        if args.json
        else f"{args.runs} new runs, then a loop: stopped after {result['stop_after_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
