"""The table of sessions that worker processes share (``_listen.balance``)."""

from __future__ import annotations

import os
import smtplib
import time

import pytest

from spoolmail import Listener, ListenerLimits, Router, Spool
from spoolmail._listen.balance import FULL_PASSES, PASS_FOR, PASSES, RETIRED, SessionCounts
from spoolmail._listen.listener import _PublishedSessions, share_with_workers
from tests.listen.conftest import LOCAL, host_port
from tests.waiting import until


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


def _sharing(spool: Spool, counts: SessionCounts) -> Listener:
    listener = Listener(
        spool,
        addresses=["127.0.0.1:0"],
        router=Router(local_domains=LOCAL),
        fqdn="mx.example.com",
    )
    share_with_workers(listener, counts.slot(0))
    return listener


def test_a_worker_publishes_its_sessions_and_retires_when_it_stops(spool: Spool) -> None:
    counts = SessionCounts(2)
    other = counts.slot(1)
    with _sharing(spool, counts) as listener:
        host, port = host_port(listener)
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.ehlo("client.test")
            until("one session published", lambda: other.fewest_elsewhere() == 1)
        until("none published", lambda: other.fewest_elsewhere() == 0)
    assert other.fewest_elsewhere() == RETIRED


def test_a_connection_left_to_an_idle_worker_is_taken_after_a_few_looks(spool: Spool) -> None:
    """The other worker says it has no session but takes nothing (stuck, or gone without
    saying so): this one still serves the client, after a few short passes."""
    counts = SessionCounts(2)
    counts.slot(1).publish(0)
    with _sharing(spool, counts) as listener:
        host, port = host_port(listener)
        first = smtplib.SMTP(host, port, timeout=10)  # 0 and 0: taken at once
        try:
            started = time.monotonic()
            with smtplib.SMTP(host, port, timeout=10) as second:  # 1 against 0: passed on ...
                assert second.noop()[0] == 250  # ... and taken all the same
            assert time.monotonic() - started >= PASSES * PASS_FOR * 0.9
        finally:
            first.close()


def test_a_worker_at_its_session_limit_waits_longer_for_one_with_room(spool: Spool) -> None:
    """At its part of max_sessions, a worker taking a connection could only answer 421: it
    leaves it to a worker with fewer sessions for up to half a second (FULL_PASSES), not the
    usual few milliseconds. Here the other takes nothing, so the client is turned away after."""
    counts = SessionCounts(2)
    counts.slot(1).publish(0)
    listener = Listener(
        spool,
        addresses=["127.0.0.1:0"],
        router=Router(local_domains=LOCAL),
        fqdn="mx.example.com",
        limits=ListenerLimits(max_sessions=1),
    )
    share_with_workers(listener, counts.slot(0))
    with listener:
        host, port = host_port(listener)
        first = smtplib.SMTP(host, port, timeout=10)  # 0 and 0: taken at once
        try:
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP(host, port, timeout=10)
            assert refused.value.smtp_code == 421
            assert time.monotonic() - started >= FULL_PASSES * PASS_FOR * 0.9
        finally:
            first.close()
