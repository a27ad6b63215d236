"""What the agent SDK and the tool executor cost, against raw nats-py on the same data (issue 4).

    python -m bench.sdk [--n 5000] [--json]

All in one run on one embedded server, so the ratios compare like with like:

* ``run.llm()`` (one step event: encode + ``publish_async``, acks awaited at the end) against
  raw ``js.publish_async`` of the same bytes, and against a raw core ``nc.publish``;
* ``run.checkpoint()`` against a raw ``kv.put`` of the same checkpoint bytes;
* a tool call's round trip: through a ``ToolExecutor`` (request only, and the SDK's full
  ``run.call_tool`` with its checkpoints and step events) against a raw request-reply;
* an in-process tool call (issue 13): the same function called directly, and supervised
  (``@supervised_tool``, async and sync, ``async with run.tool(...)``, and 8 at once with
  ``asyncio.gather``); and ``run.llm(model=...)``, whose cost comes from the genai-prices table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench.plan import percentiles
from runvisor.actors.agent import Run, supervised_tool
from runvisor.actors.connection import connect
from runvisor.actors.server import EmbeddedServer, provision
from runvisor.actors.tools import ToolExecutor, ToolRegistry
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Checkpoint, StepEvent, ToolRequest

bench_tools = ToolRegistry()


@bench_tools.tool
async def echo(text: str) -> str:
    return text


async def _per_call(n: int, call: Callable[[int], Awaitable[Any]], done: Callable[[], Awaitable[Any]]) -> float:
    """Mean µs per call over ``n`` calls, including the final ``done`` (e.g. awaiting acks)."""
    started = time.perf_counter()
    for i in range(n):
        await call(i)
    await done()
    return (time.perf_counter() - started) / n * 1e6


async def _latencies(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - started) * 1e3)
    return out


async def measure(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="runvisor-bench-sdk-") as tmp:
        async with EmbeddedServer(Path(tmp)) as server:
            admin = await connect(server.endpoint("admin"), "bench-sdk")
            await provision(admin)
            agent_nc = await connect(server.endpoint("agent"), "bench-sdk-agent")
            js = agent_nc.jetstream()
            stop = asyncio.Event()
            executor = ToolExecutor(bench_tools, server.endpoint("tool"))
            served = asyncio.create_task(executor.run(stop))
            result: dict[str, Any] = {"n": n}
            try:
                async with Run.start(goal="bench", run_id="bench-sdk", nc=agent_nc) as run:
                    # Step events.
                    sample = StepEvent(run_id="bench-raw", seq=1, ts=time.time(), kind="llm", tokens_in=1200,
                                       tokens_out=80, cost_usd=0.004)  # fmt: skip
                    data = codec.encode(sample)
                    subject = subjects.step("bench-raw")
                    raw_js = await _per_call(
                        n, lambda i: js.publish_async(subject, data, headers=codec.MSGPACK_HEADERS),
                        js.publish_async_completed,
                    )  # fmt: skip
                    raw_core = await _per_call(n, lambda i: agent_nc.publish(subject, data), agent_nc.flush)
                    ours = await _per_call(
                        n, lambda i: run.llm(tokens_in=1200, tokens_out=80, cost_usd=0.004), run.checkpoint
                    )
                    result["llm_us"] = ours
                    result["raw_publish_async_us"] = raw_js
                    result["raw_core_publish_us"] = raw_core
                    result["llm_vs_publish_async"] = ours / raw_js
                    # Checkpoints.
                    kv = await js.key_value(subjects.CHECKPOINTS_BUCKET)
                    run.state["notes"] = ["a" * 40] * 10
                    blob = codec.encode(Checkpoint(run_id="bench-raw", seq=1, state=run.state))
                    m = max(200, n // 10)
                    raw_kv = await _per_call(m, lambda i: kv.put("bench-raw", blob), _nothing)
                    ours_cp = await _per_call(m, lambda i: run.checkpoint(), _nothing)
                    result |= {
                        "checkpoint_us": ours_cp,
                        "raw_kv_put_us": raw_kv,
                        "checkpoint_vs_kv_put": ours_cp / raw_kv,
                    }
                    # Tool round trips.
                    # A raw responder on its own connection, as the executor has (the admin role may use any subject).
                    responder = await connect(server.endpoint("admin"), "bench-sdk-responder")
                    await responder.subscribe("bench.echo", cb=_respond)
                    await responder.flush()
                    raw_rr = await _latencies(m, lambda i: admin.request("bench.echo", b"hi", timeout=5))
                    await responder.close()
                    executor_rr = await _latencies(m, lambda i: agent_nc.request(
                        subjects.tool("echo"),
                        codec.encode(ToolRequest(run_id="bench-raw", call_id=f"c{i}", tool="echo",
                                                 args={"text": "hi"}, idempotency_key=f"bench-raw:c{i}")),
                        timeout=5,
                    ))  # fmt: skip
                    full = await _latencies(m, lambda i: run.call_tool("echo", {"text": "hi"}))
                    for name, values in (("raw_request", raw_rr), ("executor", executor_rr), ("call_tool", full)):
                        p50, p99 = percentiles(values)
                        result[f"{name}_ms_p50"], result[f"{name}_ms_p99"] = p50, p99
                    result |= await _in_process(run, m)
            finally:
                stop.set()
                await served
                await agent_nc.close()
                await admin.close()
    return result


async def _in_process(run: Run, m: int) -> dict[str, Any]:
    """In-process tool calls, supervised and not, and an LLM step priced from the table."""

    async def lookup(key: str) -> str:
        return key

    def lookup_sync(key: str) -> str:
        return key

    async def in_block(i: int) -> None:
        async with run.tool("lookup", {"key": "k"}) as call:
            call.result = await lookup("k")

    supervised, supervised_sync = supervised_tool(lookup), supervised_tool(lookup_sync)
    direct = await _latencies(m, lambda i: lookup("k"))
    direct_thread = await _latencies(m, lambda i: asyncio.to_thread(lookup_sync, "k"))
    out: dict[str, Any] = {}
    for name, values in (
        ("local_direct", direct),
        ("local_direct_thread", direct_thread),
        ("local", await _latencies(m, lambda i: supervised("k"))),
        ("local_sync", await _latencies(m, lambda i: supervised_sync("k"))),
        ("local_block", await _latencies(m, in_block)),
        ("local_8_parallel", await _latencies(m // 8, lambda i: asyncio.gather(*(supervised("k") for _ in range(8))))),
    ):
        p50, p99 = percentiles(values)
        out[f"{name}_ms_p50"], out[f"{name}_ms_p99"] = p50, p99
    await run.llm(model="gpt-4o", tokens_in=1200, tokens_out=80)  # loads the table once, before timing
    priced = await _per_call(m, lambda i: run.llm(model="gpt-4o", tokens_in=1200, tokens_out=80), run.checkpoint)
    given = await _per_call(m, lambda i: run.llm(tokens_in=1200, tokens_out=80, cost_usd=0.004), run.checkpoint)
    return out | {"llm_priced_us": priced, "llm_given_cost_us": given}


async def _respond(msg: Msg) -> None:
    await msg.respond(msg.data)


async def _nothing() -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="step events per measurement (default 5000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.n))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value:.3f}" if isinstance(value, float) else f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
