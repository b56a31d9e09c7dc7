"""``queue flush`` against a running service whose smart host did not answer (issue 8).

Postfix's ``postqueue -f`` is the model: a flush makes messages due now and forgets that their
destination was dead; the attempt it causes counts only if it is made. The smart host is a real
aiosmtpd on 127.0.0.1 that first is not listening (the connection is refused) and later is; the
clock is injected, so "now" is exactly the flush and nothing waits for a retry time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail import MailService, RetryPolicy, Router, Spool
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from spoolmail.testing import FakeClock
from tests.messages import message
from tests.smtpservers import SmtpServer

pytestmark = pytest.mark.integration


@pytest.fixture
def port() -> int:
    """A port on 127.0.0.1 that nothing listens on (yet): a connection there is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free: int = probe.getsockname()[1]
    return free


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def service(spool: Spool, clock: FakeClock, port: int) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host=f"[127.0.0.1]:{port}"),
        retry=RetryPolicy.iis(),
        transport=SmtpTransport(helo_name="mail.example.com", timeouts=SmtpTimeouts(connect=5)),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def test_flush_after_the_host_came_back_delivers_at_once(
    spool: Spool, service: MailService, clock: FakeClock, port: int
) -> None:
    spool.submit(message("dan@remote.test"))
    report = service.run_once()
    [(queue_id, _)] = report.deferred
    envelope = spool.queued_message(queue_id).envelope
    assert envelope.attempts == 1
    assert envelope.next_attempt == clock() + timedelta(minutes=15)
    assert "refused" in spool.transcript(queue_id)

    clock.advance(minutes=1)
    with SmtpServer(port=port) as server:
        assert spool.flush() == [queue_id]
        report = service.run_once()  # a separate Spool would do the same: a trigger file
        assert report.delivered == ((queue_id, "dan@remote.test"),)
        assert [list(m.rcpt_tos) for m in server.messages] == [["dan@remote.test"]]
    assert list(spool.queued()) == []


def test_repeated_flushes_of_a_dead_host_follow_the_schedule(
    spool: Spool, service: MailService, clock: FakeClock, port: int
) -> None:
    """Each flush makes one real attempt (counted, as any attempt made); before the fix the
    second and later flushes were skipped for the dead host and still counted, so the next
    retry moved 15 -> 30 -> 60 minutes away without a single connection."""
    spool.submit(message("dan@remote.test"))
    [(queue_id, _)] = service.run_once().deferred
    for attempts in (2, 3):
        clock.advance(minutes=1)
        spool.flush([queue_id])
        service.run_once()
        envelope = spool.queued_message(queue_id).envelope
        assert envelope.attempts == attempts
        transcript = spool.transcript(queue_id)
        assert transcript.count("refused") >= attempts  # each flush knocked on the door
        assert "did not answer the last attempt" not in transcript
    clock.advance(minutes=1)
    with SmtpServer(port=port) as server:
        spool.flush([queue_id])
        assert service.run_once().delivered == ((queue_id, "dan@remote.test"),)
        assert len(server.messages) == 1


def test_a_message_skipped_for_a_dead_host_keeps_its_attempt_count(
    spool: Spool, service: MailService, clock: FakeClock, port: int
) -> None:
    """Two messages for a host that is down: one knocks and finds it dead, the other is passed
    over without a connection, and an attempt not made is not counted. The same when both are
    flushed together while the host is still down: one real attempt between them."""
    spool.submit(message("dan@remote.test"))
    spool.submit(message("eve@remote.test"))
    ids = [queue_id for queue_id, _ in service.run_once().deferred]
    attempts = {q: spool.queued_message(q).envelope.attempts for q in ids}
    assert sorted(attempts.values()) == [0, 1]
    passed = next(q for q in ids if attempts[q] == 0)
    assert "did not answer the last attempt" in spool.transcript(passed)
    assert spool.queued_message(passed).envelope.last_attempt is None

    clock.advance(minutes=1)
    spool.flush(ids)
    service.run_once()
    after = [spool.queued_message(q).envelope for q in ids]
    assert sum(e.attempts for e in after) == 2  # one more attempt made, one more counted
    clock.set(max(e.next_attempt for e in after))
    with SmtpServer(port=port) as server:
        delivered = service.run_once().delivered
        assert sorted(address for _, address in delivered) == ["dan@remote.test", "eve@remote.test"]
        assert len(server.messages) == 2
