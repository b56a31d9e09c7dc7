"""The table of sessions that worker processes share (``_listen.balance``)."""

from __future__ import annotations

import os

import pytest

from spoolmail._listen.balance import SessionCounts
from spoolmail._listen.listener import _PublishedSessions


def test_a_worker_accepts_while_no_other_has_fewer_sessions() -> None:
    counts = SessionCounts(3)
    first, second, third = (counts.slot(i) for i in range(3))
    assert first.should_accept()  # all at 0
    first.publish(1)
    assert not first.should_accept()
    assert second.should_accept()
    second.publish(1)
    third.publish(2)
    assert first.should_accept()
    assert second.should_accept()
    assert not third.should_accept()
    assert third.fewest_elsewhere() == 1


def test_one_worker_always_accepts() -> None:
    only = SessionCounts(1).slot(0)
    only.publish(7)
    assert only.fewest_elsewhere() is None
    assert only.should_accept()


def test_slots_are_checked() -> None:
    with pytest.raises(IndexError):
        SessionCounts(2).slot(2)
    with pytest.raises(ValueError, match="at least one worker"):
        SessionCounts(0)


def test_the_table_is_shared_with_forked_workers() -> None:
    """Made before the fork, written by the child, read by the parent."""
    counts = SessionCounts(2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        counts.slot(1).publish(5)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts.slot(0).fewest_elsewhere() == 5


def test_a_stopped_listener_leaves_every_connection_to_the_others() -> None:
    counts = SessionCounts(2)
    stopping, other = counts.slot(0), counts.slot(1)
    other.publish(3)
    sessions = _PublishedSessions(stopping.publish)
    assert not other.should_accept()  # 0 sessions there: leave it the next one
    sessions.retire()
    sessions.add(object())  # type: ignore[arg-type]  # its sessions ending or not ...
    sessions.discard(object())
    assert other.should_accept()  # ... it takes no more
