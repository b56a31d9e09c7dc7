"""Queue ids: unique, sortable by time, safe in file names."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from spoolmail._core.ids import QueueIds, dsn_id, is_queue_id


def test_ids_sort_by_time_and_are_file_safe() -> None:
    ids = QueueIds(random.Random(7))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0 + timedelta(milliseconds=n)) for n in range(0, 5000, 7)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(is_queue_id(i) for i in made)


def test_dsn_ids_derive_from_the_parent() -> None:
    assert dsn_id("abc", 2) == "abc-d2"
    assert is_queue_id(dsn_id("abc", 2))


def test_not_ids() -> None:
    assert not is_queue_id("")
    assert not is_queue_id("a.b")
    assert not is_queue_id("../etc")
    assert not is_queue_id("x" * 129)
