"""The recorded-traffic format: what is written is read back exactly; bad records are named."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.traffic import TrafficError, TrafficReader, TrafficWriter, read_events, traffic_format
from runvisor.protocols.messages import MAX_COST_PER_EVENT, MAX_TOKENS_PER_EVENT, StepEvent

SUFFIXES = (".jsonl", ".jsonl.gz", ".msgpack", ".msgpack.gz")
# Any text but lone surrogates, which no UTF-8 encoder accepts; line and paragraph separators included.
texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=80)
optional_texts = st.none() | texts
counts = st.none() | st.integers(0, 2**53)
tokens = st.none() | st.integers(0, MAX_TOKENS_PER_EVENT)
costs = st.none() | st.floats(0, MAX_COST_PER_EVENT, allow_nan=False, allow_infinity=False)
money = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
scalars = st.none() | st.integers(-(2**53), 2**53) | texts | st.booleans()

events = st.builds(
    StepEvent,
    run_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    seq=st.integers(0, 2**53),
    ts=money,
    kind=st.sampled_from(["start", "llm", "tool_call", "tool_result", "message", "heartbeat", "final"]),
    agent=optional_texts,
    task=optional_texts,
    tool=optional_texts,
    call_id=optional_texts,
    args=st.none() | st.dictionaries(texts, scalars, max_size=4),
    observation=optional_texts,
    ok=st.none() | st.booleans(),
    error=optional_texts,
    tokens_in=tokens,
    tokens_out=tokens,
    cost_usd=costs,
    progress=st.none() | st.floats(-1e6, 1e6, allow_nan=False),
    policy=st.none() | st.builds(dict, max_cost_usd=st.floats(0.01, 100)),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traffic")


def _unique(folder: Path, suffix: str) -> Path:
    return folder / f"{uuid.uuid4().hex}{suffix}"


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=40, deadline=None)
@given(written=st.lists(events, max_size=12))
def test_what_is_written_is_read_back_in_order(folder: Path, suffix: str, written: list[StepEvent]) -> None:
    path = _unique(folder, suffix)
    with TrafficWriter(path) as out:
        for event in written:
            out.write(event)
    assert out.count == len(written)
    assert list(read_events(path)) == written


def test_optional_fields_are_left_out_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    with TrafficWriter(path) as out:
        out.write(StepEvent(run_id="r1", seq=3, ts=1.5, kind="heartbeat"))
    assert json.loads(path.read_text()) == {"run_id": "r1", "seq": 3, "ts": 1.5, "kind": "heartbeat"}


def test_append_extends_a_file(tmp_path: Path) -> None:
    path = tmp_path / "grow.msgpack"
    first, second = (StepEvent(run_id="r1", seq=n, ts=float(n), kind="heartbeat") for n in (0, 1))
    with TrafficWriter(path) as out:
        out.write(first)
    with TrafficWriter(path, append=True) as out:
        out.write(second)
    assert list(read_events(path)) == [first, second]


def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"run_id": "r1", "seq": 0, "ts": 1.0, "kind": "start", "unknown_field": 1}'
    path.write_text(f"{good}\n\nnot json at all\n")
    with pytest.raises(TrafficError, match=rf"^{path}:3: not valid JSON"):
        list(read_events(path))


def test_an_invalid_event_says_which_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"run_id": "r1", "seq": -1, "ts": 1.0, "kind": "start"}\n')
    with pytest.raises(TrafficError, match=rf"^{path}:1: StepEvent: field 'seq'"):
        list(read_events(path))


def test_reading_is_lazy_so_good_events_come_before_a_later_error(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text('{"run_id": "r1", "seq": 0, "ts": 1.0, "kind": "start"}\n[1, 2]\n')
    reader = read_events(path)
    assert next(reader).run_id == "r1"
    with pytest.raises(TrafficError, match=":2: StepEvent: expected a map"):
        next(reader)


def test_skip_bad_counts_and_skips_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl.gz"
    lines = ['{"run_id": "r1", "seq": 0, "ts": 1.0, "kind": "start"}', "{oops", '{"run_id": "bad id"}',
             '{"run_id": "r1", "seq": 1, "ts": 2.0, "kind": "final"}']  # fmt: skip
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    reader = TrafficReader(path, skip_bad=True)
    assert [e.seq for e in reader] == [0, 1]
    assert reader.skipped == 2


def test_msgpack_errors_name_the_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.msgpack"
    good = {"run_id": "r1", "seq": 0, "ts": 1.0, "kind": "start"}
    path.write_bytes(msgpack.packb(good) + msgpack.packb({**good, "kind": "nonsense"}))
    with pytest.raises(TrafficError, match=r"bad.msgpack: record 2: StepEvent: field 'kind'"):
        list(read_events(path))


def test_a_truncated_msgpack_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cut.msgpack"
    record = msgpack.packb({"run_id": "r1", "seq": 0, "ts": 1.0, "kind": "start"})
    path.write_bytes(record + record[:-3])
    with pytest.raises(TrafficError, match="record 2: truncated"):
        list(read_events(path))
    reader = TrafficReader(path, skip_bad=True)
    assert len(list(reader)) == 1
    assert reader.skipped == 1


def test_unknown_suffix_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(TrafficError, match=r"unknown traffic format.*\.jsonl\[\.gz\]"):
        traffic_format("traffic.csv")
    assert traffic_format("a/b.JSONL.gz") == ("jsonl", True)
    assert traffic_format("x.msgpack") == ("msgpack", False)


def test_a_missing_file_is_a_traffic_error(tmp_path: Path) -> None:
    with pytest.raises(TrafficError, match="cannot open"):
        list(read_events(tmp_path / "absent.jsonl"))
