"""Tests for spoolmail._core.dsn: golden files, the email package, flufl.bounce, hostile input.

The golden files in ``tests/core/golden/`` pin the exact bytes of nine DSNs. After an intended
change to the DSN layout, rewrite them and review the diff before committing::

    SPOOLMAIL_REGENERATE_GOLDEN=1 python -m pytest tests/core/test_dsn.py

(With the variable set, the golden tests write the files instead of comparing, and pass.)
The ``.gitattributes`` beside them keeps git from touching their CRLF line ends.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from flufl.bounce import all_failures, scan_message
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import (
    Envelope,
    Notify,
    Recipient,
    RecipientState,
    Ret,
    decode_envelope,
    encode_envelope,
)
from spoolmail._core.reply import Reply
from spoolmail._core.states import DsnKind, conclude_attempt

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("SPOOLMAIL_REGENERATE_GOLDEN") == "1"

FQDN = "mail.example.com"
QUEUE_ID = "19ac9b2f1c0-5e1f0c2a9b7d"
DSN_ID = f"{QUEUE_ID}-d1"
ARRIVAL = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC)
NOW = ARRIVAL + timedelta(days=2, minutes=3)

ORIGINAL = (
    b"Received: from client.example.net ([192.0.2.7]) by mail.example.com with spoolmail;\r\n"
    b"\tSat, 28 Nov 2026 10:15:02 +0000\r\n"
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.com, carol@nowhere.invalid\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Sat, 28 Nov 2026 10:15:01 +0000\r\n"
    b"Message-ID: <20261128101501.4711@client.example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Hello Bob, hello Carol,\r\n"
    b"\r\n"
    b"the figures are attached.\r\n"
)

BOB_550 = Reply(
    550,
    "5.1.1",
    "<bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
    host="mx1.example.com",
)
CAROL_512 = Reply(550, "5.1.2", "Host or domain name not found (nowhere.invalid: NXDOMAIN)")
BOB_451 = Reply(451, "4.7.1", "Greylisted, please try again in 300 seconds", host="mx1.example.com")


BOB_250 = Reply(250, "2.0.0", "Ok: queued as 4Kx9Tq1Zb2z3", host="mx1.example.com")
DROP_250 = Reply(250, "2.0.0", f"delivered to Drop/{QUEUE_ID}.eml")
ENVID = "QQ314159+2Bx"  # as received in MAIL FROM: xtext, "+2B" is "+"
BOB_ORCPT = "rfc822;bob+2Btag@example.com"


def make_envelope(
    *recipients: Recipient,
    sender: str = "alice@example.net",
    last_attempt: datetime = NOW - timedelta(minutes=1),
    envid: str | None = None,
    ret: Ret | None = None,
) -> Envelope:
    return Envelope(
        id=QUEUE_ID,
        sender=sender,
        recipients=recipients,
        arrival=ARRIVAL,
        next_attempt=NOW,
        origin="smtp:192.0.2.7",
        attempts=7,
        first_attempt=ARRIVAL,
        last_attempt=last_attempt,
        envid=envid,
        ret=ret,
    )


def failed(address: str, reply: Reply | None, *, updated: datetime | None = None) -> Recipient:
    return Recipient(address, RecipientState.FAILED, reply, updated=updated)


def failure_dsn(original: bytes = ORIGINAL, **kwargs: object) -> bytes:
    bob = failed("bob@example.com", BOB_550, updated=NOW - timedelta(minutes=2))
    carol = failed("carol@nowhere.invalid", CAROL_512)
    envelope = make_envelope(bob, carol)
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=original,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


def delay_dsn() -> bytes:
    bob = Recipient(
        "bob@example.com", RecipientState.PENDING, BOB_451, updated=ARRIVAL + timedelta(hours=11)
    )
    carol = Recipient("carol@example.org", RecipientState.PENDING)
    envelope = make_envelope(bob, carol, last_attempt=ARRIVAL + timedelta(hours=11))
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.DELAYED,
        original=ORIGINAL,
        reporting_mta=FQDN,
        dsn_id=f"{QUEUE_ID}-d1",
        now=ARRIVAL + timedelta(hours=12),
        will_retry_until=ARRIVAL + timedelta(days=2),
    )


def success_dsn(action: DsnAction, recipient: Recipient, *, envid: str | None = None) -> bytes:
    envelope = make_envelope(recipient, last_attempt=NOW - timedelta(minutes=1), envid=envid)
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=action,
        original=ORIGINAL,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


def relayed_dsn() -> bytes:
    """Bob's server took the message without offering DSN, and Bob's sender asked for SUCCESS."""
    bob = Recipient(
        "bob@example.com",
        RecipientState.DELIVERED,
        BOB_250,
        updated=NOW - timedelta(minutes=2),
        notify=Notify.SUCCESS | Notify.FAILURE,
        orcpt=BOB_ORCPT,
    )
    return success_dsn(DsnAction.RELAYED, bob, envid=ENVID)


def delivered_dsn() -> bytes:
    """A local recipient, written into the Drop folder."""
    dave = Recipient(
        "dave@mail.example.com",
        RecipientState.DELIVERED,
        DROP_250,
        updated=NOW - timedelta(minutes=2),
        notify=Notify.SUCCESS,
    )
    return success_dsn(DsnAction.DELIVERED, dave)


def parameters_dsn(original: bytes = ORIGINAL) -> bytes:
    """A failure DSN for a message sent with ENVID, RET=HDRS and, for Bob, ORCPT."""
    bob = Recipient(
        "bob@example.com",
        RecipientState.FAILED,
        BOB_550,
        updated=NOW - timedelta(minutes=2),
        notify=Notify.FAILURE,
        orcpt=BOB_ORCPT,
    )
    carol = failed("carol@nowhere.invalid", CAROL_512)
    envelope = make_envelope(bob, carol, envid=ENVID, ret=Ret.HDRS)
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=original,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


def large_original() -> bytes:
    body = b"".join(
        b"line %06d of a long report, padded to a realistic width....\r\n" % n for n in range(5000)
    )
    assert len(body) > 256 * 1024
    return ORIGINAL + body


# An internationalized message (RFC 6532): UTF-8 in its header fields and its addresses.
ORIGINAL_UTF8 = (
    "Received: from client.example.net ([192.0.2.7]) by mail.example.com with spoolmail;\r\n"
    "\tSat, 28 Nov 2026 10:15:02 +0000\r\n"
    "From: Zoë <zoë@example.net>\r\n"
    "To: Jürgen <jürgen@exämple.de>, bob@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Date: Sat, 28 Nov 2026 10:15:01 +0000\r\n"
    "Message-ID: <20261128101501.4712@client.example.net>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Hallo Jürgen,\r\n"
    "\r\n"
    "viele Grüße.\r\n"
).encode()
JURGEN_550 = Reply(550, "5.1.1", "Empfänger unbekannt", host="mx.exämple.de")


def global_failure_dsn(original: bytes = ORIGINAL_UTF8) -> bytes:
    jurgen = Recipient(
        "jürgen@exämple.de",
        RecipientState.FAILED,
        JURGEN_550,
        updated=NOW - timedelta(minutes=2),
        orcpt=r"utf-8;j\x{FC}rgen@ex\x{E4}mple.de",
    )
    bob = failed("bob@example.com", BOB_550, updated=NOW - timedelta(minutes=2))
    envelope = make_envelope(jurgen, bob, sender="zoë@example.net")
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=original,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


def global_headers_delay_dsn() -> bytes:
    """ASCII addresses, UTF-8 headers: the original's headers as message/global-headers and a
    7-bit message/delivery-status."""
    bob = Recipient(
        "bob@example.com", RecipientState.PENDING, BOB_451, updated=ARRIVAL + timedelta(hours=11)
    )
    envelope = make_envelope(bob, last_attempt=ARRIVAL + timedelta(hours=11))
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.DELAYED,
        original=ORIGINAL_UTF8,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=ARRIVAL + timedelta(hours=12),
        will_retry_until=ARRIVAL + timedelta(days=2),
    )


class ExpiringRetry:
    """A retry policy whose lifetime has run out: the next attempt is never."""

    def next_attempt(self, *, attempts: int, arrival: datetime, now: datetime) -> None:
        return None

    def delay_notice_due(self, *, arrival: datetime, now: datetime, already_sent: bool) -> bool:
        return False

    def delay_notice_at(self, *, arrival: datetime) -> None:
        return None


def expired_recipients() -> tuple[Envelope, tuple[Recipient, ...]]:
    """The envelope and reported recipients of a message whose lifetime ran out while one host
    said 451 and another name did not resolve, as the state machine concludes it and the queue
    stores it."""
    envelope = make_envelope(Recipient("bob@example.com"), Recipient("carol@nowhere.invalid"))
    outcome = conclude_attempt(
        envelope,
        {
            "bob@example.com": BOB_451,
            "carol@nowhere.invalid": Reply(451, "4.4.3", "MX lookup for nowhere.invalid failed"),
        },
        retry=lambda _recipient: ExpiringRetry(),
        now=NOW,
    )
    [order] = outcome.dsns
    assert order.kind is DsnKind.FAILURE
    stored = decode_envelope(encode_envelope(outcome.envelope))
    assert stored == outcome.envelope  # the reply the expiry rests on survives the Queue file
    reported = tuple(
        r for r in stored.recipients if r.address in {o.address for o in order.recipients}
    )
    return stored, reported


def expired_dsn() -> bytes:
    envelope, recipients = expired_recipients()
    return render_dsn(
        envelope=envelope,
        recipients=recipients,
        action=DsnAction.FAILED,
        original=ORIGINAL,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(part, Message) for part in payload)
    return [part for part in payload if isinstance(part, Message)]


def human_text(message: Message) -> str:
    part = parts(message)[0]
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def status_blocks(message: Message) -> list[Message]:
    """The delivery-status part's field blocks: per-message first, then one per recipient."""
    assert parts(message)[1].get_content_type() == "message/delivery-status"
    return parts(parts(message)[1])


def report_blocks(raw: bytes) -> list[Message]:
    """:func:`status_blocks` of either status part, read from the DSN's bytes.

    The email package knows message/global-delivery-status (RFC 6533) only as some message/*:
    it would take the first block for a message's header and the rest for its body, with the
    UTF-8 surrogate-escaped. So the part is cut out of the bytes and each block parsed alone.
    """
    message = parse(raw)
    if parts(message)[1].get_content_type() == "message/delivery-status":
        return status_blocks(message)
    start = raw.index(b"\r\nContent-Type: message/global-delivery-status\r\n")
    start = raw.index(b"\r\n\r\n", start) + 4
    end = raw.index(f"\r\n--{message.get_boundary()}".encode(), start)
    return [
        email.message_from_string(block + "\r\n", policy=email.policy.default)
        for block in raw[start:end].decode("utf-8").split("\r\n\r\n")
    ]


def check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_bytes(data)
        return
    expected = path.read_bytes()
    assert (
        data.decode("utf-8", "replace").splitlines()
        == expected.decode("utf-8", "replace").splitlines()
    ), f"{name} differs; SPOOLMAIL_REGENERATE_GOLDEN=1 rewrites it"
    assert data == expected, f"{name} differs in line ends or bytes"


# Golden files ---------------------------------------------------------------------------------


def test_failure_matches_golden() -> None:
    check_golden("dsn-failure.eml", failure_dsn())


def test_delay_matches_golden() -> None:
    check_golden("dsn-delay.eml", delay_dsn())


def test_headers_only_matches_golden() -> None:
    check_golden("dsn-failure-headers-only.eml", failure_dsn(large_original()))


def test_relayed_matches_golden() -> None:
    check_golden("dsn-relayed.eml", relayed_dsn())


def test_delivered_matches_golden() -> None:
    check_golden("dsn-delivered.eml", delivered_dsn())


def test_envid_orcpt_ret_hdrs_matches_golden() -> None:
    check_golden("dsn-failure-envid-orcpt-hdrs.eml", parameters_dsn())


def test_global_failure_matches_golden() -> None:
    check_golden("dsn-failure-global.eml", global_failure_dsn())


def test_global_headers_delay_matches_golden() -> None:
    check_golden("dsn-delay-global-headers.eml", global_headers_delay_dsn())


def test_expired_failure_matches_golden() -> None:
    check_golden("dsn-failure-expired.eml", expired_dsn())


def test_rendering_is_deterministic() -> None:
    assert failure_dsn() == failure_dsn()
    assert delay_dsn() == delay_dsn()
    assert relayed_dsn() == relayed_dsn()
    assert parameters_dsn() == parameters_dsn()


# The email package ----------------------------------------------------------------------------


def test_failure_parses_into_three_parts() -> None:
    message = parse(failure_dsn())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert message["From"] == f"postmaster@{FQDN}"
    assert b"\r\nTo: <alice@example.net>\r\n" in failure_dsn()
    assert message["To"].addresses[0].addr_spec == "alice@example.net"
    assert message["Subject"] == "Delivery Status Notification (Failure)"
    assert message["Message-ID"] == f"<{DSN_ID}@{FQDN}>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<20261128101501.4711@client.example.net>"
    assert message["References"] == "<20261128101501.4711@client.example.net>"
    assert not message.defects
    assert all(not part.defects for part in parts(message))


def test_failure_status_fields() -> None:
    per_message, bob, carol = status_blocks(parse(failure_dsn()))
    assert per_message["Reporting-MTA"] == f"dns; {FQDN}"
    assert per_message["Arrival-Date"] == "Sat, 28 Nov 2026 10:15:02 +0000"
    assert per_message["X-Spoolmail-Queue-Id"] == QUEUE_ID

    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.com"
    assert bob["Diagnostic-Code"] == f"smtp; {BOB_550}"  # folded in the bytes, whole when read
    assert bob["Last-Attempt-Date"] == "Mon, 30 Nov 2026 10:16:02 +0000"  # recipient.updated
    assert bob["Will-Retry-Until"] is None

    # Decided by spoolmail itself: no remote MTA, so neither Remote-MTA nor Diagnostic-Code.
    assert carol["Final-Recipient"] == "rfc822; carol@nowhere.invalid"
    assert carol["Status"] == "5.1.2"
    assert carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"] is None
    assert carol["Last-Attempt-Date"] == "Mon, 30 Nov 2026 10:17:02 +0000"  # envelope's


def test_human_part_names_each_recipient_and_reason() -> None:
    text = human_text(parse(failure_dsn()))
    assert "This is an automatically generated Delivery Status Notification." in text
    assert "Delivery to the following recipients failed." in text
    assert "       bob@example.com\n" in text
    assert "Remote host mx1.example.com said: 550 5.1.1" in text
    assert "Reason: 550 5.1.2 Host or domain name not found" in text


def test_delay_fields_and_wording() -> None:
    message = parse(delay_dsn())
    assert message["Subject"] == "Delivery Status Notification (Delay)"
    text = human_text(message)
    assert "THIS IS A WARNING MESSAGE ONLY." in text
    assert "YOU DO NOT NEED TO RESEND YOUR MESSAGE." in text
    assert "Delivery to the following recipients has been delayed." in text
    assert "Delivery will be retried until Mon, 30 Nov 2026 10:15:02 +0000." in text
    _, bob, carol = status_blocks(message)
    assert bob["Action"] == "delayed"
    assert bob["Status"] == "4.7.1"
    assert bob["Will-Retry-Until"] == "Mon, 30 Nov 2026 10:15:02 +0000"
    assert carol["Status"] == "4.0.0"  # no reply yet: the generic code of the action
    assert carol["Last-Attempt-Date"] == "Sat, 28 Nov 2026 21:15:02 +0000"  # envelope's


def test_delay_returns_only_the_headers() -> None:
    # RFC 3461 section 4.3: "If a DSN contains no indications of delivery failure, only the
    # headers of the message SHOULD be returned."
    raw = delay_dsn()
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2] in raw
    assert b"Hello Bob" not in raw


def test_returned_original_keeps_its_bytes() -> None:
    raw = failure_dsn()
    head = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    start = raw.index(head) + len(head)
    assert raw[start : start + len(ORIGINAL)] == ORIGINAL
    assert raw[start + len(ORIGINAL) :].startswith(b"\r\n--=_DSN_")


def test_large_original_returns_headers_only() -> None:
    raw = failure_dsn(large_original())
    message = parse(raw)
    returned = parts(message)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    header_block = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]
    assert header_block in raw
    assert b"line 000001" not in raw
    assert len(raw) < 4096


def test_max_original_size_is_inclusive() -> None:
    exact = parse(failure_dsn(max_original_size=len(ORIGINAL)))
    assert parts(exact)[2].get_content_type() == "message/rfc822"
    under = parse(failure_dsn(max_original_size=len(ORIGINAL) - 1))
    assert parts(under)[2].get_content_type() == "text/rfc822-headers"


def test_original_without_message_id_has_no_in_reply_to() -> None:
    original = ORIGINAL.replace(b"Message-ID: <20261128101501.4711@client.example.net>\r\n", b"")
    message = parse(failure_dsn(original))
    assert message["In-Reply-To"] is None
    assert message["References"] is None


def test_original_with_a_hostile_message_id_is_not_echoed() -> None:
    original = ORIGINAL.replace(b"<20261128101501.4711@client.example.net>", b"<a b>\r\n x")
    message = parse(failure_dsn(original))
    assert message["In-Reply-To"] is None


# Success DSNs ---------------------------------------------------------------------------------


def test_relayed_fields_and_wording() -> None:
    message = parse(relayed_dsn())
    assert message["Subject"] == "Delivery Status Notification (Relay)"
    assert message["In-Reply-To"] == "<20261128101501.4711@client.example.net>"
    assert not message.defects
    text = human_text(message)
    assert (
        "Your message has been successfully relayed to the following recipients, but the "
        "requested delivery status notifications may not be generated by the destination."
    ) in " ".join(text.split())  # filled to 78 columns
    assert "       bob@example.com\n" in text
    assert f"Remote host mx1.example.com said: {BOB_250}" in " ".join(text.split())
    assert "failed" not in text
    _, bob = status_blocks(message)
    assert bob["Action"] == "relayed"
    assert bob["Status"] == "2.0.0"
    assert bob["Remote-MTA"] == "dns; mx1.example.com"
    assert bob["Diagnostic-Code"] == f"smtp; {BOB_250}"
    assert bob["Will-Retry-Until"] is None


def test_delivered_fields_and_wording() -> None:
    message = parse(delivered_dsn())
    assert message["Subject"] == "Delivery Status Notification (Success)"
    text = human_text(message)
    assert "Delivery to the following recipients succeeded." in text
    assert f"       dave@mail.example.com\n           Result: {DROP_250}" in text
    _, dave = status_blocks(message)
    assert dave["Final-Recipient"] == "rfc822; dave@mail.example.com"
    assert dave["Action"] == "delivered"
    assert dave["Status"] == "2.0.0"
    # Written into Drop by spoolmail itself: no remote MTA, no SMTP diagnostic.
    assert dave["Remote-MTA"] is None
    assert dave["Diagnostic-Code"] is None
    assert dave["Last-Attempt-Date"] == "Mon, 30 Nov 2026 10:16:02 +0000"


@pytest.mark.parametrize("action", [DsnAction.DELIVERED, DsnAction.RELAYED])
def test_success_returns_only_the_headers(action: DsnAction) -> None:
    # RFC 3461 section 4.3: a DSN without a failure returns the headers, whatever RET says.
    for ret in (None, Ret.FULL, Ret.HDRS):
        envelope = make_envelope(Recipient("bob@example.com", reply=BOB_250), ret=ret)
        raw = render_dsn(
            envelope=envelope,
            recipients=envelope.recipients,
            action=action,
            original=ORIGINAL,
            reporting_mta=FQDN,
            dsn_id=DSN_ID,
            now=NOW,
        )
        assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
        assert b"Hello Bob" not in raw


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(250, "2.1.5", "Recipient ok"), "2.1.5"),
        (Reply(250, None, "ok"), "2.0.0"),
        (Reply(250, "5.1.1", "a server that mixes its codes up"), "2.0.0"),
        (Reply(451, "4.7.1", "not a success"), "2.0.0"),
        (None, "2.0.0"),
    ],
)
def test_success_status_is_a_2xx_code(reply: Reply | None, status: str) -> None:
    raw = render_one(Recipient("bob@example.com", reply=reply), action=DsnAction.DELIVERED)
    _, bob = status_blocks(parse(raw))
    assert bob["Status"] == status


def test_failure_status_is_never_a_success_code() -> None:
    raw = render_one(failed("bob@example.com", Reply(550, "2.0.0", "mixed up")))
    _, bob = status_blocks(parse(raw))
    assert bob["Status"] == "5.0.0"


# ENVID, ORCPT and RET (RFC 3461) --------------------------------------------------------------


def test_envid_orcpt_and_ret_hdrs() -> None:
    raw = parameters_dsn()
    message = parse(raw)
    assert not message.defects
    per_message, bob, carol = status_blocks(message)
    # RFC 3461 section 6.3 (a): decoded from xtext, first of the per-message fields.
    assert per_message["Original-Envelope-Id"] == "QQ314159+x"
    assert next(iter(per_message.keys())) == "Original-Envelope-Id"
    assert bob["Original-Recipient"] == "rfc822; bob+tag@example.com"
    assert list(bob.keys())[:2] == ["Original-Recipient", "Final-Recipient"]
    assert carol["Original-Recipient"] is None  # no ORCPT, no field (section 6.3 (d))
    # RET=HDRS: the headers alone, though the message is small enough to return whole.
    assert parts(message)[2].get_content_type() == "text/rfc822-headers"
    assert ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2] in raw
    assert b"Hello Bob" not in raw


def test_ret_full_returns_the_message_as_without_ret() -> None:
    bob = failed("bob@example.com", BOB_550)
    for ret in (None, Ret.FULL):
        envelope = make_envelope(bob, ret=ret)
        raw = render_dsn(
            envelope=envelope,
            recipients=envelope.recipients,
            action=DsnAction.FAILED,
            original=ORIGINAL,
            reporting_mta=FQDN,
            dsn_id=DSN_ID,
            now=NOW,
        )
        assert parts(parse(raw))[2].get_content_type() == "message/rfc822"
        assert ORIGINAL in raw


def test_ret_full_still_returns_only_the_headers_of_a_large_message() -> None:
    bob = failed("bob@example.com", BOB_550)
    envelope = make_envelope(bob, ret=Ret.FULL)
    raw = render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=large_original(),
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"


def render_with(*, envid: str | None = None, orcpt: str | None = None) -> EmailMessage:
    return parse(render_raw_with(envid=envid, orcpt=orcpt))


def render_raw_with(*, envid: str | None = None, orcpt: str | None = None) -> bytes:
    recipient = Recipient("bob@example.com", RecipientState.FAILED, BOB_550, orcpt=orcpt)
    envelope = make_envelope(recipient, envid=envid)
    return render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=ORIGINAL,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("envid", "expected"),
    [
        ("abc+2B+3Ddef", "abc+=def"),
        ("CaseKept", "CaseKept"),
        ("+2B2B", "+2B"),  # a decoded "+" starts nothing
        ("half+2", "half+2"),  # not xtext: kept as received
        ("evil+0D+0ABcc:+20x@y", "evil Bcc: x@y"),  # a decoded line break cannot end the field
        ("+C3+BC", r"\x{C3}\x{BC}"),  # no ASCII: visible, and the part stays 7-bit
        ("ünïcode", r"\x{FC}n\x{EF}code"),
    ],
)
def test_envid_is_decoded_and_cleaned(envid: str, expected: str) -> None:
    message = render_with(envid=envid)
    per_message, bob = status_blocks(message)
    assert per_message["Original-Envelope-Id"] == expected
    assert per_message["Bcc"] is None
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"


@pytest.mark.parametrize("envid", [None, "", "+20+09", "\r\n"])
def test_no_or_empty_envid_gives_no_field(envid: str | None) -> None:
    per_message, _ = status_blocks(render_with(envid=envid))
    assert per_message["Original-Envelope-Id"] is None
    assert per_message["Reporting-MTA"] == f"dns; {FQDN}"


@pytest.mark.parametrize(
    ("orcpt", "expected"),
    [
        ("rfc822;bob+2Btag@example.com", "rfc822; bob+tag@example.com"),
        ("RFC822;Bob@Example.COM", "RFC822; Bob@Example.COM"),  # type and address as given
        ("rfc822;a+3Db+20c@example.com", "rfc822; a=b c@example.com"),
        ("x400;/G+3DBob/S+3DSmith/", "x400; /G=Bob/S=Smith/"),
        # RFC 6533: the utf-8 type's xtext, and its raw form as sent with SMTPUTF8, both written
        # as the address itself in the message/global-delivery-status part such an address needs.
        (r"utf-8;j\x{FC}rgen@ex\x{E4}mple.de", "utf-8; jürgen@exämple.de"),
        ("utf-8;jürgen@exämple.de", "utf-8; jürgen@exämple.de"),
        # An ASCII address in the utf-8 type needs nothing international.
        ("utf-8;bob@example.com", "utf-8; bob@example.com"),
    ],
)
def test_orcpt_is_decoded(orcpt: str, expected: str) -> None:
    raw = render_raw_with(orcpt=orcpt)
    _, bob = report_blocks(raw)
    assert bob["Original-Recipient"] == expected
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    status_type = parts(parse(raw))[1].get_content_type()
    assert (status_type == "message/global-delivery-status") == (not expected.isascii())


@pytest.mark.parametrize(
    "orcpt",
    [
        "",
        "bob@example.com",  # no address type
        "rfc822;",  # no address
        ";bob@example.com",
        "rfc 822;bob@example.com",  # the type is an atom
        "rfc822;bob+2@example.com",  # "+" without two hex digits
        "rfc822;bob=x@example.com",  # "=" must be +3D
        "rfc822;bob @example.com",  # a raw space is not xtext
        "rfc822;bob\r\nBcc: x@y",
        "rfc822;b+0D+0Aob@example.com",  # decodes to a line break
        "rfc822;b+00ob@example.com",
        "rfc822;jürgen@example.de",  # not US-ASCII: that is the utf-8 type's job
        "rfc822;j+C3+BCrgen@example.de",
        "utf-8;bob+tag@example.com",  # "+" is no QCHAR
        r"utf-8;bob\x{0D}@example.com",  # a control, however escaped
        r"utf-8;bob\x{110000}@example.com",  # beyond Unicode
        r"utf-8;bob\x{D800}@example.com",  # a surrogate
        r"utf-8;bob\x{fc}@example.com",  # HEXPOINT is upper case
        "utf-8;bob\u202e@example.com",  # a bidi override
    ],
)
def test_malformed_orcpt_is_dropped(orcpt: str) -> None:
    message = render_with(orcpt=orcpt)
    _, bob = status_blocks(message)
    assert bob["Original-Recipient"] is None
    assert bob["Bcc"] is None
    assert next(iter(bob.keys())) == "Final-Recipient"


# flufl.bounce, a third-party bounce parser ----------------------------------------------------


@pytest.mark.parametrize("policy", [email.policy.compat32, email.policy.default])
def test_flufl_bounce_finds_the_failed_recipients(policy: email.policy.Policy) -> None:
    message = email.message_from_bytes(failure_dsn(), policy=policy)
    temporary, permanent = all_failures(message)
    assert temporary == frozenset()
    assert permanent == {b"bob@example.com", b"carol@nowhere.invalid"}
    assert scan_message(message) == permanent


def test_flufl_bounce_reads_a_delay_as_temporary() -> None:
    temporary, permanent = all_failures(email.message_from_bytes(delay_dsn()))
    assert temporary == {b"bob@example.com", b"carol@example.org"}
    assert permanent == frozenset()


def test_flufl_bounce_reads_a_headers_only_dsn() -> None:
    message = email.message_from_bytes(failure_dsn(large_original()))
    assert scan_message(message) == {b"bob@example.com", b"carol@nowhere.invalid"}


@pytest.mark.parametrize("render", [relayed_dsn, delivered_dsn])
@pytest.mark.parametrize("policy", [email.policy.compat32, email.policy.default])
def test_flufl_bounce_does_not_take_a_success_for_a_failure(
    render: Callable[[], bytes], policy: email.policy.Policy
) -> None:
    message = email.message_from_bytes(render(), policy=policy)
    assert all_failures(message) == (frozenset(), frozenset())
    assert scan_message(message) == frozenset()


def test_flufl_bounce_reads_the_original_recipient() -> None:
    # flufl.bounce prefers Original-Recipient: the address the sender wrote, decoded.
    message = email.message_from_bytes(parameters_dsn())
    temporary, permanent = all_failures(message)
    assert temporary == frozenset()
    assert permanent == {b"bob+tag@example.com", b"carol@nowhere.invalid"}


# Hostile and unusual input --------------------------------------------------------------------


def render_one(
    recipient: Recipient,
    *,
    original: bytes = ORIGINAL,
    sender: str = "alice@example.net",
    action: DsnAction = DsnAction.FAILED,
) -> bytes:
    envelope = make_envelope(recipient, sender=sender)
    return render_dsn(
        envelope=envelope,
        recipients=[recipient],
        action=action,
        original=original,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
    )


def test_reply_text_cannot_inject_headers_or_fields() -> None:
    reply = Reply(550, "5.7.1", "Rejected\r\nBcc: x@y\r\n\r\nX-Evil: 1\x00", host="mx\r\nBcc: z@y")
    message = parse(render_one(failed("bob@example.com", reply)))
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    _, bob = status_blocks(message)  # one block per recipient, nothing injected between
    assert bob["Bcc"] is None
    assert bob["X-Evil"] is None
    assert bob["Diagnostic-Code"] == "smtp; 550 5.7.1 Rejected Bcc: x@y X-Evil: 1"
    assert bob["Remote-MTA"] == "dns; mx Bcc: z@y"
    text = human_text(message)
    assert "Bcc: x@y" in text
    assert "\r\nBcc" not in text
    assert "\x00" not in text


def test_address_and_sender_cannot_inject_headers() -> None:
    raw = render_one(
        failed("bob@example.com\r\nBcc: x@y", BOB_550), sender="alice@example.net>\r\nBcc: w@y"
    )
    message = parse(raw)
    assert message["Bcc"] is None
    assert b"\r\nTo: <alice@example.net> Bcc: w@y>\r\n" in raw
    _, bob = status_blocks(message)
    assert bob["Bcc"] is None
    assert bob["Final-Recipient"] == r"utf-8; bob@example.com\x{FFFD}\x{FFFD}Bcc:\x{20}x@y"


def test_a_malformed_status_code_never_reaches_a_dsn() -> None:
    # Reply refuses it, so a DSN's Status field cannot carry a line break or odd digits.
    for bad in ("5.1.1\n", "5.\u0661.1", "5.1"):
        with pytest.raises(ValueError, match="enhanced status code"):
            Reply(550, bad, "no such user", host="mx1.example.com")
    assert Reply.parse(550, "5.1.1\n no such user").enhanced is None


def test_long_diagnostic_is_folded_within_line_limits() -> None:
    text = " ".join(["word"] * 60 + ["x" * 1500] + ["tail"])
    raw = render_one(failed("bob@example.com", Reply(550, "5.7.1", text, host="mx.example")))
    lines = raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    diagnostic = [line for line in lines if line.startswith(b"Diagnostic-Code:")]
    assert len(diagnostic) == 1
    assert len(diagnostic[0]) <= 78
    _, bob = status_blocks(parse(raw))
    value = bob["Diagnostic-Code"]
    # Unfolding gives the words back; the 1500-character word was cut once, at 900.
    assert value == f"smtp; 550 5.7.1 {' '.join(['word'] * 60)} {'x' * 900} {'x' * 600} tail"


def test_non_ascii_recipient_uses_the_utf8_address_type() -> None:
    reply = Reply(550, "5.1.1", "Empfänger unbekannt", host="mx.exämple.de")
    raw = render_one(failed("jürgen@exämple.de", reply))
    message = parse(raw)
    _, jurgen = report_blocks(raw)
    # RFC 6533 section 3 and 6: the address as it is, in a message/global-delivery-status part;
    # the other fields stay 7-bit.
    assert jurgen["Final-Recipient"] == "utf-8; jürgen@exämple.de"
    assert jurgen["Diagnostic-Code"] == r"smtp; 550 5.1.1 Empf\x{E4}nger unbekannt"
    assert jurgen["Remote-MTA"] == r"dns; mx.ex\x{E4}mple.de"
    assert b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit" in raw
    assert b"Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit" in raw
    # The original comes back as message/global (RFC 6533 section 6), although it is ASCII.
    assert b"Content-Type: message/global\r\nContent-Transfer-Encoding: 7bit" in raw
    assert raw.split(b"\r\n\r\n")[0].endswith(b"Content-Transfer-Encoding: 8bit")
    text = human_text(message)
    assert "       jürgen@exämple.de\n" in text
    assert "Empfänger unbekannt" in text


def test_non_ascii_sender_is_written_as_utf8() -> None:
    # RFC 6532 section 3.2: an address cannot be encoded-word'ed, so it goes in UTF-8 as it is;
    # such a sender was reached with SMTPUTF8 and the DSN back to it needs the same.
    raw = render_one(failed("bob@example.com", BOB_550), sender="jürgen@exämple.de")
    assert "\r\nTo: <jürgen@exämple.de>\r\n".encode() in raw
    # message_from_bytes leaves 8-bit headers surrogate-escaped; a UTF-8 reader sees the address.
    message = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "jürgen@exämple.de"


def test_utf8_address_escapes_xtext_specials() -> None:
    # Not printable, so not written as it is even in a global part: the xtext form instead.
    _, block = report_blocks(render_one(failed("ü+tag=1\\x\u200b@example.de", None)))
    assert block["Final-Recipient"] == r"utf-8; \x{FC}\x{2B}tag\x{3D}1\x{5C}x\x{200B}@example.de"
    # ASCII with a control: the utf-8 type in its xtext form, in the 7-bit part.
    _, block = status_blocks(parse(render_one(failed("bob\tx+1@example.de", None))))
    assert block["Final-Recipient"] == r"utf-8; bob\x{FFFD}x\x{2B}1@example.de"


def test_eight_bit_original_keeps_its_bytes_and_says_8bit() -> None:
    original = ORIGINAL.replace(b"us-ascii", b"utf-8") + "Grüße aus Köln\r\n".encode()
    raw = render_one(failed("bob@example.com", BOB_550), original=original)
    head = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    start = raw.index(head) + len(head)
    assert raw[start : start + len(original)] == original
    assert raw.split(b"\r\n\r\n")[0].endswith(b"Content-Transfer-Encoding: 8bit")
    returned = parts(parse(raw))[2]
    inner = parts(returned)[0]
    assert isinstance(inner, EmailMessage)
    assert inner.get_content().endswith("Grüße aus Köln\r\n")


@pytest.mark.parametrize(
    "damage",
    [b"bare\nline feed\r\n", b"bare\rcarriage return\r\n", b"nul \x00\r\n", b"y" * 999 + b"\r\n"],
)
def test_original_that_is_not_8bit_clean_returns_headers_only(damage: bytes) -> None:
    # SMTP DATA cannot carry "binary" without BINARYMIME (RFC 3030), so a whole message that
    # needs it would make the DSN itself undeliverable.
    raw = render_one(failed("bob@example.com", BOB_550), original=ORIGINAL + damage)
    assert parts(parse(raw))[2].get_content_type() == "text/rfc822-headers"
    assert damage not in raw


def content_types(raw: bytes) -> list[str]:
    return [part.get_content_type() for part in parts(parse(raw))]


def test_utf8_headers_alone_return_the_original_as_message_global() -> None:
    # RFC 6532 section 3.7, RFC 6533 section 6: message/rfc822 may not hold UTF-8 headers.
    raw = render_one(failed("bob@example.com", BOB_550), original=ORIGINAL_UTF8)
    assert content_types(raw) == ["text/plain", "message/delivery-status", "message/global"]
    head = b"Content-Type: message/global\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    assert raw[raw.index(head) + len(head) :].startswith(ORIGINAL_UTF8)
    # Headers only (here by size) are message/global-headers, not text/rfc822-headers.
    large = ORIGINAL_UTF8 + b"x" * 80 + b"\r\n"
    raw = render_dsn(
        envelope=make_envelope(failed("bob@example.com", BOB_550)),
        recipients=[failed("bob@example.com", BOB_550)],
        action=DsnAction.FAILED,
        original=large,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=NOW,
        max_original_size=len(ORIGINAL_UTF8),
    )
    assert content_types(raw)[2] == "message/global-headers"
    assert b"x" * 80 not in raw


def test_eight_bit_headers_that_are_not_utf8_stay_message_rfc822() -> None:
    # Latin-1 octets in a header are no RFC 6532 header: nothing claims they are UTF-8.
    original = ORIGINAL.replace(b"Quarterly figures", b"Gr\xfc\xdfe")
    raw = render_one(failed("bob@example.com", BOB_550), original=original)
    assert content_types(raw) == ["text/plain", "message/delivery-status", "message/rfc822"]


def test_utf8_sender_returns_the_original_as_message_global() -> None:
    raw = render_one(failed("bob@example.com", BOB_550), sender="zoë@example.net")
    # No UTF-8 address in the status part, so it stays message/delivery-status.
    assert content_types(raw) == ["text/plain", "message/delivery-status", "message/global"]


def test_utf8_recipient_makes_every_part_global() -> None:
    raw = global_failure_dsn(ORIGINAL)
    assert content_types(raw) == [
        "text/plain",
        "message/global-delivery-status",
        "message/global",
    ]
    _, jurgen, bob = report_blocks(raw)
    assert jurgen["Final-Recipient"] == "utf-8; jürgen@exämple.de"
    assert jurgen["Original-Recipient"] == "utf-8; jürgen@exämple.de"
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    # A delay returns headers only: message/global-headers.
    jurgen_later = Recipient("jürgen@exämple.de", RecipientState.PENDING, BOB_451)
    raw = render_one(jurgen_later, action=DsnAction.DELAYED)
    assert content_types(raw)[1:] == ["message/global-delivery-status", "message/global-headers"]


def test_expired_recipient_reports_the_last_remote_reply() -> None:
    # RFC 3464 section 2.3.5 and 2.3.6: a bounce parser reads the status part, not the text.
    raw = expired_dsn()
    _, bob, carol = status_blocks(parse(raw))
    assert bob["Status"] == "4.4.7"
    assert bob["Remote-MTA"] == "dns; mx1.example.com"
    assert bob["Diagnostic-Code"] == f"smtp; {BOB_451}"
    # The last reply came from no remote host (DNS): nothing to report as one.
    assert carol["Status"] == "4.4.7"
    assert carol["Remote-MTA"] is None
    assert carol["Diagnostic-Code"] is None
    text = human_text(parse(raw))
    assert "Reason: 451 4.4.7 delivery time expired after 8 attempts; last" in text


def test_a_reply_keeps_its_cause_one_level_deep() -> None:
    expired = Reply(451, "4.4.7", "expired", cause=BOB_451)
    assert Reply.from_json(expired.to_json()) == expired
    assert expired.remote == BOB_451
    assert "cause" not in BOB_451.to_json()  # the stored form of other replies is unchanged
    nested = expired.to_json()
    nested["cause"]["cause"] = nested  # a damaged file: a cause of a cause, endlessly
    assert Reply.from_json(nested) == expired


def test_boundary_avoids_a_collision_with_the_original() -> None:
    original = ORIGINAL + f"--=_DSN_{DSN_ID}\r\n--=_DSN_{DSN_ID}--\r\n".encode()
    raw = render_one(failed("bob@example.com", BOB_550), original=original)
    assert raw == render_one(failed("bob@example.com", BOB_550), original=original)
    message = parse(raw)
    boundary = message.get_boundary()
    assert boundary is not None
    assert re.fullmatch(f"=_DSN_{DSN_ID}_[0-9a-f]{{16}}", boundary)
    assert [p.get_content_type() for p in parts(message)][2] == "message/rfc822"
    assert original in raw


def test_long_dsn_id_gives_a_short_boundary() -> None:
    envelope = make_envelope(failed("bob@example.com", BOB_550))
    raw = render_dsn(
        envelope=envelope,
        recipients=envelope.recipients,
        action=DsnAction.FAILED,
        original=ORIGINAL,
        reporting_mta=FQDN,
        dsn_id="a" * 128,
        now=NOW,
    )
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    assert len(boundary) <= 70


def test_null_sender_is_never_answered() -> None:
    with pytest.raises(ValueError, match="null sender"):
        render_one(failed("bob@example.com", BOB_550), sender="")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"dsn_id": "../etc"}, "dsn_id"),
        ({"reporting_mta": "mail.example.com\r\nBcc: x@y"}, "reporting_mta"),
        ({"reporting_mta": "mail.example.com\n"}, "reporting_mta"),  # "$" took a final newline
        ({"dsn_id": "19ac9b2f1c0-00005e1f0c2a9b7d\n"}, "dsn_id"),
        ({"now": datetime(2026, 11, 28, 10, 15)}, "aware"),  # noqa: DTZ001 (the point)
        ({"will_retry_until": NOW}, "delay"),
    ],
)
def test_bad_arguments_are_refused(change: dict[str, object], message: str) -> None:
    envelope = make_envelope(failed("bob@example.com", BOB_550))
    arguments: dict[str, object] = {
        "envelope": envelope,
        "recipients": envelope.recipients,
        "action": DsnAction.FAILED,
        "original": ORIGINAL,
        "reporting_mta": FQDN,
        "dsn_id": DSN_ID,
        "now": NOW,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        render_dsn(**arguments)  # type: ignore[arg-type]


# Properties -----------------------------------------------------------------------------------

# Any code point, surrogates and controls included: reply text comes from the network.
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
enhanced_codes = st.from_regex(r"\A[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
replies = st.builds(
    Reply,
    code=st.integers(200, 599),
    enhanced=st.none() | enhanced_codes,
    text=any_text,
    host=st.none() | any_text,
)
times = st.datetimes(
    min_value=datetime(1980, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive)
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23))),
)
# ENVID and ORCPT as a client may send them: well-formed xtext, near misses, or anything at all.
xtext = st.text(
    st.sampled_from("+=\\;@ aZ09!~{}x") | st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    max_size=60,
) | st.from_regex(r"\A(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
envids = st.none() | xtext | any_text
orcpts = (
    st.none()
    | any_text
    | st.builds(
        "{}{}{}".format,
        st.sampled_from(["rfc822", "utf-8", "UTF-8", "x400", "", "rfc 822"]),
        st.sampled_from([";", "", ";;"]),
        xtext | any_text,
    )
)
recipient_lists = st.lists(
    st.builds(
        Recipient,
        address=any_text,
        state=st.sampled_from(RecipientState),
        reply=st.none() | replies,
        updated=st.none() | times,
        notify=st.none() | st.sampled_from(Notify),
        orcpt=orcpts,
    ),
    min_size=1,
    max_size=6,
)
originals = st.one_of(st.just(ORIGINAL), st.binary(max_size=400), st.just(large_original()))


@settings(max_examples=300, deadline=None)
@given(
    recipients=recipient_lists,
    sender=any_text.filter(bool),
    queue_id=any_text,
    action=st.sampled_from(DsnAction),
    original=originals,
    now=times,
    until=st.none() | times,
    max_size=st.integers(0, 300 * 1024),
    envid=envids,
    ret=st.none() | st.sampled_from(Ret),
)
def test_any_input_renders_a_parseable_dsn(
    *,
    recipients: list[Recipient],
    sender: str,
    queue_id: str,
    action: DsnAction,
    original: bytes,
    now: datetime,
    until: datetime | None,
    max_size: int,
    envid: str | None,
    ret: Ret | None,
) -> None:
    envelope = Envelope(
        id=queue_id,
        sender=sender,
        recipients=recipients,
        arrival=now,
        next_attempt=now,
        envid=envid,
        ret=ret,
    )
    raw = render_dsn(
        envelope=envelope,
        recipients=recipients,
        action=action,
        original=original,
        reporting_mta=FQDN,
        dsn_id=DSN_ID,
        now=now,
        will_retry_until=until if action is DsnAction.DELAYED else None,
        max_original_size=max_size,
    )
    message = parse(raw)
    assert set(message.keys()) <= {
        "From", "To", "Date", "Message-ID", "Subject", "In-Reply-To", "References",
        "MIME-Version", "Auto-Submitted", "Content-Type", "Content-Transfer-Encoding",
    }  # fmt: skip
    types = [part.get_content_type() for part in parts(message)]
    # RFC 6533: the global forms when an address (or, for the original, a header) needs them;
    # a UTF-8 ORCPT may ask for them too.
    unicode = any(not r.address.isascii() for r in recipients)
    assert types[0] == "text/plain"
    assert types[1] in {"message/delivery-status", "message/global-delivery-status"}
    if unicode:
        assert types[1] == "message/global-delivery-status"
    if unicode or not sender.isascii():
        assert types[2].startswith("message/global")
    assert types[2] in {
        "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers",
    }  # fmt: skip
    if action is not DsnAction.FAILED or ret is Ret.HDRS:
        # RFC 3461 section 4.3
        assert types[2] in {"text/rfc822-headers", "message/global-headers"}
    blocks = report_blocks(raw)
    assert len(blocks) == 1 + len(recipients)
    assert set(blocks[0].keys()) <= {
        "Original-Envelope-Id", "Reporting-MTA", "Arrival-Date", "X-Spoolmail-Queue-Id",
    }  # fmt: skip
    assert blocks[0]["Reporting-MTA"] == f"dns; {FQDN}"
    # A failure or delay keeps the code of whatever 4xx or 5xx it got; a success is 2.x.x.
    status_class = {"failed": "[45]", "delayed": "[45]", "delivered": "2", "relayed": "2"}
    for block in blocks[1:]:
        assert set(block.keys()) <= {
            "Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA",
            "Diagnostic-Code", "Last-Attempt-Date", "Will-Retry-Until",
        }  # fmt: skip
        assert block["Action"] == action.value
        assert block["Final-Recipient"].startswith(("rfc822;", "utf-8;"))
        if block["Original-Recipient"] is not None:
            assert re.fullmatch(r"[^;\s]+; \S.*", block["Original-Recipient"])
        pattern = rf"{status_class[action.value]}\.[0-9]{{1,3}}\.[0-9]{{1,3}}"
        assert re.fullmatch(pattern, block["Status"])
    # Everything spoolmail wrote (all but the returned message) is CRLF lines within 998 octets.
    ours = raw[: raw.index(f"--{message.get_boundary()}\r\nContent-Type: {types[2]}".encode())]
    assert b"\0" not in ours
    assert b"\r" not in ours.replace(b"\r\n", b"")
    assert b"\n" not in ours.replace(b"\r\n", b"")
    assert max(len(line) for line in ours.split(b"\r\n")) <= 998


@given(recipients=recipient_lists)
def test_a_null_sender_is_always_refused(recipients: list[Recipient]) -> None:
    envelope = Envelope(
        id=QUEUE_ID, sender="", recipients=recipients, arrival=NOW, next_attempt=NOW
    )
    with pytest.raises(ValueError, match="null sender"):
        render_dsn(
            envelope=envelope,
            recipients=recipients,
            action=DsnAction.FAILED,
            original=ORIGINAL,
            reporting_mta=FQDN,
            dsn_id=DSN_ID,
            now=NOW,
        )
