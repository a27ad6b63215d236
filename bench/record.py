"""Record live step traffic to a file, for replay and for the offline bench (DESIGN §10).

::

    python -m bench.record --out live.jsonl [--subject 'rv.step.>'] [--duration 60] [--max-events 100000]

Connects as ``admin`` (``NATS_URL`` and its credentials, or the embedded server of
``runvisor up``), core-subscribes to the step subject and writes every decoded
``StepEvent`` in arrival order until ``--duration`` passes, ``--max-events`` are written,
or SIGINT/SIGTERM. Messages that are not step events are counted, logged and skipped.
A core subscription sees what agents publish now, not the stream's history (a stream
stores steps as ``rv.step.<partition>.<run>``, but subscribers see ``rv.step.<run>``);
it adds no consumer state on the server.

Prints one summary line at the end: events, runs, skipped, file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg

from bench.traffic import TrafficError, TrafficWriter, traffic_format
from runvisor.actors.connection import connect
from runvisor.actors.endpoint import Endpoint
from runvisor.actors.runtime import run_main
from runvisor.errors import EndpointError, ServerError
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent

log = logging.getLogger("bench.record")

DEFAULT_SUBJECT = subjects.STEP_ALL.replace("*", ">")  # also catches any deeper step subject
#: Events between flushes: a crash (SIGKILL) loses at most this many.
FLUSH_EVERY = 1000
#: Undecodable messages reported one by one; beyond that only counted.
_LOGGED_SKIPS = 10


@dataclass
class Recording:
    """What was written, for the summary line."""

    out: Path
    events: int = 0
    skipped: int = 0
    dropped: int = 0
    runs: set[str] = field(default_factory=set)

    def summary(self) -> str:
        lost = f", dropped {self.dropped} (too slow: the client's buffer overflowed)" if self.dropped else ""
        return f"recorded {self.events} events of {len(self.runs)} runs, skipped {self.skipped}{lost}, to {self.out}"

    async def on_error(self, exc: Exception) -> None:
        """The connection's error callback: slow-consumer drops are counted, the rest logged."""
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.dropped += 1
            return
        log.error("NATS error: %s", exc)


class Recorder:
    """Writes each step event it is given; sets ``done`` once ``max_events`` are written."""

    def __init__(self, writer: TrafficWriter, recording: Recording, max_events: int | None) -> None:
        self.writer = writer
        self.recording = recording
        self.max_events = max_events
        self.done = asyncio.Event()
        self.failure: OSError | None = None

    async def on_message(self, msg: Msg) -> None:
        if self.done.is_set():
            return  # delivered after the last wanted event
        try:
            event = codec.decode(StepEvent, msg.data)
        except codec.DecodeError as exc:
            self.recording.skipped += 1
            if self.recording.skipped <= _LOGGED_SKIPS:
                log.warning("skipped a message on %s: %s", msg.subject, exc)
            return
        try:
            self.writer.write(event)
            if (self.recording.events + 1) % FLUSH_EVERY == 0:
                self.writer.flush()
        except OSError as exc:  # disk full, file gone: stop instead of losing events silently
            self.failure = exc
            self.done.set()
            return
        self.recording.events += 1
        self.recording.runs.add(event.run_id)
        if self.max_events is not None and self.recording.events >= self.max_events:
            self.done.set()


async def record(
    endpoint: Endpoint,
    out: Path,
    stop: asyncio.Event,
    *,
    subject: str = DEFAULT_SUBJECT,
    duration: float | None = None,
    max_events: int | None = None,
) -> Recording:
    """Record ``subject`` to ``out`` until ``stop`` is set, ``duration`` passes or ``max_events`` are written.

    Raises:
        ServerError: the server cannot be reached.
        OSError: the file cannot be written.
    """
    recording = Recording(out)
    # Connect first, so an unreachable server leaves an existing file alone.
    nc = await connect(endpoint, "bench-record", error_cb=recording.on_error)
    try:
        with TrafficWriter(out) as writer:
            recorder = Recorder(writer, recording, max_events)
            sub = await nc.subscribe(subject, cb=recorder.on_message, pending_msgs_limit=1_000_000)
            await nc.flush()  # the server has the subscription: nothing published from now on is missed
            print(f"bench.record: recording {subject} to {out}", file=sys.stderr, flush=True)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(recorder.done.wait())]
            try:
                await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            # Drain, not unsubscribe: what the server sent before we stopped is still written.
            await sub.drain()  # type: ignore[no-untyped-call]
    finally:
        await nc.close()
    if recorder.failure is not None:
        raise recorder.failure
    return recording


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.record",
        description="Record live step events (rv.step.*) to a JSON Lines or msgpack file, until a limit or Ctrl-C.",
        epilog="Connects as the admin role: NATS_URL with RV_ADMIN_PASSWORD or NATS_USER/NATS_PASSWORD, or the "
        "embedded server started by `runvisor up` (RUNVISOR_HOME).",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write: .jsonl, .jsonl.gz, .msgpack[.gz]")
    parser.add_argument("--subject", default=DEFAULT_SUBJECT, help=f"subject to record (default: {DEFAULT_SUBJECT})")
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until a signal)")
    parser.add_argument("--max-events", type=int, help="stop after writing this many events")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, record until done, print the summary line."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        traffic_format(args.out)
        if args.duration is not None and args.duration <= 0:
            raise ValueError("--duration must be > 0")
        if args.max_events is not None and args.max_events < 1:
            raise ValueError("--max-events must be >= 1")
    except (ValueError, TrafficError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run(stop: asyncio.Event) -> int:
        try:
            endpoint = Endpoint.discover("admin")
            recording = await record(
                endpoint, args.out, stop, subject=args.subject, duration=args.duration, max_events=args.max_events
            )
        except (EndpointError, ServerError, OSError) as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 1
        print(recording.summary(), flush=True)
        return 0

    return run_main(run)


__all__ = ["DEFAULT_SUBJECT", "Recorder", "Recording", "main", "record"]


if __name__ == "__main__":
    sys.exit(main())
