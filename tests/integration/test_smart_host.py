"""The whole path against a real SMTP server: aiosmtpd on 127.0.0.1 as the smart host.

One message with three recipients: the server accepts one, defers one (451) and refuses one (550)
in the same transaction. The refused one comes back to the sender as a DSN (delivered to Drop,
the sender being local); the deferred one waits, and when the clock reaches its retry time and
the server has changed its mind, it is delivered. Real files (OSFS) and real sockets throughout.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail import MailService, RecipientState, RetryPolicy, Router, Spool
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from spoolmail.testing import FakeClock
from tests.smtpservers import ScriptedHandler, SmtpServer, smtp_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    handler = ScriptedHandler(
        rcpt_answers={
            "tempfail": "451 4.3.0 Mailbox busy, try later",
            "reject": "550 5.1.1 No such user here",
        }
    )
    with smtp_server(handler) as server:
        yield server


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def service(spool: Spool, server: SmtpServer, clock: FakeClock) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host=str(server.target)),
        retry=RetryPolicy.iis(),
        transport=SmtpTransport(helo_name="mail.example.com", timeouts=SmtpTimeouts(connect=5)),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def test_accept_defer_refuse_in_one_transaction_then_retry(
    spool: Spool, service: MailService, server: SmtpServer, clock: FakeClock, tmp_path: Path
) -> None:
    pickup = tmp_path / "MailRoot" / "Pickup" / "report.eml"
    pickup.write_bytes(
        b"X-Sender: alice@example.com\r\n"
        b"X-Receiver: ok@remote.test\r\n"
        b"X-Receiver: tempfail@remote.test\r\n"
        b"X-Receiver: reject@remote.test\r\n"
        b"From: Alice <alice@example.com>\r\n"
        b"To: ok@remote.test, tempfail@remote.test, reject@remote.test\r\n"
        b"Subject: quarterly report\r\n"
        b"\r\n"
        b"The figures.\r\n"
        b".hidden dot line\r\n"
    )
    report = service.run_once()
    [queue_id] = report.picked_up
    [dsn_id] = report.dsns
    assert (queue_id, "ok@remote.test") in report.delivered
    assert report.deferred == ((queue_id, "tempfail@remote.test"),)
    assert report.failed == ((queue_id, "reject@remote.test"),)

    # The server got the message once, for the one recipient it accepted, byte-exact.
    [received] = server.messages
    assert received.mail_from == "alice@example.com"
    assert received.rcpt_tos == ("ok@remote.test",)
    assert received.data.startswith(b"Received: from mail pickup service by mail.example.com")
    assert b"\r\n.hidden dot line\r\n" in received.data  # dot-stuffed on the wire, not in content
    assert b"X-Receiver" not in received.data

    # The refusal came back to the (local) sender as a DSN in Drop.
    dsn = email.message_from_bytes(spool.drop_message(dsn_id), policy=email.policy.default)
    assert dsn["Subject"] == "Delivery Status Notification (Failure)"
    assert spool.drop_item(dsn_id).recipients == ("alice@example.com",)
    status = dsn.get_payload()[1].get_payload()[1]  # type: ignore[index, union-attr]
    assert status["Final-Recipient"] == "rfc822; reject@remote.test"
    assert status["Status"] == "5.1.1"
    assert "550 5.1.1 No such user here" in status["Diagnostic-Code"]
    assert status["Remote-MTA"] == "dns; 127.0.0.1"

    # The deferred recipient waits with its transcript: commands and replies, no body.
    waiting = spool.queued_message(queue_id).envelope
    assert {r.address: r.state for r in waiting.recipients} == {
        "ok@remote.test": RecipientState.DELIVERED,
        "tempfail@remote.test": RecipientState.PENDING,
        "reject@remote.test": RecipientState.FAILED,
    }
    assert waiting.next_attempt == clock() + timedelta(minutes=15)
    transcript = spool.transcript(queue_id)
    assert "> RCPT TO:<tempfail@remote.test>" in transcript
    assert "< 451 4.3.0 Mailbox busy, try later" in transcript
    assert "The figures" not in transcript

    # Before the retry time nothing happens; at it, the server now accepts.
    clock.advance(minutes=14, seconds=59)
    assert not service.run_once()
    server.handler.rcpt_answers.pop("tempfail")
    clock.advance(seconds=1)
    report = service.run_once()
    assert report.delivered == ((queue_id, "tempfail@remote.test"),)
    assert report.finished == (queue_id,)
    assert [m.rcpt_tos for m in server.messages] == [("ok@remote.test",), ("tempfail@remote.test",)]
    assert list(spool.queued()) == []
    assert list(spool.badmail()) == []


def test_smart_host_down_defers_with_the_reason(spool: Spool, clock: FakeClock) -> None:
    # A port nobody listens on: the connection is refused at once.
    with smtp_server() as gone:
        target = str(gone.target)
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host=target),
        transport=SmtpTransport(helo_name="mail.example.com"),
        clock=clock,
        fqdn="mail.example.com",
    )
    try:
        spool.submit(b"From: a@example.com\r\nTo: x@remote.test\r\n\r\nhi\r\n")
        report = service.run_once()
        [queue_id] = report.picked_up
        assert report.deferred == ((queue_id, "x@remote.test"),)
        [recipient] = spool.queued_message(queue_id).envelope.recipients
        assert recipient.reply is not None
        assert recipient.reply.enhanced == "4.4.1"
        assert "refused" in recipient.reply.text.lower()
    finally:
        service.close()
