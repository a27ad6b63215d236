"""The one place that turns wire models into bytes and back.

msgpack is the default encoding (header ``Content-Type: application/msgpack``). Commands
are also accepted as JSON and as plain words, because operators type them with
``nats pub rv.ctl.RUN pause``. Every failure raises :class:`DecodeError`, whose message
says what was wrong and where (model, field, expected, got).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from runvisor.errors import DecodeError
from runvisor.protocols.messages import Command, CommandName
from runvisor.protocols.reasons import StopReason

M = TypeVar("M", bound=BaseModel)

CONTENT_TYPE = "Content-Type"
MSGPACK = "application/msgpack"
JSON = "application/json"
TEXT = "text/plain"
MSGPACK_HEADERS: dict[str, str] = {CONTENT_TYPE: MSGPACK}

_COMMANDS: tuple[CommandName, ...] = ("pause", "resume", "kill", "stop")
_MAX_SHOWN = 60


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The plain-data form of a model, optional fields left out when unknown (DESIGN §10)."""
    return model.model_dump(mode="json", exclude_none=True)


def encode(model: BaseModel) -> bytes:
    """Encode a model as msgpack."""
    packed: bytes = msgpack.packb(to_wire(model), use_bin_type=True)
    return packed


def encode_json(model: BaseModel) -> bytes:
    """Encode a model as compact JSON (status replies, verdicts, recorded traffic)."""
    return json_bytes(to_wire(model))


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON of plain data (e.g. an error report on ``rv.event``)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def from_obj(cls: type[M], obj: Any) -> M:
    """Validate already-parsed data (a dict from msgpack or JSON) as ``cls``."""
    if not isinstance(obj, dict):
        raise DecodeError(f"{cls.__name__}: expected a map of fields, got {_shown(obj)}")
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise DecodeError(_describe(cls.__name__, exc)) from None
    except RecursionError:
        raise DecodeError(f"{cls.__name__}: nested too deeply") from None


def decode(cls: type[M], data: bytes) -> M:
    """Decode msgpack bytes as ``cls``."""
    return from_obj(cls, _unpack(cls.__name__, data))


def decode_json(cls: type[M], data: bytes | str) -> M:
    """Decode JSON text as ``cls``."""
    return from_obj(cls, json_object(data, cls.__name__))


def json_object(data: bytes | str, name: str = "message") -> dict[str, Any]:
    """Parse JSON text that must be an object (``name`` is for the error message)."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{name}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DecodeError(f"{name}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{name}: expected a map of fields, got {_shown(obj)}")
    return obj


def decode_stored(cls: type[M], data: bytes) -> M:
    """Decode a stored value written as JSON (``rv_runs``, for people and the ``nats`` CLI) or, by an
    older writer, as msgpack: a msgpack map never starts with ``{``."""
    return decode_json(cls, data) if data[:1] == b"{" else decode(cls, data)


def decode_command(data: bytes, content_type: str | None = None) -> Command:
    """Decode a control command sent as msgpack, JSON or plain words.

    Without a content type the form is recognised from the first byte: ``{`` is JSON, a
    msgpack map marker is msgpack, anything else is read as words
    (``pause``, ``resume``, ``kill runaway costs``, ``stop LOOP_DETECTED spinning``).
    """
    if content_type == MSGPACK:
        return decode(Command, data)
    if content_type == JSON:
        return decode_json(Command, data)
    if data and _is_msgpack_map(data[0]):
        return decode(Command, data)  # never strip msgpack: trailing bytes may look like whitespace
    body = data.strip()
    if not body:
        raise DecodeError(f"Command: empty message; expected one of {', '.join(_COMMANDS)}")
    if body[:1] == b"{":
        return decode_json(Command, body)
    return _decode_words(body)


_REASONED = ("stop", "pause")


def _decode_words(body: bytes) -> Command:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("Command: not msgpack, JSON or UTF-8 words") from None
    word, _, rest = text.partition(" ")
    cmd = word.lower()
    if cmd not in _COMMANDS:
        raise DecodeError(f"Command: unknown command {_shown(word)}; expected one of {', '.join(_COMMANDS)}")
    rest = rest.strip()
    first, _, after = rest.partition(" ")
    fields: dict[str, Any] = {"cmd": cmd}
    # Only a stop or a pause names its reason; after `kill` or `resume` every word is the note
    # (`kill timeout too long` is a kill noted "timeout too long", not one for TIMEOUT).
    if cmd in _REASONED and first.upper() in StopReason.__members__:
        fields["reason"] = first.upper()
        rest = after.strip()
    if rest:
        fields["note"] = rest
    return from_obj(Command, fields)


def _is_msgpack_map(first: int) -> bool:
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def _unpack(name: str, data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise DecodeError(f"{name}: not valid msgpack ({exc})") from None


def _describe(name: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        expected = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            problems.append(expected)
            continue
        where = ".".join(str(part) for part in err["loc"])
        said = err["type"] == "missing" or ", got " in expected
        got = "" if said else f", got {_shown(err.get('input'))}"
        problems.append(f"field {where!r}: {expected}{got}")
    return f"{name}: " + "; ".join(problems)


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


__all__ = [
    "CONTENT_TYPE",
    "JSON",
    "MSGPACK",
    "MSGPACK_HEADERS",
    "TEXT",
    "DecodeError",
    "decode",
    "decode_command",
    "decode_json",
    "decode_stored",
    "encode",
    "encode_json",
    "from_obj",
    "json_bytes",
    "json_object",
    "to_wire",
]
