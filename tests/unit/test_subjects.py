"""Subject builders reject what is not one token; the partition function matches the server's."""

from __future__ import annotations

import pytest

from runvisor.protocols import subjects


def test_builders_put_the_run_id_in_the_last_token() -> None:
    assert subjects.step("run-1") == "rv.step.run-1"
    assert subjects.ctl("run-1") == "rv.ctl.run-1"
    assert subjects.event("run-1") == "rv.event.run-1"
    assert subjects.status("run-1") == "rv.status.run-1"
    assert subjects.run_id_of(subjects.stored_step(7, "run-1")) == "run-1"


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", ""])
def test_builders_refuse_a_run_id_that_would_change_the_subject(bad: str) -> None:
    with pytest.raises(ValueError, match="run_id must be one subject token"):
        subjects.step(bad)


@pytest.mark.parametrize("bad", ["web.search", "a b", "*", ""])
def test_tool_names_must_be_one_token(bad: str) -> None:
    with pytest.raises(ValueError, match="tool name must be one subject token"):
        subjects.tool(bad)


def test_partition_is_fnv1a_mod_p() -> None:
    # FNV-1a 32 of "a" is 0xe40c292c; the server's partition() uses the same hash.
    assert subjects.partition_of("a", 2**31) == 0xE40C292C % 2**31
    assert all(0 <= subjects.partition_of(f"run-{i}", 32) < 32 for i in range(1000))


def test_partition_spreads_runs_evenly() -> None:
    counts = [0] * 32
    for i in range(32_000):
        counts[subjects.partition_of(f"run-{i}")] += 1
    assert min(counts) > 800
    assert max(counts) < 1200


def test_steps_stream_transform_uses_the_partition_count() -> None:
    config = subjects.steps_stream_config(partitions=8)
    assert config.subject_transform is not None
    assert config.subject_transform.dest == "rv.step.{{partition(8,1)}}.{{wildcard(1)}}"
