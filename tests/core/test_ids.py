"""Queue ids: unique, sortable by time, safe in file names."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from spoolmail._core.base32 import ALPHABET
from spoolmail._core.ids import QueueIds, dsn_id, is_made_id, is_queue_id


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


def test_one_factory_never_repeats_an_id_when_the_clock_steps_back() -> None:
    ids = QueueIds(random.Random(3))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0) for _ in range(3)]
    made += [ids.new(t0 - timedelta(seconds=5)) for _ in range(3)]
    prefixes = [queue_id[:16] for queue_id in made]  # time and sequence, without the random part
    assert prefixes == sorted(prefixes)
    assert len(set(prefixes)) == len(prefixes)
    assert all(is_made_id(queue_id) for queue_id in made)


def test_a_full_millisecond_goes_on_in_the_next() -> None:
    ids = QueueIds(random.Random(3))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0) for _ in range(0x10000 + 2)]
    assert made[0x10000][:16] == f"{int(t0.timestamp() * 1000) + 1:011x}-0000"
    assert len({queue_id[:16] for queue_id in made}) == len(made)
    assert made == sorted(made)


def test_tokens_are_base_32_and_the_random_source_decides_them() -> None:
    tokens = [QueueIds().token(12) for _ in range(200)]
    assert all(len(token) == 12 and set(token) <= set(ALPHABET) for token in tokens)
    assert len(set(tokens)) == len(tokens)
    assert QueueIds(random.Random(1)).token(10) == QueueIds(random.Random(1)).token(10)
