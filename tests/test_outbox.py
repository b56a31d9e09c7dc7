"""``spoolmail.testing.Outbox`` through the pytest plugin's fixtures: what left, to Drop and to the
capturing transport, parsed; the service run for the test; checks that fail readably."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from spoolmail import Durability, MailService, Reply, Router, Spool
from spoolmail.testing import (
    Attachment,
    CapturingTransport,
    FakeClock,
    Outbox,
    SentMessage,
    StaticResolver,
)


def make_mail(
    subject: str = "Welcome",
    *,
    to: str = "Bob <bob@example.com>",
    sender: str = "App <app@example.com>",
    body: str = "Hello.\n",
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, to, subject
    mail.set_content(body)
    return mail


def failure(check: object, **criteria: object) -> str:
    """The AssertionError text of ``check(**criteria)``, with queue ids made stable."""
    with pytest.raises(AssertionError) as caught:
        check(**criteria)  # type: ignore[operator]
    return re.sub(r"\b[0-9a-f]{11}-[0-9a-f]{16}\b", "ID", str(caught.value))


# -- what left -----------------------------------------------------------------------------------


def test_a_local_delivery(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    queue_id = spoolmail_spool.submit(make_mail())
    message = spoolmail_outbox.single()
    assert (message.where, message.queue_id) == ("drop", queue_id)
    assert (message.sender, message.recipients) == ("app@example.com", ("bob@example.com",))
    assert (message.from_, message.to, message.cc, message.reply_to) == (
        "app@example.com",
        ("bob@example.com",),
        (),
        (),
    )
    assert (message.subject, message.body, message.html) == ("Welcome", "Hello.\n", "")
    assert message.attachments == ()
    assert message.headers["to"] == "Bob <bob@example.com>"
    assert message.headers["Return-Path"] == "<app@example.com>"  # added in Drop, as IIS did
    # raw is the message as delivered, without the Drop file's envelope lines.
    dropped = spoolmail_spool.drop_message(queue_id)
    assert dropped.endswith(message.raw)
    assert dropped[: -len(message.raw)] == (
        b"x-sender: app@example.com\r\nx-receiver: bob@example.com\r\n"
    )
    assert len(spoolmail_outbox) == 1
    assert list(spoolmail_outbox) == [message]


def test_a_remote_delivery(
    spoolmail_spool: Spool, spoolmail_transport: CapturingTransport, spoolmail_outbox: Outbox
) -> None:
    queue_id = spoolmail_spool.submit(make_mail("Invoice", to="partner@example.net"))
    [message] = spoolmail_outbox
    assert (message.where, message.queue_id) == ("smarthost.test", queue_id)
    assert message.recipients == ("partner@example.net",)
    assert message.raw == spoolmail_transport.messages[0].data
    assert message.body == "Hello.\n"
    assert list(spoolmail_spool.drop()) == []


def test_one_message_to_local_remote_and_bcc_recipients(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    queue_id = spoolmail_spool.submit(
        make_mail(to="bob@example.com, partner@example.net"),
        sender="app@example.com",
        recipients=["bob@example.com", "partner@example.net", "audit@example.com"],
    )
    local, remote = spoolmail_outbox
    assert (local.queue_id, remote.queue_id) == (queue_id, queue_id)
    assert (local.where, local.recipients) == ("drop", ("bob@example.com", "audit@example.com"))
    assert (remote.where, remote.recipients) == ("smarthost.test", ("partner@example.net",))
    assert local.to == remote.to == ("bob@example.com", "partner@example.net")
    assert spoolmail_outbox.single(to="audit@example.com") is local


def test_an_html_alternative_and_attachments(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    mail = make_mail("Report", body="See attached.\n")
    mail["Cc"] = "Carol <carol@example.com>"
    mail["Reply-To"] = "help@example.com"
    mail.add_alternative("<p>See <b>attached</b>.</p>\n", subtype="html")
    mail.add_attachment(b"%PDF-1.7\n\x00\xff", maintype="application", subtype="pdf",
                        filename="report.pdf")  # fmt: skip
    mail.add_attachment("a,b\n1,2\n", subtype="csv", filename="data.csv")
    forwarded = make_mail("Original", to="carol@example.com")
    mail.add_attachment(forwarded)
    spoolmail_spool.submit(mail)
    message = spoolmail_outbox.single()
    assert message.body == "See attached.\n"
    assert message.html == "<p>See <b>attached</b>.</p>\n"
    assert (message.cc, message.reply_to) == (("carol@example.com",), ("help@example.com",))
    pdf, csv, attached = message.attachments
    assert pdf == Attachment("report.pdf", "application/pdf", b"%PDF-1.7\n\x00\xff")
    assert csv == ("data.csv", "text/csv", b"a,b\n1,2\n")
    assert attached.content_type == "message/rfc822"
    assert b"Subject: Original" in attached.content
    assert spoolmail_outbox.assert_sent(attachment="report.pdf") is message
    assert spoolmail_outbox.filter(attachment="other.pdf") == []
    assert spoolmail_outbox.assert_sent(body_contains="<b>attached</b>") is message


def test_non_ascii_subjects_names_and_addresses(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    mail = make_mail(
        "Café ✓", to="jürgen@müller.test, Åsa <åsa@example.com>", sender="Zoë <zoë@example.com>",
        body="Grüße\n",
    )  # fmt: skip
    spoolmail_spool.submit(mail)
    local, remote = spoolmail_outbox
    assert (local.where, local.recipients) == ("drop", ("åsa@example.com",))
    assert (remote.where, remote.recipients) == ("smarthost.test", ("jürgen@müller.test",))
    for message in (local, remote):
        assert (message.subject, message.body) == ("Café ✓", "Grüße\n")
        assert (message.sender, message.from_) == ("zoë@example.com", "zoë@example.com")
        assert message.to == ("jürgen@müller.test", "åsa@example.com")
        assert message.headers["From"] == "Zoë <zoë@example.com>"
    assert spoolmail_outbox.single(to="Åsa <ÅSA@example.com>", from_="ZOË@example.com") is local


def test_headers_by_name_in_any_case(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    mail = make_mail()
    mail["X-Campaign"] = "spring"
    spoolmail_spool.submit(mail)
    headers = spoolmail_outbox.single().headers
    assert headers["x-campaign"] == headers["X-CAMPAIGN"] == "spring"
    assert "x-campaign" in headers
    assert "X-Other" not in headers
    assert len(headers.get_all("received")) == 1  # the service's own Received: line
    assert list(headers)[:2] == ["Received", "From"]
    with pytest.raises(KeyError):
        headers["X-Other"]


def test_a_dsn_is_a_message_that_left_too(
    spoolmail_spool: Spool, spoolmail_transport: CapturingTransport, spoolmail_outbox: Outbox
) -> None:
    spoolmail_transport.answers = {"gone@example.net": Reply(550, "5.1.1", "no such user")}
    spoolmail_spool.submit(make_mail(to="gone@example.net"))
    dsn = spoolmail_outbox.single()
    assert (dsn.where, dsn.sender, dsn.recipients) == ("drop", "", ("app@example.com",))
    assert spoolmail_outbox.assert_sent(sender="<>", to="app@example.com") is dsn
    assert "message/delivery-status" in [a.content_type for a in dsn.attachments]
    assert "gone@example.net" in dsn.body


def test_a_deferred_message_shows_up_once_the_clock_moves(
    spoolmail_spool: Spool,
    spoolmail_transport: CapturingTransport,
    spoolmail_clock: FakeClock,
    spoolmail_outbox: Outbox,
) -> None:
    spoolmail_transport.answers = {"busy@example.net": Reply(451, "4.3.0", "try later")}
    spoolmail_spool.submit(make_mail(to="busy@example.net"))
    assert len(spoolmail_outbox) == 0
    spoolmail_transport.answers = None
    spoolmail_clock.advance(minutes=15)
    assert spoolmail_outbox.single().recipients == ("busy@example.net",)


def test_clear_forgets_what_was_sent_before_it(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    spoolmail_spool.submit(make_mail("First"))
    spoolmail_outbox.clear()  # before the service ran: cleared all the same, as Django's outbox
    spoolmail_spool.submit(make_mail("Second"))
    assert [message.subject for message in spoolmail_outbox] == ["Second"]
    spoolmail_outbox.clear()
    assert len(spoolmail_outbox) == 0
    assert len(list(spoolmail_spool.drop())) == 2  # Drop itself is left alone


def test_capture_mode_keeps_every_message_on_a_real_folder(tmp_path: Path) -> None:
    clock, transport = FakeClock(), CapturingTransport()
    with Spool(tmp_path / "MailRoot", clock=clock, durability=Durability.NONE) as spool:
        service = MailService(
            spool,
            router=Router(catch_all=True),
            transport=transport,
            host_resolver=StaticResolver(),
            clock=clock,
            fqdn="mail.example.com",
        )
        outbox = Outbox(service)
        queue_id = spool.submit(make_mail(to="partner@example.net, zoë@partner.test"))
        message = outbox.single()
        service.close()
    assert (message.where, message.recipients) == (
        "drop",
        ("partner@example.net", "zoë@partner.test"),
    )
    assert transport.attempts == []
    assert (tmp_path / "MailRoot" / "Drop" / f"{queue_id}.eml").read_bytes().endswith(message.raw)


def test_an_outbox_of_a_spool_only_reads(
    spoolmail_spool: Spool, spoolmail_service: MailService, spoolmail_transport: CapturingTransport
) -> None:
    outbox = Outbox(spoolmail_spool, transport=spoolmail_transport)
    spoolmail_spool.submit(make_mail())
    spoolmail_spool.submit(make_mail("Remote", to="partner@example.net"))
    assert len(outbox) == 0
    assert len(spoolmail_spool.pickup()) == 2
    with pytest.raises(TypeError, match=r"build it from the MailService \(Outbox\(service\)\)"):
        outbox.deliver()
    spoolmail_service.run_once()
    assert sorted(message.where for message in outbox) == ["drop", "smarthost.test"]


def test_deliver_reports_what_the_service_did(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    queue_id = spoolmail_spool.submit(make_mail())
    report = spoolmail_outbox.deliver()
    assert report.picked_up == (queue_id,)
    assert report.delivered == ((queue_id, "bob@example.com"),)
    assert not spoolmail_outbox.deliver()


# -- checks that fail readably -------------------------------------------------------------------


def test_assert_sent_lists_what_was_sent(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    spoolmail_spool.submit(make_mail())
    spoolmail_spool.submit(make_mail("Invoice", to="partner@example.net"))
    assert failure(
        spoolmail_outbox.assert_sent, to="carol@example.com", subject_contains="Wel"
    ) == (
        "no message sent matches to='carol@example.com', subject_contains='Wel'.\n"
        "Sent (2):\n"
        "  1. 'Welcome' from app@example.com to bob@example.com [drop]\n"
        "  2. 'Invoice' from app@example.com to partner@example.net [smarthost.test]"
    )
    assert spoolmail_outbox.assert_sent(to="bob@example.com", subject_contains="Wel").to == (
        "bob@example.com",
    )


def test_single_says_how_many_there_were(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    assert failure(spoolmail_outbox.single) == "expected 1 message, found 0.\nNothing was sent."
    spoolmail_spool.submit(make_mail("One"))
    spoolmail_spool.submit(make_mail("Two"))
    assert failure(spoolmail_outbox.single, to="bob@example.com") == (
        "expected 1 message matching to='bob@example.com', found 2.\n"
        "Sent (2):\n"
        "  1. 'One' from app@example.com to bob@example.com [drop]\n"
        "  2. 'Two' from app@example.com to bob@example.com [drop]"
    )


def test_assert_not_sent_names_what_was(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    spoolmail_outbox.assert_not_sent()
    spoolmail_spool.submit(make_mail())
    spoolmail_outbox.assert_not_sent(to="admin@example.com")
    assert failure(spoolmail_outbox.assert_not_sent, to="bob@example.com") == (
        "1 message(s) matching to='bob@example.com' were sent:\n"
        "  'Welcome' from app@example.com to bob@example.com [drop]"
    )
    assert failure(spoolmail_outbox.assert_not_sent).startswith("1 message(s) were sent:\n")


def test_a_failure_says_what_has_not_left_and_why(
    spoolmail_spool: Spool,
    spoolmail_service: MailService,
    spoolmail_transport: CapturingTransport,
) -> None:
    spoolmail_transport.answers = {
        "busy@example.net": Reply(451, "4.3.0", "try later"),
        "gone@example.net": Reply(550, "5.1.1", "no such user"),
    }
    spoolmail_spool.submit(make_mail(to="busy@example.net"))
    # A bounce (null sender) that cannot be delivered ends in BadMail, never in another DSN.
    spoolmail_spool.submit(make_mail(to="gone@example.net"), sender="<>",
                           recipients=["gone@example.net"])  # fmt: skip
    spoolmail_service.run_once()
    spoolmail_spool.submit(make_mail("Later"))
    outbox = Outbox(spoolmail_spool, transport=spoolmail_transport)
    text = failure(outbox.assert_sent, subject="Later")
    assert text.startswith("no message sent matches subject='Later'.\nNothing was sent.\n")
    assert text.splitlines()[2:5] == [
        "Not sent:",
        "  in Pickup, not taken yet: 1 file(s) (this Outbox runs no service: Outbox(service) does)",
        "  queued ID: busy@example.net (451 4.3.0 try later; next 2026-11-28T10:15:00+00:00)",
    ]
    [badmail] = text.splitlines()[5:]
    assert badmail.startswith("  in BadMail ID: ")
    assert badmail.endswith(
        "cannot be returned to anybody. (gone@example.net: 550 5.1.1 no such user)"
    )


def test_unknown_criteria_are_refused(spoolmail_outbox: Outbox) -> None:
    with pytest.raises(TypeError, match=r"unknown criteria recipient \(known: to, sender, "):
        spoolmail_outbox.filter(recipient="bob@example.com")  # type: ignore[call-arg]


def test_a_sent_message_reads_as_one_line(spoolmail_spool: Spool, spoolmail_outbox: Outbox) -> None:
    spoolmail_spool.submit(make_mail())
    message: SentMessage = spoolmail_outbox[0]
    assert repr(message) == "<SentMessage 'Welcome' from app@example.com to bob@example.com [drop]>"
    assert repr(spoolmail_outbox) == (
        "<Outbox ['Welcome' from app@example.com to bob@example.com [drop]]>"
    )


def test_a_body_in_a_charset_python_does_not_know_still_reads(
    spoolmail_spool: Spool, spoolmail_outbox: Outbox
) -> None:
    spoolmail_spool.submit(
        b"From: app@example.com\r\nTo: bob@example.com\r\nSubject: old\r\n"
        b"Content-Type: text/plain; charset=x-nonesuch\r\n\r\nna\xefve caf\xc3\xa9\r\n"
    )
    assert spoolmail_outbox.single().body == "na\ufffdve café\n"
