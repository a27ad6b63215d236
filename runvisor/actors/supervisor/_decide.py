"""`Decisions`: how a supervisor worker sends what its engine decides (DESIGN §3, §5).

Verdicts go out as ``Verdict`` JSON on ``rv.event.<run>`` (for people and dashboards), and a
confirmed pause or stop as a ``Command`` stored in ``RV_CONTROL`` with a ``Nats-Msg-Id``, so a
takeover that replays the same events never stores a command twice.

Some decisions the worker may be making without having seen what was already done about the
run: one on replayed history (a previous owner may have made it, an operator may have
answered it since) and one from the stall clock (the run may be known only from a replay).
Those are checked against the stream first, so that nothing an agent or operator already
acted on is sent again. Every check and every store tolerates JetStream being unavailable:
a warning is then sent anyway, and a command is retried for as long as the run is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from runvisor.actors.retry.backoff import Backoff
from runvisor.actors.streams.control import last_stored_command
from runvisor.actors.supervisor.detection.engine import Engine
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import Command, RunState, Verdict

log = logging.getLogger(__name__)

NATS_MSG_ID = "Nats-Msg-Id"
#: Warnings on history whose check (a read of ``rv_runs``) may be in flight at once.
MAX_CHECKING = 32


class Decisions:
    """Publishes one worker's verdicts and stores its commands, once each."""

    def __init__(
        self, nc: Client, js: JetStreamContext, engine: Engine, owns: Callable[[str], bool],
        stored_state: Callable[[str], Awaitable[RunState | None]], stopping: asyncio.Event,
        clock: Callable[[], float], worker_id: str, on_published: Callable[[Verdict], None] | None = None,
    ) -> None:  # fmt: skip
        """Args:
        nc: the worker's main connection (verdicts on ``rv.event``).
        js: its JetStream context (commands in ``RV_CONTROL``).
        engine: takes a stored command that makes a decision moot.
        owns: whether a run's partition lease is this worker's and fresh.
        stored_state: reads a run's state from ``rv_runs``.
        stopping: set when the worker stops (a command being retried is left to the next owner).
        clock: wall clock (seconds).
        worker_id: the issuer of commands, and for logs.
        on_published: called with each verdict once published (metrics count them).
        """
        self._nc = nc
        self._js = js
        self._engine = engine
        self._owns = owns
        self._stored_state = stored_state
        self._stopping = stopping
        self._clock = clock
        self.worker_id = worker_id
        self._on_published = on_published
        self.commands_sent = 0  # a count, not a list: a worker runs for months
        self._checking: dict[str, asyncio.Task[None]] = {}  # warnings on history being checked, by run
        self._check_slots = asyncio.Semaphore(MAX_CHECKING)
        self._store_backoff = Backoff(base_s=0.2, multiplier=2.0, cap_s=5.0)

    async def decide(self, verdict: Verdict, history_at: float | None = None, *, from_clock: bool = False) -> None:
        """Publish a verdict; a confirmed one also commands the run, once.

        For a decision on replayed history (``history_at``: when its event was stored, in epoch
        seconds) or from the stall clock (``from_clock``), the run's last stored command is read
        first. A kill or stop there makes the decision moot; so does, for history, any command
        stored after the event (the previous owner's decision, an operator's word since), and for
        a stall, a pause (the run is already held). The stored command is then applied to the
        window and nothing is sent. The stream would de-duplicate a repeated command, but the
        agent's subscription would still receive it, and a pause stored after a kill would hide
        the kill from a later resume. Live decisions skip the read: it would cost a round trip
        while the partition waits.

        A warning on history is published unless the previous owner had judged its step (see
        :meth:`_warn_unless_judged`); that check runs beside the partition, not in its way.
        """
        run_id = verdict.run_id
        await self._warning_sent(run_id)  # one still being checked goes out first: a run's verdicts keep their order
        if verdict.severity == "warn":
            if history_at is None:
                await self._publish(verdict)
            else:
                # Whether the previous owner published it is a round trip; the partition goes on
                # meanwhile, up to a bound (a backlog of runs must not crowd out lease renewals).
                await self._check_slots.acquire()
                self._checking[run_id] = asyncio.create_task(self._warn_unless_judged(verdict))
            return
        if (history_at is not None or from_clock) and await self._overtaken(run_id, history_at):
            return
        await self._publish(verdict)
        if not self._owns(run_id):
            return
        command = Command(
            cmd=verdict.severity, reason=verdict.reason, issuer=f"supervisor:{self.worker_id}",
            evidence=verdict.evidence, note=verdict.hint or None, at_seq=verdict.at_seq, ts=verdict.ts,
        )  # fmt: skip
        # One stop per run ever; a pause once per reason and onset (DESIGN §3: idempotent decisions).
        msg_id = f"{run_id}:stop" if command.cmd == "stop" else f"{run_id}:pause:{verdict.reason}:{verdict.at_seq}"
        if await self._store(run_id, command, msg_id):
            self.commands_sent += 1
            extra = {"run_id": run_id, "reason": verdict.reason, "worker": self.worker_id}
            log.warning("%s: %s", command.cmd, verdict.evidence.summary, extra=extra)

    async def command_for(self, run_id: str, command: Command, holder: str) -> bool:
        """Store ``command`` for a run that another worker may judge, once, while this worker owns
        ``holder``: a sub-agent held or ended with its parent, by the parent's supervisor (see
        ``_family``). The sub-agent's own supervisor applies it as it arrives on ``rv.ctl``.

        Returns:
            True when it was stored now, False when it already was (or was left to the next owner).
        """
        msg_id = f"{run_id}:pause:{command.reason}:{command.at_seq}" if command.cmd == "pause" else f"{run_id}:stop"
        stored = await self._store(run_id, command, msg_id, holder=holder)
        if stored:
            self.commands_sent += 1
            said = command.evidence.summary if command.evidence else command.note
            log.warning("%s: %s", command.cmd, said, extra={"run_id": run_id, "worker": self.worker_id})
        return stored

    async def drain(self) -> None:
        """Wait for the warnings still being checked (a graceful stop)."""
        await asyncio.gather(*self._checking.values(), return_exceptions=True)

    def cancel(self) -> None:
        """Drop the warnings still being checked (the worker is failing)."""
        for task in self._checking.values():
            task.cancel()

    async def _store(self, run_id: str, command: Command, msg_id: str, holder: str | None = None) -> bool:
        """Publish a command to ``RV_CONTROL`` until it is stored; True unless it was already there.

        A command that cannot be stored (JetStream unavailable, the stream being restored) is
        retried with backoff while the run (or ``holder``, the run it is sent for) is this worker's:
        the engine has already counted the decision as made, so giving up would let a loop run on.
        When the lease goes, or the worker stops, it is left to the next owner, whose replay reaches
        the same decision.
        """
        extra = {"run_id": run_id, "worker": self.worker_id}
        attempt = 0
        while True:
            try:
                ack = await self._js.publish(
                    subjects.ctl(run_id), codec.encode(command), headers={NATS_MSG_ID: msg_id, **codec.MSGPACK_HEADERS}
                )
            except Exception as exc:
                why = str(exc) or type(exc).__name__
                if await self._stored_already(run_id, command):
                    return True
                if self._stopping.is_set() or not self._owns(holder or run_id):
                    log.warning("%s not stored (%s); left to the next owner", command.cmd, why, extra=extra)
                    return False
                delay = self._store_backoff.delay(attempt)
                attempt += 1
                log.warning("%s not stored (%s); retrying in %.1fs", command.cmd, why, delay, extra=extra)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            return not ack.duplicate

    async def _stored_already(self, run_id: str, command: Command) -> bool:
        """Whether a publish that raised stored ``command`` all the same: only its acknowledgement
        was lost (a stream leader failing over, a slow server). Publishing it again would be kept
        once by the stream (``Nats-Msg-Id``) but delivered twice to the agent and to everyone
        watching ``rv.ctl``; so the stream is asked first."""
        with contextlib.suppress(Exception):  # unreadable now: publish again, as before
            stored = await last_stored_command(self._js, run_id)
            if stored is not None and _same(stored.command, command):
                log.info("%s stored, its acknowledgement lost", command.cmd, extra={"run_id": run_id})
                return True
        return False

    async def _publish(self, verdict: Verdict) -> None:
        """Publish a verdict on ``rv.event.<run>`` (operators, dashboards)."""
        await self._nc.publish(
            subjects.event(verdict.run_id), codec.encode_json(verdict), headers={codec.CONTENT_TYPE: codec.JSON}
        )
        if self._on_published is not None:
            self._on_published(verdict)
        if verdict.severity == "warn":
            extra = {"run_id": verdict.run_id, "worker": self.worker_id}
            log.info("warning: %s", verdict.evidence.summary, extra=extra)

    async def _warning_sent(self, run_id: str) -> None:
        task = self._checking.pop(run_id, None)
        if task is not None:
            await task

    async def _warn_unless_judged(self, verdict: Verdict) -> None:
        """Publish a warning made on history unless the previous owner judged its step (and so published it).

        It did if the state it left in ``rv_runs`` is at that step or later: a partition catching
        up is not written (see ``SupervisorWorker._flush``), so that state is still the previous
        owner's. A warning it had no time to write down (a crash within ``flush_s``), or one that
        cannot be checked, is published again: warnings are sent at least once.
        """
        run_id = verdict.run_id
        try:
            stored = await self._stored_state(run_id)
            judged = stored is not None and stored.last_seq >= verdict.at_seq
        except Exception as exc:
            log.warning("cannot read a stored state: %s", exc, extra={"run_id": run_id, "worker": self.worker_id})
            judged = False
        try:
            if not judged:
                await self._publish(verdict)
        except Exception as exc:  # never raised into the run's next decision, which waits on this
            log.warning("warning not published: %s", exc, extra={"run_id": run_id, "worker": self.worker_id})
        finally:
            self._check_slots.release()
            if self._checking.get(run_id) is asyncio.current_task():
                del self._checking[run_id]

    async def _overtaken(self, run_id: str, history_at: float | None) -> bool:
        """Whether the run's last stored command makes a decision moot (see :meth:`decide`)."""
        stored = await last_stored_command(self._js, run_id)
        if stored is None:
            return False
        cmd, stored_at = stored.command.cmd, stored.stored_at
        if history_at is None:
            moot = cmd in ("kill", "stop", "pause")  # from the stall clock
        else:
            moot = cmd in ("kill", "stop") or (stored_at is not None and stored_at.timestamp() >= history_at)
        if not moot:
            return False
        self._engine.apply_command(run_id, stored.command, self._clock())
        log.info(
            "decision not sent: %s by %s is the run's last command", cmd, stored.command.issuer,
            extra={"run_id": run_id, "worker": self.worker_id},
        )  # fmt: skip
        return True


def _same(a: Command, b: Command) -> bool:
    """The same decision (floats compared as stored: msgpack keeps them exact)."""
    return (a.cmd, a.reason, a.issuer, a.at_seq, a.ts) == (b.cmd, b.reason, b.issuer, b.at_seq, b.ts)


__all__ = ["MAX_CHECKING", "NATS_MSG_ID", "Decisions"]
