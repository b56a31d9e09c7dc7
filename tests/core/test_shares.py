"""Shares: every name belongs to exactly one worker, decided the same way in every process."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.ids import QueueIds, dsn_id
from spoolmail._core.shares import WHOLE, Share

names = st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s)
counts = st.integers(min_value=1, max_value=16)


@given(name=names, count=counts)
def test_every_pickup_name_has_exactly_one_owner(name: str, count: int) -> None:
    owners = [share for share in Share(0, count).all() if share.owns_name(name)]
    assert len(owners) == 1


@given(seed=st.integers(), count=counts, number=st.integers(min_value=1, max_value=99))
def test_a_message_its_dsns_and_its_pickup_name_share_one_owner(
    seed: int, count: int, number: int
) -> None:
    queue_id = QueueIds(random.Random(seed)).new(datetime(2026, 12, 5, tzinfo=UTC))
    [owner] = [share for share in Share(0, count).all() if share.owns_id(queue_id)]
    assert owner.owns_id(dsn_id(queue_id, number))
    assert owner.owns_name(f"{queue_id}.eml")  # Spool.submit's name keeps the id


def test_the_split_is_stable_and_even() -> None:
    # CRC-32, not hash(): the same in every process (PYTHONHASHSEED) and every Python.
    assert [Share(i, 2).owns_name("message.eml") for i in range(2)] == [False, True]
    ids = QueueIds(random.Random(7))
    now = datetime(2026, 12, 5, tzinfo=UTC)
    made = [ids.new(now) for _ in range(4000)]
    counts = [sum(Share(i, 4).owns_id(q) for q in made) for i in range(4)]
    assert min(counts) > 900, counts


def test_whole_owns_everything() -> None:
    assert WHOLE.whole
    assert WHOLE.owns_id("x")
    assert WHOLE.owns_name("anything at all")
    assert WHOLE.all() == [WHOLE]


@pytest.mark.parametrize(("index", "count"), [(0, 0), (-1, 2), (2, 2), (5, 3)])
def test_a_share_outside_its_group_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="share"):
        Share(index, count)
