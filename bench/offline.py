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
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actors.supervisor import Engine
from protocols.codec import DecodeError, from_obj
from protocols.messages import StepEvent, Verdict

DEFAULT_STEPS = Path("../shared/traces/dev.steps.jsonl")


def read_events(path: Path) -> Iterator[StepEvent]:
    """Yield the step events of a JSON Lines file, skipping (and reporting) undecodable lines."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield from_obj(StepEvent, json.loads(line))
            except (DecodeError, json.JSONDecodeError) as exc:
                print(f"{path}:{number}: skipped: {exc}", file=sys.stderr)


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


def replay(events: Iterator[StepEvent], engine: Engine) -> Iterator[Verdict]:
    """Feed events to the engine, ticking its stall timers on the event clock."""
    last_run: str | None = None
    for event in events:
        if event.run_id != last_run and last_run is not None:
            # Runs are written one after another: the previous one is over for this replay.
            engine.evict_idle(float("inf"), 0.0)
        last_run = event.run_id
        yield from engine.tick(event.ts)
        yield from engine.observe(event, event.ts)


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


def main(argv: list[str] | None = None) -> int:
    """Run the replay and write the decisions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=Path, default=DEFAULT_STEPS)
    parser.add_argument("--out", type=Path, default=Path("verdicts.jsonl"))
    parser.add_argument("--warnings", action="store_true", help="also write warn verdicts")
    parser.add_argument("--perf", action="store_true", help="measure the engine on synthetic runs instead")
    args = parser.parse_args(argv)
    if args.perf:
        perf()
        return 0
    engine = Engine()
    events = 0

    def counted() -> Iterator[StepEvent]:
        nonlocal events
        for event in read_events(args.steps):
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
