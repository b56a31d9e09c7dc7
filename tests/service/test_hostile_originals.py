"""Hostile originals: what a bounced, dropped or signed message may hold, and what comes out.

The service runs over a Spool on MemoryFS and on OSFS (the ``filesystem`` fixture), on the fake
clock, with a ``CapturingTransport`` that answers 5xx so that a DSN is made; the pure functions
(``render_dsn``, ``render_drop_head``, ``DkimPolicy``) get the same inputs under hypothesis. A DSN
must parse back as a multipart/report whose own header lines carry nothing of the original's,
be data SMTP can carry without BINARYMIME (7bit or 8bit: CRLF lines within 998 octets, no NUL),
and stay bounded; a Drop file must go back through Pickup to exactly its envelope (KB 306043);
DKIM signing must never stop a message.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmail import MailService, Reply, RetryPolicy, Router, Spool
from spoolmail._core.dkim import DkimKey, DkimPolicy, DkimSigner
from spoolmail._core.drop import render_drop_head
from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import Envelope, Recipient, RecipientState
from spoolmail._core.pickup import PickupAccepted, PickupOptions, parse_pickup
from spoolmail._store import pyfs
from spoolmail.exceptions import MessageError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

FQDN = "mail.example.com"
NO = Reply(550, "5.1.1", "no such user", host="relay.test")
DSN_HEADERS = {
    "from", "to", "date", "message-id", "subject", "in-reply-to", "references",
    "mime-version", "auto-submitted", "content-type", "content-transfer-encoding",
}  # fmt: skip
NOW = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC)


def make_service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> MailService:
    return MailService(
        spool,
        transport=transport,
        clock=clock,
        fqdn=FQDN,
        router=Router(local_domains=["example.com"], smart_host="relay.test:2525"),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        retry=RetryPolicy.iis(),
        pickup_settle=timedelta(0),
    )


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = make_service(spool, transport, clock)
    yield service
    service.close()


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def the_dsn(transport: CapturingTransport) -> bytes:
    [dsn] = [m for m in transport.messages if m.sender == ""]
    return dsn.data


def check_dsn(raw: bytes) -> EmailMessage:
    """What every DSN must be, whatever it reports: see the module docstring."""
    # Data SMTP carries without BINARYMIME (RFC 2045 section 2.7-2.8, RFC 5321 section 4.5.3.1.6).
    assert b"\0" not in raw
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    encodings = re.findall(rb"(?im)^content-transfer-encoding: *(\S+)", raw)
    assert encodings
    assert set(encodings) <= {b"7bit", b"8bit"}
    message = parse(raw)
    assert {name.lower() for name in message} <= DSN_HEADERS
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = list(message.iter_parts())
    assert len(parts) == 3
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() in {
        "message/delivery-status",
        "message/global-delivery-status",
    }
    # Its own header lines: printable, one line each (folded lines start with white space);
    # UTF-8 only where a sender's address is (RFC 6532).
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    for line in head.split("\r\n"):
        assert line.isprintable(), line
        assert re.fullmatch(r"[A-Za-z-]+: .*|[ \t].*", line), line
        assert line.isascii() or line.startswith("To: "), line
    return message


def admitted(spool: Spool, message: bytes, **envelope: Any) -> str:
    envelope.setdefault("sender", "alice@remote.test")
    envelope.setdefault("recipients", ["no@remote.test"])
    return spool.admit(message, origin="smtp:192.0.2.7", **envelope)


# -- the original's header block, as a listener or an API caller stored it ---------------------


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(b"Subject: hi\nFrom: a@remote.test\nno separator here", id="bare-lf"),
        pytest.param(b"Subject: a\rBcc: x@y\r\nFrom: a@remote.test\r\n\r\nbody\r\n", id="bare-cr"),
        pytest.param(b"Subject: a\x00b\r\n\r\nbody\r\n", id="nul"),
        pytest.param(b"Subject: " + b"x" * 100_000 + b"\r\n\r\nbody\r\n", id="100kb-line"),
        pytest.param(b"Subject: " + "Grüße".encode() * 2000 + b"\r\n\r\nbody\r\n", id="utf8-line"),
    ],
)
def test_a_header_block_smtp_cannot_carry_is_returned_mail_safe(
    spool: Spool, service: MailService, transport: CapturingTransport, original: bytes
) -> None:
    # Before: the returned headers went as they were and the whole DSN said
    # "Content-Transfer-Encoding: binary", which the transport cannot send (no BINARYMIME).
    transport.answers = {"no@remote.test": NO}
    admitted(spool, original)
    report = service.run_once()
    assert len(report.dsns) == 1
    raw = the_dsn(transport)
    message = check_dsn(raw)
    returned = list(message.iter_parts())[2]
    assert returned.get_content_type() in {"text/rfc822-headers", "message/global-headers"}
    assert message["Bcc"] is None
    # Nothing but line ends, NULs and folds changed: the text is all there.
    boundary = message.get_boundary()
    assert boundary is not None
    text = raw.rsplit(f"\r\n--{boundary}\r\n".encode(), 1)[1].split(b"\r\n\r\n", 1)[1]
    unfolded = text.replace(b"\r\n ", b"").replace(b"\r\n", b"\n")
    expected = original.split(b"\r\n\r\n")[0].replace(b"\0", b" ")
    assert re.sub(rb"\r\n|\r|\n", b"\n", expected).rstrip(b"\n") in unfolded


@settings(max_examples=200, deadline=None)
@given(
    head=st.binary(max_size=3000)
    | st.lists(
        st.sampled_from([b"Subject: x", b"\r", b"\n", b"\r\n", b"\0", b"\xc3\xa4", b"y" * 600]),
        max_size=40,
    ).map(b"".join),
    body=st.sampled_from([b"", b"\r\n\r\nbody\r\n", b"\n\nbody"]),
    action=st.sampled_from(DsnAction),
)
def test_any_original_gives_a_dsn_smtp_can_carry(
    head: bytes, body: bytes, action: DsnAction
) -> None:
    original = head + body
    recipient = Recipient("bob@example.com", RecipientState.FAILED, NO)
    envelope = Envelope(
        id="q1", sender="alice@example.net", recipients=(recipient,), arrival=NOW, next_attempt=NOW
    )
    raw = render_dsn(
        envelope=envelope,
        recipients=[recipient],
        action=action,
        original=original,
        reporting_mta=FQDN,
        dsn_id="q1-d1",
        now=NOW,
    )
    check_dsn(raw)
    # Bounded by the original: a fold adds three octets every 900 and a NUL stays one octet.
    assert len(raw) <= 4000 + len(original) * 904 // 900 + 2 * original.count(b"\n") + 2 * (
        original.count(b"\r")
    )


# -- Subject, Message-ID, sizes -------------------------------------------------------------------


def message(*, subject: bytes = b"test", message_id: bytes = b"<m1@client.example>") -> bytes:
    return (
        b"From: Alice <alice@remote.test>\r\nTo: no@remote.test\r\nSubject: "
        + subject
        + b"\r\nMessage-ID: "
        + message_id
        + b"\r\n\r\nhello\r\n"
    )


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param(b"=?utf-8?q?a=0D=0ABcc:_x@evil.test?=", id="encoded-crlf"),
        pytest.param(b"=?utf-8?b?YQ0KQmNjOiB4QGV2aWwudGVzdA==?=", id="encoded-crlf-b64"),
        pytest.param(b"Gr\xfc\xdfe \xff\xfe", id="latin-1"),
        pytest.param(b"\xed\xa0\x80 lone surrogate", id="utf8-surrogate"),
        pytest.param(b" ".join([b"word"] * 20_000), id="100kb"),
    ],
)
def test_hostile_subjects_stay_in_the_returned_message(
    spool: Spool, service: MailService, transport: CapturingTransport, subject: bytes
) -> None:
    transport.answers = {"no@remote.test": NO}
    admitted(spool, message(subject=subject))
    service.run_once()
    raw = the_dsn(transport)
    dsn = check_dsn(raw)
    assert dsn["Subject"] == "Delivery Status Notification (Failure)"
    assert dsn["Bcc"] is None
    assert dsn["In-Reply-To"] == "<m1@client.example>"
    assert b"evil.test" not in raw.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    ("message_id", "echoed"),
    [
        (b"<ok@client.example>", "<ok@client.example>"),
        (b"<a@b>\r\n Bcc: x@evil.test", None),
        (b"<a@b>\rBcc: x@evil.test", "<a@b>"),  # the CR ends the field: Bcc is returned only
        (b"<" + b"x" * 2000 + b"@client.example>", None),
        (b"<a b@c>", None),
        (b"<\xc3\xa4@c>", None),
    ],
)
def test_a_message_id_is_echoed_only_when_it_is_safe(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    message_id: bytes,
    echoed: str | None,
) -> None:
    transport.answers = {"no@remote.test": NO}
    admitted(spool, message(message_id=message_id))
    service.run_once()
    dsn = check_dsn(the_dsn(transport))
    assert dsn["In-Reply-To"] == echoed
    assert dsn["References"] == echoed
    assert dsn["Bcc"] is None


def test_a_1_mib_header_section_comes_back_as_headers_only_and_bounded(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"no@remote.test": NO}
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"y" * 70) for n in range(12_000))
    assert len(padding) > 960 * 1024
    spool.submit(message()[:-9] + padding + b"\r\nBODY-MARKER\r\n")
    service.run_once()
    raw = the_dsn(transport)
    dsn = check_dsn(raw)
    assert list(dsn.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert b"BODY-MARKER" not in raw
    assert len(raw) < 1024 * 1024 + 128 * 1024 + 8 * 1024


@pytest.mark.parametrize("separator", [b"\r\n\r\n", b"\r\n"], ids=["body", "no-separator"])
def test_a_10_mib_message_is_never_returned_whole(
    spool: Spool, service: MailService, transport: CapturingTransport, separator: bytes
) -> None:
    # Over the size limit (5.3.4 at delivery) or refused by the server: headers only either way,
    # and a message without an empty line is read as far as the head limit goes, no further.
    transport.answers = {"no@remote.test": NO}
    line = b"z" * 76 + b"\r\n"
    head = b"From: a@remote.test\r\nSubject: big\r\nMessage-ID: <big@remote.test>"
    admitted(spool, head + separator + b"BODY-MARKER" + line * (10 * 1024 * 1024 // 78))
    report = service.run_once()
    assert len(report.dsns) == 1
    raw = the_dsn(transport)
    check_dsn(raw)
    assert len(raw) < 1024 * 1024 + 128 * 1024 + 8 * 1024
    if separator == b"\r\n\r\n":
        assert b"BODY-MARKER" not in raw
        assert len(raw) < 16 * 1024


# -- what the remote server said ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("no\r\nBcc: x@evil.test\r\n\r\nX-Evil: 1", id="crlf"),
        pytest.param("a\x00b\x1b[31m", id="nul-escape"),
        pytest.param("\ufffd\ufffd replaced bytes \u202eevil\u2028line\x85", id="unicode-breaks"),
        pytest.param("x " * 25_000, id="50kb-words"),
        pytest.param("x" * 50_000, id="50kb-word"),
    ],
)
def test_hostile_reply_texts_are_one_field_and_bounded(
    spool: Spool, service: MailService, transport: CapturingTransport, text: str
) -> None:
    transport.answers = {"no@remote.test": Reply(550, "5.7.1", text, host="relay.test\r\nX: y")}
    admitted(spool, message())
    service.run_once()
    raw = the_dsn(transport)
    dsn = check_dsn(raw)
    assert dsn["Bcc"] is None
    status = list(dsn.iter_parts())[1]
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    assert len(blocks) == 2  # the per-message block and one per recipient: nothing added
    block = blocks[1]
    assert isinstance(block, Message)
    assert str(block["Diagnostic-Code"]).startswith("smtp; 550 5.7.1 ")
    assert block["X-Evil"] is None
    assert block["Remote-MTA"] == "dns; relay.test X: y"
    assert len(raw) < 3 * len(text.encode()) + 8 * 1024


def test_a_reply_text_with_lone_surrogates_still_bounces(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"no@remote.test": Reply(550, "5.1.1", "bad \udcff\udcfe", host="x.test")}
    queue_id = admitted(spool, message())
    report = service.run_once()
    assert report.errors == ()
    assert report.dsns == (f"{queue_id}-d1",)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=2000), host=st.text(max_size=100), subject=st.binary(max_size=300))
def test_any_reply_text_and_subject_give_a_well_formed_dsn(
    text: str, host: str, subject: bytes
) -> None:
    recipient = Recipient(
        "bob@example.com", RecipientState.FAILED, Reply(550, "5.1.1", text, host=host or None)
    )
    envelope = Envelope(
        id="q1", sender="alice@example.net", recipients=(recipient,), arrival=NOW, next_attempt=NOW
    )
    original = message(subject=subject.replace(b"\r\n", b" "))
    raw = render_dsn(
        envelope=envelope,
        recipients=[recipient],
        action=DsnAction.FAILED,
        original=original,
        reporting_mta=FQDN,
        dsn_id="q1-d1",
        now=NOW,
    )
    check_dsn(raw)
    assert len(raw) < 3 * (len(text.encode("utf-8", "surrogatepass")) + len(host) * 4) + 8 * 1024


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        '"john doe"@remote.test',
        '"a,b;c<d>"@remote.test',
        "o'brien+tag@remote.test",
        "alice@[IPv6:2001:db8::1]",
        "alice@[192.0.2.7]",
        "zoë@bücher.example",
    ],
)
def test_the_dsn_goes_to_an_odd_but_valid_sender_unchanged(
    spool: Spool, service: MailService, transport: CapturingTransport, sender: str
) -> None:
    transport.answers = {"no@remote.test": NO}
    admitted(spool, message(), sender=sender)
    report = service.run_once()
    assert len(report.dsns) == 1
    [dsn] = [m for m in transport.messages if m.sender == ""]
    assert dsn.recipients == (sender,)
    check_dsn(dsn.data)


@pytest.mark.parametrize(
    "recipient",
    ['"no body"@remote.test', '"x,y"@remote.test', "jürgen@exämple.de", '"a\\"b"@remote.test'],
)
def test_an_odd_but_valid_recipient_is_reported_as_itself(
    spool: Spool, service: MailService, transport: CapturingTransport, recipient: str
) -> None:
    transport.answers = {recipient: NO}
    admitted(spool, message(), recipients=[recipient])
    service.run_once()
    raw = the_dsn(transport)
    check_dsn(raw)
    [final] = re.findall(rb"\r\nFinal-Recipient: ([^\r]*)\r\n", raw)
    assert final.decode() in {f"rfc822; {recipient}", f"utf-8; {recipient}"}


@pytest.mark.parametrize(
    "address", ['"a\r\nb"@remote.test', "a@remote.test\r\nRCPT TO:<x@evil.test>", '"\n"@x.test']
)
def test_a_line_break_in_an_address_is_refused_at_the_door(spool: Spool, address: str) -> None:
    with pytest.raises(MessageError):
        spool.submit(message(), sender="alice@remote.test", recipients=[address])
    with pytest.raises(MessageError):
        admitted(spool, message(), recipients=[address])
    with pytest.raises(MessageError):
        admitted(spool, message(), sender=address)
    assert list(spool.queued()) == []


# -- a message that is itself a DSN ---------------------------------------------------------------


def test_a_dsn_that_bounces_goes_to_badmail_never_answered(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"no@remote.test": NO}
    admitted(spool, message())
    service.run_once()
    bounce = the_dsn(transport)
    transport.messages.clear()
    # A DSN from elsewhere, from <>, to an address that refuses it.
    queue_id = admitted(spool, bounce, sender="")
    report = service.run_once()
    assert report.dsns == ()
    assert report.badmail == (queue_id,)
    assert transport.messages == []
    assert spool.badmail_message(queue_id) == bounce
    assert "null sender" in spool.badmail_item(queue_id).reason


# -- Drop files and KB 306043 ---------------------------------------------------------------------


def drop_then_pickup(
    spool: Spool, service: MailService, transport: CapturingTransport, queue_id: str
) -> tuple[bytes, CapturingTransport]:
    """Deliver ``queue_id`` into Drop, move the Drop file back into Pickup, send it on."""
    drop = spool.drop_message(queue_id)
    spool._store.write("Pickup", "again.eml", drop)
    transport.messages.clear()
    service.run_once()
    return drop, transport


@pytest.mark.parametrize(
    "first_lines",
    [
        b"x-receiver: evil@remote.test\r\n",
        b"X-Sender: mallory@remote.test\r\n",
        b"X-RECEIVER : evil@remote.test\r\nx-sender: mallory@remote.test\r\n",
    ],
)
def test_a_message_that_starts_like_an_envelope_round_trips_through_pickup(
    spool: Spool, service: MailService, transport: CapturingTransport, first_lines: bytes
) -> None:
    # Spool.admit stores what it is given (the caller adds Received): a header block may begin
    # with fields that look like the Drop file's own envelope lines.
    original = first_lines + b"From: a@remote.test\r\nSubject: s\r\n\r\nbody\r\n"
    queue_id = admitted(spool, original, recipients=["bob@example.com"])
    service.run_once()
    drop, transport = drop_then_pickup(spool, service, transport, queue_id)
    assert drop.startswith(b"x-sender: alice@remote.test\r\nx-receiver: bob@example.com\r\n")
    assert first_lines in drop
    # Back through Pickup: only Bob, from Alice, nothing for evil or mallory.
    accepted = parse_pickup(
        drop,
        options=PickupOptions(fqdn=FQDN, default_domain="example.com"),
        queue_id="q1",
        now=NOW,
    )
    assert isinstance(accepted, PickupAccepted)
    assert (accepted.sender, accepted.recipients) == ("alice@remote.test", ("bob@example.com",))
    assert transport.messages == []  # Bob is local: a second Drop file, no relay to evil
    assert len(list(spool.drop())) == 2


def test_a_body_line_like_an_envelope_line_stays_body(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    original = b"From: a@remote.test\r\nSubject: s\r\n\r\nx-receiver: evil@remote.test\r\n"
    queue_id = spool.submit(original, sender="alice@remote.test", recipients=["bob@example.com"])
    service.run_once()
    drop, transport = drop_then_pickup(spool, service, transport, queue_id)
    assert drop.endswith(b"\r\n\r\nx-receiver: evil@remote.test\r\n")
    assert transport.messages == []


@pytest.mark.parametrize(
    "address",
    [
        '"john doe"@example.com',
        '"a,b"@example.com',
        '"x-receiver: e@x.test"@example.com',
        '"<>"@example.com',
        "o'brien+tag@example.com",
        "jürgen@example.com",
        '"a\\"b"@example.com',
        '"a  b"@example.com',
    ],
)
def test_odd_but_valid_addresses_round_trip_through_a_drop_file(address: str) -> None:
    head = b"Received: from x by y; Sat, 28 Nov 2026 10:15:02 +0000\r\nFrom: a@b.test\r\n"
    for sender in (address, "", "alice@[IPv6:2001:db8::1]"):
        drop = render_drop_head(head, sender=sender, recipients=[address, "b@c.test"], arrival=NOW)
        accepted = parse_pickup(
            drop + b"body\r\n",
            options=PickupOptions(fqdn=FQDN, default_domain="example.com"),
            queue_id="q1",
            now=NOW,
        )
        assert isinstance(accepted, PickupAccepted), accepted
        assert (accepted.sender, accepted.recipients) == (sender, (address, "b@c.test"))


@settings(max_examples=200, deadline=None)
@given(
    head=st.lists(
        st.sampled_from(
            [
                b"x-receiver: evil@x.test\r\n",
                b"X-Sender: m@x.test\r\n",
                b"Subject: s\r\n",
                b" folded\r\n",
                b"Return-Path: <old@x.test>\r\n",
                b"X-OriginalArrivalTime: old\r\n",
                b"From: a@b.test\r\n",
            ]
        ),
        min_size=1,
        max_size=8,
    ).map(b"".join),
    signed=st.booleans(),
)
def test_a_drop_file_reads_back_as_exactly_its_envelope(head: bytes, signed: bool) -> None:
    prepend = b"DKIM-Signature: v=1; d=example.com\r\n" if signed else b""
    drop = render_drop_head(
        head, sender="alice@x.test", recipients=["bob@example.com"], arrival=NOW, prepend=prepend
    )
    accepted = parse_pickup(
        drop + b"body\r\n",
        options=PickupOptions(fqdn=FQDN, default_domain="example.com"),
        queue_id="q1",
        now=NOW,
    )
    if isinstance(accepted, PickupAccepted):
        assert (accepted.sender, accepted.recipients) == ("alice@x.test", ("bob@example.com",))
    else:  # only a head whose first line is a fold has nothing to continue: never an envelope
        assert head.startswith(b" ")
    assert drop.count(b"\r\nReturn-Path: ") == 1
    assert drop.count(b"X-OriginalArrivalTime: ") == 1


# -- DKIM signing of odd messages -----------------------------------------------------------------

SIGNING_KEY = DkimKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


@pytest.fixture
def signing_spool(filesystem: pyfs.FS, clock: FakeClock) -> Iterator[Spool]:
    policy = DkimPolicy([DkimSigner(SIGNING_KEY, domain="remote.test", selector="s")])
    with Spool(filesystem, clock=clock, dkim=policy) as spool:
        yield spool


@pytest.mark.parametrize(
    ("original", "signed"),
    [
        (b"From: a@remote.test\r\nTo:\r\nSubject:\r\nCc: \r\n\r\nbody\r\n", True),
        (b"From: a@remote.test\r\nFrom: b@remote.test\r\n\r\nbody\r\n", False),
        ("From: Jörg <a@remote.test>\r\nSubject: Grüße\r\n\r\nbody\r\n".encode(), True),
        (b"From: a@remote.test\r\nSubject: \xff\xfe\x80\r\n\r\nbody\r\n", True),
        (b"From: a@remote.test\r\n\r\n" + b"\r\n" * 5000, True),
        (b"From: a@remote.test\r\n\r\n", True),
        (b"From: a@remote.test", True),
        (b"From: a@remote.test\rSubject: x\nTo: b\r\n\n\rbody", True),
        (b"From: <>\r\n\r\nbody\r\n", False),
        (b"From: a@\r\n\r\nbody\r\n", False),
        (b"From: =?utf-8?q?a=0D=0ABcc:_x?= <a@remote.test>\r\n\r\nbody\r\n", True),
    ],
)
def test_dkim_signing_never_stops_an_odd_message(
    signing_spool: Spool,
    transport: CapturingTransport,
    clock: FakeClock,
    original: bytes,
    signed: bool,
) -> None:
    service = make_service(signing_spool, transport, clock)
    try:
        admitted(signing_spool, original, recipients=["bob@remote.test"])
        report = service.run_once()
    finally:
        service.close()
    assert report.errors == ()
    [sent] = transport.messages
    assert sent.data.startswith(b"DKIM-Signature: ") is signed
