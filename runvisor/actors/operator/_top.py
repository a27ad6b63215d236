"""``runvisor top``: the most recently active runs, redrawn until ``q`` or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator

from nats.aio.client import Client
from nats.errors import Error as NatsError

from runvisor.actors.operator._render import TOP_COLUMNS, runs_table
from runvisor.actors.server import is_not_provisioned
from runvisor.actors.streams.runs import list_states
from runvisor.protocols.reasons import RunStatus

#: Clear the screen and home the cursor, as top does.
CLEAR = "\x1b[2J\x1b[H"
QUIT_KEYS = frozenset("qQ")


async def top(nc: Client, stop: asyncio.Event, *, interval: float, limit: int) -> int:
    """Redraw the table every ``interval`` seconds until ``stop`` is set or ``q`` is typed.

    On a terminal the screen is cleared before each frame and every line fits its width; elsewhere
    (a pipe, a log) the frames follow one another, 80 columns wide.
    """
    interactive = sys.stdout.isatty()
    with _quit_on_key(stop):
        while not stop.is_set():
            width = shutil.get_terminal_size().columns if interactive else 80
            now = time.strftime("%H:%M:%S")
            try:
                states = await list_states(nc)
            except (NatsError, TimeoutError) as exc:
                if is_not_provisioned(exc):
                    raise
                # The server restarting, or a moment unreachable: say so and keep watching.
                frame = f"runvisor top: cannot read rv_runs ({exc}), {now}; trying again"[:width]
            else:
                running = sum(s.status == RunStatus.RUNNING for s in states)
                header = f"runvisor top: {len(states)} runs, {running} running, {now}  (q quits)"
                frame = f"{header[:width]}\n{runs_table(states[:limit], TOP_COLUMNS, width)}"
            print(f"{CLEAR if interactive else ''}{frame}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    return 0


@contextlib.contextmanager
def _quit_on_key(stop: asyncio.Event) -> Iterator[None]:
    """While inside, a ``q`` typed on the terminal sets ``stop``; keys are read one at a time
    (cbreak: Ctrl-C still interrupts) and the terminal is restored on the way out."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        if set(os.read(fd, 32).decode(errors="ignore")) & QUIT_KEYS:
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


__all__ = ["top"]
