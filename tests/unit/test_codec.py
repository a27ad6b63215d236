"""The wire contract: golden fixtures, round-trips, and every rejection names its problem."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from runvisor.errors import DecodeError
from runvisor.protocols import codec
from runvisor.protocols.messages import (
    MAX_ARGS_CHARS,
    MAX_COST_PER_EVENT,
    MAX_OBSERVATION_CHARS,
    MAX_TOKENS_PER_EVENT,
    Checkpoint,
    Command,
    Counters,
    Evidence,
    Intent,
    Policy,
    RunState,
    StepEvent,
    ToolRequest,
    ToolResult,
    Verdict,
)
from runvisor.protocols.reasons import RunStatus, StopReason

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

_EVIDENCE = Evidence(summary="seq 41-52: `find_file JsonParser` x6, each 'No matches found'", seqs=(41, 44, 47))
_VERDICT = Verdict(
    run_id="run-1", reason=StopReason.LOOP_DETECTED, severity="stop", evidence=_EVIDENCE,
    detector="exact_repeat", at_seq=52, ts=1700000052.0, hint="inspect the repeated steps",
)  # fmt: skip
_INTENT = Intent(
    tool="search", call_id="c-7", args_digest="9f2c", idempotency_key="run-1:c-7", attempt=2, opened_at=1700000003.5
)
_LOCAL_INTENT = Intent(
    tool="grep", call_id="c-8", args_digest="41d0", idempotency_key="run-1:c-8", opened_at=1700000003.6,
    in_process=True,
)  # fmt: skip

#: One example of every wire model; their msgpack bytes are committed under tests/golden/.
EXAMPLES: dict[str, BaseModel] = {
    "step_event": StepEvent(
        run_id="run-1",
        seq=3,
        ts=1700000003.0,
        kind="tool_result",
        agent="mini-swe-agent",
        task="fix the parser",
        tool="find_file",
        call_id="c-1",
        args={"name": "JsonParser"},
        observation="No matches found",
        ok=True,
        tokens_in=1662,
        tokens_out=106,
        cost_usd=0.004596,
        progress=0.25,
    ),
    "step_event_start": StepEvent(
        run_id="run-1",
        seq=0,
        ts=1700000000.0,
        kind="start",
        task="fix the parser",
        policy=Policy(max_steps=200, max_cost_usd=2.5),
    ),
    "command_pause": Command(cmd="pause", issuer="operator", ts=1700000010.0),
    "command_stop": Command(
        cmd="stop", reason=StopReason.LOOP_DETECTED, issuer="supervisor:w1", evidence=_EVIDENCE, ts=1700000052.5
    ),
    "verdict": _VERDICT,
    "run_state": RunState(
        run_id="run-1",
        status=RunStatus.STOPPED,
        stop_reason=StopReason.LOOP_DETECTED,
        task="fix the parser",
        last_seq=52,
        last_kind="tool_result",
        current_tool="find_file",
        counters=Counters(steps=52, tokens=40000, cost_usd=0.31, tool_calls=17, retries=1, errors=6),
        started_at=1700000000.0,
        updated_at=1700000052.5,
        last_verdict=_VERDICT,
    ),
    "intent": _INTENT,
    "checkpoint": Checkpoint(
        run_id="run-1",
        seq=9,
        goal="fix the parser",
        state={"step": 3, "notes": ["a", "b"]},
        intent=_LOCAL_INTENT,
        intents=(_INTENT, _LOCAL_INTENT),
        ts=1700000009.0,
    ),
    "tool_request": ToolRequest(
        run_id="run-1",
        call_id="c-7",
        tool="search",
        args={"q": "JsonParser"},
        idempotency_key="run-1:c-7",
        seq=8,
        timeout_s=12.5,
    ),
    "tool_result": ToolResult(
        call_id="c-7",
        ok=False,
        error="circuit open",
        error_type="CircuitOpen",
        attempts=0,
        stop_reason=StopReason.TOOL_FAILURE,
        retry_after_s=4.5,
    ),
    "policy": Policy(max_tokens=100000, loop_action="pause"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_golden_fixture_decodes_to_the_same_message(name: str) -> None:
    model = EXAMPLES[name]
    path = GOLDEN / f"{name}.msgpack"
    if os.environ.get("RUNVISOR_REGEN_GOLDEN"):
        path.write_bytes(codec.encode(model))
    # Given the bytes committed when the wire format was fixed, when decoded, then nothing changed.
    assert codec.decode(type(model), path.read_bytes()) == model
    assert codec.encode(model) == path.read_bytes(), f"wire encoding of {name} changed"


def test_a_checkpoint_of_one_intent_written_before_parallel_calls_still_loads() -> None:
    # Given the bytes committed when a checkpoint held one intent (no `intents`, no `in_process`)
    old = codec.decode(Checkpoint, (GOLDEN / "checkpoint_v1.msgpack").read_bytes())
    # Then its one open intent is what was in flight, and an intent of then reads as an executor call
    assert old.intent == _INTENT
    assert old.open_intents == (_INTENT,)
    assert codec.decode(Intent, (GOLDEN / "intent_v1.msgpack").read_bytes()) == _INTENT
    assert not _INTENT.in_process


def test_open_intents_are_the_open_ones_of_either_format() -> None:
    parallel = EXAMPLES["checkpoint"]
    assert isinstance(parallel, Checkpoint)
    assert parallel.open_intents == (_INTENT, _LOCAL_INTENT)
    done = _INTENT.model_copy(update={"state": "done"})
    assert Checkpoint(run_id="r", seq=1, intent=done).open_intents == ()
    assert Checkpoint(run_id="r", seq=1).open_intents == ()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_json_round_trip(name: str) -> None:
    model = EXAMPLES[name]
    assert codec.decode_json(type(model), codec.encode_json(model)) == model


def test_optional_fields_are_omitted_on_the_wire() -> None:
    wire = msgpack.unpackb(codec.encode(StepEvent(run_id="r", seq=1, ts=1.0, kind="heartbeat")))
    assert wire == {"run_id": "r", "seq": 1, "ts": 1.0, "kind": "heartbeat"}


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = msgpack.packb({"run_id": "r", "seq": 1, "ts": 1.0, "kind": "llm", "added_in_v9": {"x": 1}})
    assert codec.decode(StepEvent, data) == StepEvent(run_id="r", seq=1, ts=1.0, kind="llm")


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=128)
_count = st.integers(min_value=0, max_value=2**53)
_money = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
_tokens = st.integers(min_value=0, max_value=MAX_TOKENS_PER_EVENT)
_cost = st.floats(min_value=0, max_value=MAX_COST_PER_EVENT, allow_nan=False, allow_infinity=False)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=50))


@given(
    run_id=_token, seq=_count, ts=_money,
    kind=st.sampled_from(["start", "llm", "tool_call", "tool_result", "message", "heartbeat", "final"]),
    tool=st.none() | st.text(max_size=40), observation=st.none() | st.text(max_size=500),
    ok=st.none() | st.booleans(), tokens=st.none() | _tokens, cost=st.none() | _cost,
    progress=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    args=st.none() | st.dictionaries(st.text(max_size=10), _json_scalar, max_size=5),
)  # fmt: skip
def test_step_event_round_trips(
    run_id: str, seq: int, ts: float, kind: Any, tool: str | None, observation: str | None, ok: bool | None,
    tokens: int | None, cost: float | None, progress: float | None, args: dict[str, Any] | None,
) -> None:  # fmt: skip
    event = StepEvent(
        run_id=run_id, seq=seq, ts=ts, kind=kind, tool=tool, observation=observation, ok=ok, tokens_in=tokens,
        cost_usd=cost, progress=progress, args=args,
    )  # fmt: skip
    assert codec.decode(StepEvent, codec.encode(event)) == event


@given(
    cmd=st.sampled_from(["pause", "resume", "kill"]),
    reason=st.none() | st.sampled_from(list(StopReason)),
    note=st.none() | st.text(max_size=100),
)
def test_command_round_trips(cmd: Any, reason: StopReason | None, note: str | None) -> None:
    command = Command(cmd=cmd, reason=reason, note=note)
    assert codec.decode(Command, codec.encode(command)) == command
    assert codec.decode_command(codec.encode(command)) == command
    assert codec.decode_command(codec.encode_json(command)) == command


@given(words=st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", max_size=60))
def test_plain_word_notes_survive(words: str) -> None:
    command = codec.decode_command(f"kill {words}".encode())
    assert command.cmd == "kill"
    assert command.note == (words.strip() or None)


# --- plain words and JSON, as operators type them ---------------------------------------


def test_plain_words_pause_resume_kill() -> None:
    assert codec.decode_command(b"pause").cmd == "pause"
    assert codec.decode_command(b"pause").reason is StopReason.USER_PAUSED
    assert codec.decode_command(b"resume\n").cmd == "resume"
    kill = codec.decode_command(b"kill runaway costs")
    assert (kill.cmd, kill.reason, kill.note) == ("kill", StopReason.USER_KILLED, "runaway costs")


def test_plain_words_stop_with_reason() -> None:
    stop = codec.decode_command(b"stop budget_exceeded over the monthly cap")
    assert (stop.cmd, stop.reason, stop.note) == ("stop", StopReason.BUDGET_EXCEEDED, "over the monthly cap")


def test_json_command_as_operators_write_it() -> None:
    command = codec.decode_command(b'{"cmd":"kill","reason":"USER_KILLED","note":"manual"}')
    assert (command.cmd, command.note) == ("kill", "manual")


# --- rejections: each names the problem -------------------------------------------------


def _step(**fields: Any) -> dict[str, Any]:
    return {"run_id": "run-1", "seq": 1, "ts": 1.0, "kind": "tool_result"} | fields


@pytest.mark.parametrize("bad", ["a.b", "a b", "", "x" * 129, "rv.>", "a*"])
def test_run_id_that_is_not_one_token_is_rejected(bad: str) -> None:
    with pytest.raises(DecodeError, match=r"field 'run_id': run_id must be one subject token"):
        codec.decode(StepEvent, msgpack.packb(_step(run_id=bad)))


def test_oversize_observation_is_rejected() -> None:
    with pytest.raises(DecodeError, match=rf"field 'observation': .*at most {MAX_OBSERVATION_CHARS} characters"):
        codec.from_obj(StepEvent, _step(observation="x" * (MAX_OBSERVATION_CHARS + 1)))


def test_oversize_args_are_rejected() -> None:
    with pytest.raises(DecodeError, match=rf"field 'args': args too large: over {MAX_ARGS_CHARS} characters"):
        codec.from_obj(StepEvent, _step(args={"content": "x" * MAX_ARGS_CHARS}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("tokens_in", 2**64 - 1), ("tokens_out", MAX_TOKENS_PER_EVENT + 1), ("cost_usd", 1e308), ("seq", 2**64 - 1)],
)
def test_counters_no_real_step_reaches_are_rejected(field: str, value: float) -> None:
    # Accepted, two of them summed past what msgpack (or a float) holds, and a run's state could
    # never be written again.
    with pytest.raises(DecodeError, match=rf"field '{field}': Input should be less than or equal to"):
        codec.decode(StepEvent, msgpack.packb(_step(**{field: value})))


@pytest.mark.parametrize("field", ["tokens_in", "tokens_out", "cost_usd", "seq"])
def test_negative_counters_are_rejected(field: str) -> None:
    with pytest.raises(DecodeError, match=rf"field '{field}': Input should be greater than or equal to 0, got -1"):
        codec.from_obj(StepEvent, _step(**{field: -1}))


@pytest.mark.parametrize("field", ["cost_usd", "ts", "progress"])
def test_nan_is_rejected(field: str) -> None:
    with pytest.raises(DecodeError, match=rf"field '{field}': Input should be a finite number, got nan"):
        codec.decode(StepEvent, msgpack.packb(_step(**{field: math.nan})))


def test_wrong_type_names_field_expected_and_got() -> None:
    with pytest.raises(DecodeError, match=r"StepEvent: field 'seq': Input should be a valid integer.*got 'three'"):
        codec.from_obj(StepEvent, _step(seq="three"))


def test_missing_field_is_named() -> None:
    with pytest.raises(DecodeError, match=r"field 'kind': Field required"):
        codec.from_obj(StepEvent, {"run_id": "r", "seq": 1, "ts": 1.0})


def test_garbage_bytes_are_not_msgpack() -> None:
    with pytest.raises(DecodeError, match=r"StepEvent: not valid msgpack"):
        codec.decode(StepEvent, b"\xc1\xc1\xc1")


def test_msgpack_that_is_not_a_map() -> None:
    with pytest.raises(DecodeError, match=r"StepEvent: expected a map of fields, got \[1, 2\]"):
        codec.decode(StepEvent, msgpack.packb([1, 2]))


def test_unknown_command_word_lists_the_known_ones() -> None:
    with pytest.raises(DecodeError, match=r"unknown command 'paws'; expected one of pause, resume, kill, stop"):
        codec.decode_command(b"paws")


def test_empty_command() -> None:
    with pytest.raises(DecodeError, match=r"empty message"):
        codec.decode_command(b"  \n")


def test_stop_without_reason_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"a stop command needs a reason"):
        codec.decode_command(b'{"cmd": "stop"}')


def test_malformed_json_command() -> None:
    with pytest.raises(DecodeError, match=r"Command: not valid JSON"):
        codec.decode_command(b'{"cmd": "pause"')


def test_unknown_reason_in_json_names_the_field() -> None:
    with pytest.raises(DecodeError, match=r"field 'reason': Input should be 'LOOP_DETECTED'"):
        codec.decode_command(json.dumps({"cmd": "stop", "reason": "FAILED"}).encode())


@pytest.mark.parametrize(
    "data", [b'{"cmd": ["pause"]}', msgpack.packb({"cmd": ["pause"]}), b'{"cmd": {"a": 1}}', b'{"cmd": 7}']
)
def test_a_command_of_the_wrong_shape_is_a_decode_error_naming_the_field(data: bytes) -> None:
    # It was a TypeError (unhashable list) out of the worker's and the agent's decoders.
    with pytest.raises(DecodeError, match=r"field 'cmd': Input should be 'pause', 'resume', 'kill' or 'stop'"):
        codec.decode_command(data)


def _nested(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    inner = top
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return top


def test_args_nested_a_thousand_deep_are_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(DecodeError, match=r"field 'args': args nested too deeply"):
        codec.decode(StepEvent, msgpack.packb(_step(kind="tool_call", args=_nested(1000))))
    text = '{"run_id": "r", "seq": 1, "ts": 1.0, "kind": "tool_call", "args": ' + '{"a": ' * 5000 + "{}" + "}" * 5001
    with pytest.raises(DecodeError, match=r"nested too deeply"):
        codec.decode_json(StepEvent, text)


def test_args_nested_as_deep_as_real_tools_go_are_accepted() -> None:
    event = codec.decode(StepEvent, msgpack.packb(_step(kind="tool_call", args=_nested(50))))
    assert event.args == _nested(50)


def test_a_kill_in_plain_words_takes_every_word_as_its_note() -> None:
    # Hypothesis found `kill completed` read as a kill for COMPLETED with no note.
    kill = codec.decode_command(b"kill timeout too long")
    assert (kill.cmd, kill.reason, kill.note) == ("kill", StopReason.USER_KILLED, "timeout too long")
    assert codec.decode_command(b"kill completed").note == "completed"
    assert codec.decode_command(b"pause loop_detected check it").reason is StopReason.LOOP_DETECTED
