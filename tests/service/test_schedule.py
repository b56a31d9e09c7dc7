"""The in-memory schedule: due order, rescheduling, lazy deletion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from spoolmail._service.schedule import Schedule

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def test_pop_due_in_time_order() -> None:
    schedule = Schedule()
    schedule.set("b", T0 + timedelta(minutes=2))
    schedule.set("a", T0 + timedelta(minutes=1))
    schedule.set("c", T0 + timedelta(minutes=3))
    assert schedule.pop_due(T0 + timedelta(minutes=2)) == ["a", "b"]
    assert schedule.next_due() == T0 + timedelta(minutes=3)
    assert len(schedule) == 1


def test_reschedule_replaces_the_old_time() -> None:
    schedule = Schedule()
    schedule.set("a", T0)
    schedule.set("a", T0 + timedelta(hours=1))
    assert schedule.pop_due(T0) == []
    assert schedule.pop_due(T0 + timedelta(hours=1)) == ["a"]
    assert schedule.next_due() is None


def test_discard_and_limit() -> None:
    schedule = Schedule()
    for n in range(5):
        schedule.set(str(n), T0)
    schedule.discard("2")
    assert "2" not in schedule
    assert schedule.pop_due(T0, limit=2) == ["0", "1"]
    assert sorted(schedule.pop_due(T0)) == ["3", "4"]


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1000)), max_size=200))
def test_pop_due_returns_exactly_the_latest_times_that_are_due(ops: list[tuple[int, int]]) -> None:
    schedule = Schedule()
    latest: dict[str, datetime] = {}
    for key, minutes in ops:
        when = T0 + timedelta(minutes=minutes)
        schedule.set(str(key), when)
        latest[str(key)] = when
    cut = T0 + timedelta(minutes=500)
    due = schedule.pop_due(cut)
    assert sorted(due) == sorted(k for k, v in latest.items() if v <= cut)
    assert [latest[k] for k in due] == sorted(latest[k] for k in due)
    assert len(schedule) == len(latest) - len(due)
