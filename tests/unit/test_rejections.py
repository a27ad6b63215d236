"""Rejected input is counted always, and said sparingly: pure, no server."""

from __future__ import annotations

from runvisor.actors.supervisor._rejections import MAX_REMEMBERED_RUNS, Rejections


def test_a_flood_is_one_log_line_per_period_with_its_count() -> None:
    rejections = Rejections(every_s=30)
    said = [rejections.add("r", now=float(i) / 1000) for i in range(14_037)]  # 14 s of a flood
    assert [s.log_count for s in said if s.log_count] == [1]
    later = rejections.add("r", now=31.0)
    assert later.log_count == 14_037, "the next line says how many came since the last"
    assert rejections.total == 14_038


def test_each_run_is_reported_once_per_period() -> None:
    rejections = Rejections(every_s=30)
    assert rejections.add("a", 0.0).report
    assert not rejections.add("a", 1.0).report
    assert rejections.add("b", 1.0).report
    assert rejections.add("a", 30.0).report


def test_replayed_history_is_counted_but_not_said_again() -> None:
    rejections = Rejections(every_s=30)
    said = rejections.add("a", 0.0, replayed=True)
    assert (said.log_count, said.report, rejections.total) == (0, False, 1)


def test_a_burst_of_new_run_ids_does_not_grow_memory_without_bound() -> None:
    rejections = Rejections(every_s=30)
    for i in range(3 * MAX_REMEMBERED_RUNS):
        rejections.add(f"run-{i}", 0.0)
    assert len(rejections._reported_at) <= MAX_REMEMBERED_RUNS
