"""Offline evaluation: stream recorded traffic through the :class:`Engine`, no NATS.

Usage::

    .venv/bin/python -m bench.offline [--steps ../shared/traces/dev.steps.jsonl] [--out verdicts.jsonl]

With ``--perf`` it instead measures the engine alone on synthetic runs: microseconds per
event for 10-action and 1000-action runs, and bytes per ``RunWindow`` (tracemalloc).

Writes every non-warn decision as JSON Lines ``{"run_id", "reason", "at_seq", "evidence"}``
(plus ``severity`` and ``detector``), and prints throughput. The engine's clock is the
event ``ts`` (synthetic in the dev traces: one second per event), so stall timers are
exercised exactly as they would be live.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.traffic import read_events
from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols import codec
from runvisor.protocols.messages import StepEvent, Verdict
from runvisor.testing import replay

DEFAULT_STEPS = Path("../shared/traces/dev.steps.jsonl")


def decision(verdict: Verdict) -> dict[str, Any]:
    """The JSON form of one decision."""
    return {
        "run_id": verdict.run_id,
        "reason": str(verdict.reason),
        "at_seq": verdict.at_seq,
        "severity": verdict.severity,
        "detector": verdict.detector,
        "evidence": verdict.evidence.summary,
        "seqs": list(verdict.evidence.seqs),
    }


def synthetic_run(run_id: str, actions: int) -> list[StepEvent]:
    """A run of varied actions with ~600-character observations (none of them loops).

    The run id is part of every observation: runs must not share outputs, or the
    fingerprint memo would make the benchmark measure cache hits.
    """
    events: list[StepEvent] = []
    seq = 0
    for i in range(actions):
        body = f"{run_id}: " + " ".join(f"line{i}_{j} = compute(arg_{j}, {i * j}) # note {j}" for j in range(15))
        for kind, extra in (
            ("llm", {"tokens_in": 1000 + i, "tokens_out": 50}),
            (
                "tool_call",
                {"tool": "bash", "call_id": f"c{i}", "args": {"command": f"sed -n '{i},{i + 30}p' f{i % 7}.py"}},
            ),
            ("tool_result", {"tool": "bash", "call_id": f"c{i}", "ok": True, "observation": body}),
        ):
            seq += 1
            events.append(
                StepEvent.model_validate({"run_id": run_id, "seq": seq, "ts": 1.7e9 + seq, "kind": kind, **extra})
            )
    return events


def perf() -> None:
    """Print µs/event for short and long runs, and bytes per RunWindow at the default window."""
    for actions, runs in ((10, 200), (1000, 4)):
        batches = [synthetic_run(f"r{actions}-{k}", actions) for k in range(runs)]
        engine = Engine()
        total = sum(len(b) for b in batches)
        started = time.perf_counter()
        for batch in batches:
            for event in batch:
                engine.observe(event, event.ts)
        elapsed = time.perf_counter() - started
        print(f"{actions:5d}-action runs: {elapsed / total * 1e6:6.1f} µs/event over {total} events")
    engine = Engine()
    warm = synthetic_run("warm", 80)
    for event in warm:
        engine.observe(event, event.ts)
    count = 500
    copies = [[e.model_copy(update={"run_id": f"m{k}"}) for e in warm] for k in range(count)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for batch in copies:
        for event in batch:
            engine.observe(event, event.ts)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    window = engine.windows["m0"]
    arrays = window.ring_bytes()
    print(
        f"RunWindow (window={window.size}, 80 actions seen): {grown / count:,.0f} bytes per run in all "
        f"(tracemalloc), of which ring buffers {arrays} bytes"
    )


def by_kind(path: Path) -> None:
    """Print where a worker's time goes on real traffic: decoding, and the engine per event kind."""
    events = list(read_events(path, skip_bad=True))
    wire = [codec.encode(e) for e in events]
    started = time.perf_counter()
    for data in wire:
        codec.decode(StepEvent, data)
    print(f"decode + validate (msgpack -> StepEvent): {(time.perf_counter() - started) / len(wire) * 1e6:.1f} µs/event")
    engine = Engine()
    spent: dict[str, float] = {}
    seen: Counter[str] = Counter()
    previous: float | None = None
    for event in events:
        if previous is not None and event.ts < previous:
            engine.evict_idle(float("inf"), 0.0)  # runs recorded one after another (see runvisor.testing.replay)
        previous = event.ts
        started = time.perf_counter()
        engine.observe(event, event.ts)
        spent[event.kind] = spent.get(event.kind, 0.0) + time.perf_counter() - started
        seen[event.kind] += 1
    for kind, n in seen.most_common():
        print(f"engine, {kind:12} {n:7,} events {spent[kind] / n * 1e6:7.1f} µs/event")
    print(f"engine, all          {len(events):7,} events {sum(spent.values()) / len(events) * 1e6:7.1f} µs/event")


def main(argv: list[str] | None = None) -> int:
    """Run the replay and write the decisions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=Path, default=DEFAULT_STEPS)
    parser.add_argument("--out", type=Path, default=Path("verdicts.jsonl"))
    parser.add_argument("--warnings", action="store_true", help="also write warn verdicts")
    parser.add_argument("--perf", action="store_true", help="measure the engine on synthetic runs instead")
    parser.add_argument("--by-kind", action="store_true", help="time decoding and the engine per event kind")
    args = parser.parse_args(argv)
    if args.perf:
        perf()
        return 0
    if args.by_kind:
        by_kind(args.steps)
        return 0
    engine = Engine()
    events = 0

    def counted() -> Iterator[StepEvent]:
        nonlocal events
        for event in read_events(args.steps, skip_bad=True):
            events += 1
            yield event

    started = time.perf_counter()
    written = 0
    with args.out.open("w", encoding="utf-8") as out:
        for verdict in replay(counted(), engine):
            if verdict.severity == "warn" and not args.warnings:
                continue
            out.write(json.dumps(decision(verdict)) + "\n")
            written += 1
    elapsed = time.perf_counter() - started
    print(f"{events} events in {elapsed:.2f}s ({events / elapsed:,.0f} events/s incl. decoding); {written} decisions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
