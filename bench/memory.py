"""Supervisor memory per active run, at 1k, 10k and 100k concurrent runs (issue 3, issue 5).

    python -m bench.memory [--runs 1000 10000 100000] [--actions 4] [--json]

Feeds an in-process ``Engine`` (what a worker keeps in memory) ``--actions`` realistic
actions for each of N concurrent runs, interleaved, and reports Python heap bytes per run
(tracemalloc) and the process's resident memory growth.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import tracemalloc
from typing import Any

from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols.messages import StepEvent


def _events(run: int, action: int) -> list[StepEvent]:
    run_id = f"mem-{run}"
    seq = action * 3
    body = "\n".join(f"src/module_{run % 50}.py:{action * 7 + j}: def handler_{j}(request): ..." for j in range(8))
    return [
        StepEvent(run_id=run_id, seq=seq, ts=1.7e9 + seq, kind="llm", tokens_in=1500 + 200 * action, tokens_out=90,
                  cost_usd=0.004),
        StepEvent(run_id=run_id, seq=seq + 1, ts=1.7e9 + seq + 1, kind="tool_call", tool="grep", call_id=f"c{action}",
                  args={"command": f"grep -rn handler_{action} src/"}),
        StepEvent(run_id=run_id, seq=seq + 2, ts=1.7e9 + seq + 2, kind="tool_result", tool="grep",
                  call_id=f"c{action}", ok=True, observation=body),
    ]  # fmt: skip


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(runs: int, actions: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    rss_before = _rss_kb()
    base, _ = tracemalloc.get_traced_memory()
    engine = Engine()
    started = time.perf_counter()
    events = 0
    for action in range(actions):
        for run in range(runs):
            for event in _events(run, action):
                engine.observe(event, event.ts)
                events += 1
    elapsed = time.perf_counter() - started
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(engine.windows) == runs
    return {
        "runs": runs,
        "events": events,
        "bytes_per_run": round((current - base) / runs),
        "total_mb": round((current - base) / 1e6, 1),
        "rss_growth_mb": round((_rss_kb() - rss_before) / 1024, 1),
        "us_per_event_traced": round(elapsed / events * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10_000, 100_000], help="concurrent runs")
    parser.add_argument("--actions", type=int, default=4, help="actions fed to each run (default 4)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    for runs in args.runs:
        result = measure(runs, args.actions)
        print(json.dumps(result) if args.json else "  ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
