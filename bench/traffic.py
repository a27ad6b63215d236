"""Reading and writing recorded agent traffic (DESIGN §10).

Two formats, chosen by the file's suffix:

- JSON Lines (``.jsonl``, ``.ndjson``, gzipped as ``.jsonl.gz``): one ``StepEvent`` per line;
- a msgpack stream (``.msgpack``, ``.msgpack.gz``): ``StepEvent`` maps one after another,
  the bytes the agents publish.

Both are streamed: a file of any size is read one record at a time. Records are validated
with :func:`runvisor.protocols.codec.from_obj` and written with :mod:`runvisor.protocols.codec`, so the files
follow the wire contract exactly (optional fields left out, unknown fields ignored).

::

    with TrafficWriter("runs.jsonl") as out:
        out.write(event)
    for event in read_events("runs.jsonl"):
        ...
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, cast

import msgpack

from runvisor.protocols import codec
from runvisor.protocols.messages import StepEvent

log = logging.getLogger(__name__)

Format = Literal["jsonl", "msgpack"]
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".msgpack": "msgpack"}
#: Skipped records reported one by one in the log; beyond that only counted.
_LOGGED_SKIPS = 10


class TrafficError(ValueError):
    """A file that is not recorded traffic; the message names the file and the line (or record)."""


def traffic_format(path: str | Path) -> tuple[Format, bool]:
    """The format of ``path`` from its suffix, and whether it is gzipped.

    Raises:
        TrafficError: the suffix is not one of the supported ones.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes.pop()
    found = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        supported = ", ".join(f"{s}[.gz]" for s in _SUFFIXES)
        raise TrafficError(f"{path}: unknown traffic format; name the file with one of {supported}")
    return found, gzipped


def _open(path: Path, mode: Literal["rb", "wb", "ab"], gzipped: bool) -> IO[bytes]:
    if gzipped:
        # zlib's default level: gzip's 9 made writing twice as slow for a few percent of size.
        return cast(IO[bytes], gzip.open(path, mode, compresslevel=6))
    return path.open(mode)


class TrafficReader:
    """The step events of one file, validated one record at a time.

    Args:
        path: the file; its format comes from its suffix.
        skip_bad: count and skip records that are not valid step events instead of raising.

    Iterate it once; ``skipped`` then holds how many records were skipped.
    """

    def __init__(self, path: str | Path, *, skip_bad: bool = False) -> None:
        self.path = Path(path)
        self.format, self.gzipped = traffic_format(self.path)
        self.skip_bad = skip_bad
        self.skipped = 0

    def __iter__(self) -> Iterator[StepEvent]:
        try:
            fh = _open(self.path, "rb", self.gzipped)
        except OSError as exc:
            raise TrafficError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        with fh:
            records = self._jsonl(fh) if self.format == "jsonl" else self._msgpack(fh)
            for number, obj in records:
                try:
                    yield codec.from_obj(StepEvent, obj)
                except codec.DecodeError as exc:
                    self._bad(number, str(exc))

    def _bad(self, number: int, problem: str) -> None:
        where = f"{self.path}:{number}" if self.format == "jsonl" else f"{self.path}: record {number}"
        if not self.skip_bad:
            raise TrafficError(f"{where}: {problem}")
        self.skipped += 1
        if self.skipped <= _LOGGED_SKIPS:
            log.warning("%s: skipped: %s", where, problem)

    def _jsonl(self, fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
        # Bytes, not text: only b"\n" ends a record (JSON may hold U+2028), and a bad UTF-8
        # sequence spoils one line instead of the rest of the file.
        number = 0
        try:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    self._bad(number, f"not valid JSON ({exc})")
                    continue
                yield number, obj
        except (OSError, EOFError) as exc:  # a corrupt or cut gzip stream
            raise TrafficError(f"{self.path}:{number + 1}: cannot read: {exc}") from None

    def _msgpack(self, fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
        counted = _CountingReader(fh)
        unpacker = msgpack.Unpacker(counted, raw=False, strict_map_key=False)
        number = 0
        while True:
            number += 1
            try:
                obj = next(unpacker)
            except StopIteration:
                break
            except (ValueError, msgpack.UnpackException, OSError, EOFError) as exc:
                # A broken byte stream cannot be resynchronised, so this is fatal even with skip_bad.
                raise TrafficError(f"{self.path}: record {number}: not valid msgpack ({exc!r})") from None
            yield number, obj
        if counted.total > unpacker.tell():
            # The Unpacker silently drops an incomplete last object (a writer killed mid-record).
            self._bad(number, f"truncated: {counted.total - unpacker.tell()} bytes after the last complete record")


class _CountingReader:
    """A file wrapper that counts the bytes handed to the msgpack Unpacker."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.total += len(data)
        return data


def read_events(path: str | Path, *, skip_bad: bool = False) -> Iterator[StepEvent]:
    """Yield the step events of a recorded-traffic file, in file order.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.msgpack`` or ``.msgpack.gz`` file.
        skip_bad: skip (and log) invalid records instead of raising; use :class:`TrafficReader`
            to learn how many were skipped.

    Raises:
        TrafficError: an invalid record (naming ``file:line``), or an unreadable file.
    """
    return iter(TrafficReader(path, skip_bad=skip_bad))


class TrafficWriter:
    """Writes step events to a file, in the format its suffix names; a context manager.

    Args:
        path: the file to create (or to extend with ``append=True``).
        append: add to an existing file instead of replacing it.
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.format, gzipped = traffic_format(self.path)
        self.count = 0
        self._fh = _open(self.path, "ab" if append else "wb", gzipped)

    def write(self, event: StepEvent) -> None:
        """Append one event (buffered: call :meth:`flush` or close to be sure it is on disk)."""
        if self.format == "jsonl":
            self._fh.write(codec.encode_json(event) + b"\n")
        else:
            self._fh.write(codec.encode(event))
        self.count += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TrafficWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["Format", "TrafficError", "TrafficReader", "TrafficWriter", "read_events", "traffic_format"]
