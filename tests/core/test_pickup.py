"""Pickup files: real writers' files, malformed files, dots, the never-crash and round-trip laws."""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spoolmail._core.headers import count_received, split_head
from spoolmail._core.pickup import (
    PickupAccepted,
    PickupOptions,
    PickupRejected,
    parse_pickup,
    render_pickup,
)
from spoolmail.exceptions import ConfigurationError, MessageError

FILES = Path(__file__).parent / "pickup_files"
NOW = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC)
NOW_TEXT = b"Sat, 28 Nov 2026 10:15:02 +0000"
OPTIONS = PickupOptions(fqdn="mail.example.com", default_domain="example.com")
STUFFED = PickupOptions(fqdn="mail.example.com", default_domain="example.com", dot_stuffed=True)
RECEIVED = (
    b"Received: from mail pickup service by mail.example.com with spoolmail;\r\n\t " + NOW_TEXT
)


def parse(raw: bytes, options: PickupOptions = OPTIONS) -> PickupAccepted | PickupRejected:
    return parse_pickup(raw, options=options, queue_id="Q0001", now=NOW)


def accept(raw: bytes, options: PickupOptions = OPTIONS) -> PickupAccepted:
    result = parse(raw, options)
    assert isinstance(result, PickupAccepted), result
    return result


def reject(raw: bytes, options: PickupOptions = OPTIONS) -> PickupRejected:
    result = parse(raw, options)
    assert isinstance(result, PickupRejected), result
    return result


def assert_crlf(message: bytes) -> None:
    assert message.endswith(b"\r\n")
    assert b"\r" not in message.replace(b"\r\n", b"")
    assert b"\n" not in message.replace(b"\r\n", b"")


# --- real writers -----------------------------------------------------------------------------


def test_iis_kb_q221384_file() -> None:
    result = accept((FILES / "iis-kb.txt").read_bytes())
    # `x-sender: Sender` has no domain: IIS completed it with its default domain.
    assert result.sender == "Sender@example.com"
    assert result.recipients == ("user1@valid.but.unreachable.host",)
    assert result.message == (
        RECEIVED + b"\r\n"
        b"Subject: Testing.\r\n"
        b"Message-ID: <Q0001@mail.example.com>\r\n"
        b"Date: " + NOW_TEXT + b"\r\n"
        b"\r\n"
        b"Testing\r\n"
        b".\r\n"
        b"Testing\r\n"
    )


def test_iis_kb_file_dot_stuffed_loses_the_lone_dot() -> None:
    # KB Q286358: with DisablePickupDotStuff=0 the first "." of a line is removed, so a lone "."
    # becomes an empty line.
    result = accept((FILES / "iis-kb.txt").read_bytes(), STUFFED)
    assert result.message.endswith(b"\r\n\r\nTesting\r\n\r\nTesting\r\n")


def test_dotnet_smtpclient_file() -> None:
    raw = (FILES / "dotnet.eml").read_bytes()
    result = accept(raw)
    assert result.sender == "build@ci.example.com"
    assert result.recipients == (
        "ada@example.org",
        "joerg@example.de",
        "ops-nightly@lists.example.net",
        "auditor@example.com",
    )
    message = result.message
    assert_crlf(message)
    lines = message.split(b"\r\n")
    assert lines[:4] == [
        b"Received: from mail pickup service by mail.example.com with spoolmail;",
        b"\t " + NOW_TEXT,
        b"MIME-Version: 1.0",
        b'Sender: "Build Server, CI" <build@CI.Example.com>',
    ]
    assert b"X-Sender" not in message
    assert b"X-Receiver" not in message
    assert b"auditor" not in message  # the Bcc recipient appears in the envelope only
    # .NET's folding of other headers is kept byte for byte.
    assert (
        b'To: "Ada Lovelace" <ada@example.org>,\r\n =?utf-8?B?SsO2cmcgTcO8bGxlcg==?= '
        b"<joerg@example.de>\r\n"
    ) in message
    assert (
        b"Subject: Build 1234 failed: 3 tests in spoolmail.core did not pass on the\r\n"
        b" nightly runner\r\n"
    ) in message
    # .NET writes Date but no Message-ID: only the missing one is added, after the headers.
    assert message.count(b"Date:") == 1
    assert b"Date: 7 Nov 2018 10:20:30 +0100\r\n" in message
    assert (
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"Message-ID: <Q0001@mail.example.com>\r\n\r\n"
        b"The nightly build failed.\r\n"
    ) in message
    # The headers after the envelope lines are the file's bytes, unchanged.
    start = raw.index(b"MIME-Version")
    end = raw.index(b"\r\n\r\n")
    assert raw[start:end] in message


def test_plain_message_with_bcc() -> None:
    result = accept((FILES / "plain-bcc.eml").read_bytes())
    assert result.sender == "alice@example.net"
    assert result.recipients == (
        "bob@example.com",
        "carol@example.com",
        "dave@example.org",
        "eve@example.com",
        "frank@example.org",
    )
    message = result.message
    assert_crlf(message)
    # Bcc is gone with its folded continuation line; nothing else moved.
    assert b"Bcc" not in message
    assert b"frank" not in message
    assert message == (
        RECEIVED + b"\r\n"
        b"From: Alice Example <alice@example.net>\r\n"
        b'To: bob@example.com, "Carol, Jr." <carol@example.com>\r\n'
        b"Cc: dave@example.org (Dave)\r\n"
        b"Subject: Quarterly numbers, with a subject long enough that its writer\r\n"
        b" folded it\r\n"
        b"Message-ID: <20261128101500.1234@client.example.net>\r\n"
        b"Date: Sat, 28 Nov 2026 10:15:00 +0000\r\n"
        b"\r\n"
        b"Hi all,\r\n"
        b"the numbers are attached.\r\n"
    )


@pytest.mark.parametrize(
    ("options", "body"),
    [
        pytest.param(
            OPTIONS,
            b'Totals:\r\n..NET Framework wrote this line as ".NET Framework".\r\n..\r\n'
            b"...ellipsis\r\nend\r\n",
            id="default-taken-as-is",
        ),
        pytest.param(
            STUFFED,
            b'Totals:\r\n.NET Framework wrote this line as ".NET Framework".\r\n.\r\n'
            b"..ellipsis\r\nend\r\n",
            id="iis-unstuffs",
        ),
    ],
)
def test_dotnet_framework_dot_stuffed_file(options: PickupOptions, body: bytes) -> None:
    result = accept((FILES / "dotnet-framework-stuffed.eml").read_bytes(), options)
    assert result.sender == "reports@example.com"
    assert result.recipients == ("finance@example.com",)
    assert result.message.endswith(
        b"quoted-printable\r\nMessage-ID: <Q0001@mail.example.com>\r\n\r\n" + body
    )


def test_dot_stuffing_never_touches_headers() -> None:
    raw = b"From: a@example.com\nTo: b@example.com\n.Odd-Name: kept\n\n.x\n"
    assert b"\r\n.Odd-Name: kept\r\n" in accept(raw, STUFFED).message


# --- envelope sources -------------------------------------------------------------------------


def test_mixed_line_ends_become_crlf() -> None:
    raw = b"x-sender: a@example.com\r\nx-receiver: b@example.com\nSubject: s\r\rline1\nline2\r\n"
    message = accept(raw).message
    assert_crlf(message)
    assert message.endswith(
        b"Subject: s\r\n" + b"Message-ID: <Q0001@mail.example.com>\r\n"
        b"Date: " + NOW_TEXT + b"\r\n\r\nline1\r\nline2\r\n"
    )


def test_last_line_without_line_end_gets_crlf() -> None:
    message = accept(b"From: a@example.com\nTo: b@example.com\n\nno newline").message
    assert message.endswith(b"\r\n\r\nno newline\r\n")


def test_header_only_file_without_blank_line() -> None:
    message = accept(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: only headers").message
    assert message.endswith(
        b"Subject: only headers\r\nMessage-ID: <Q0001@mail.example.com>\r\n"
        b"Date: " + NOW_TEXT + b"\r\n"
    )


def test_sender_header_wins_over_from() -> None:
    # KB Q201314: "will take the Sender field over the From field".
    raw = b"From: a@example.com, b@example.com\nSender: s@example.com\nTo: c@example.com\n\nx\n"
    assert accept(raw).sender == "s@example.com"


def test_first_from_address_is_the_sender() -> None:
    raw = b"From: Ann <a@example.com>, b@example.com\nTo: c@example.com\n\nx\n"
    assert accept(raw).sender == "a@example.com"


def test_empty_sender_header_falls_back_to_from() -> None:
    raw = b"Sender:\nFrom: a@example.com\nTo: c@example.com\n\nx\n"
    assert accept(raw).sender == "a@example.com"


def test_x_receiver_without_x_sender_takes_sender_from_headers() -> None:
    raw = b"x-receiver: r@example.com\nFrom: f@example.com\nTo: ignored@example.com\n\nx\n"
    result = accept(raw)
    assert (result.sender, result.recipients) == ("f@example.com", ("r@example.com",))


def test_x_sender_without_x_receiver_takes_recipients_from_headers() -> None:
    raw = b"X-SENDER: s@example.com\nFrom: f@example.com\nTo: t@example.com\nBcc: b@example.com\n\n"
    result = accept(raw)
    assert (result.sender, result.recipients) == (
        "s@example.com",
        ("t@example.com", "b@example.com"),
    )
    assert b"Bcc" not in result.message


def test_bcc_is_removed_even_when_x_receiver_gives_the_envelope() -> None:
    raw = b"x-sender: s@example.com\nx-receiver: b@example.com\nbcc: b@example.com,\n c@x.com\n\nx"
    message = accept(raw).message
    assert b"bcc" not in message.lower()
    assert b"c@x.com" not in message


def test_null_sender_from_x_sender() -> None:
    # A Drop file of a DSN moved back into Pickup keeps its null reverse-path.
    result = accept(b"x-sender: <>\nx-receiver: postmaster@example.com\nFrom: m@example.com\n\nx\n")
    assert result.sender == ""


def test_folded_x_receiver_and_comma_lists() -> None:
    raw = (
        b'x-sender: "Long display name for the sender of this message, folded"\r\n'
        b"\t<s@example.com>\r\n"
        b"x-receiver: a@example.com, b@example.com\r\n"
        b"x-receiver: A@Example.COM\r\n"
        b"x-receiver: a@example.com\r\n"
        b"\r\nbody\r\n"
    )
    result = accept(raw)
    assert result.sender == "s@example.com"
    # De-duplicated, order kept; the local part is case-sensitive (RFC 5321 section 2.4).
    assert result.recipients == ("a@example.com", "b@example.com", "A@example.com")
    assert result.message.startswith(RECEIVED + b"\r\nMessage-ID: <Q0001@")


def test_drop_file_round_trips_through_pickup() -> None:
    # KB 306043: a Drop file moved into Pickup is re-sent to its envelope recipients.
    drop = (
        b"x-sender: alice@example.net\r\n"
        b"x-receiver: bob@example.com\r\n"
        b"x-receiver: carol@example.com\r\n"
        b"Received: from client.example.net ([192.0.2.7]) by mail.example.com with spoolmail;\r\n"
        b"\t Sat, 28 Nov 2026 10:15:02 +0000\r\n"
        b"From: alice@example.net\r\n"
        b"To: bob@example.com, carol@example.com, dave@example.org\r\n"
        b"Message-ID: <m1@example.net>\r\n"
        b"Date: Sat, 28 Nov 2026 10:15:00 +0000\r\n"
        b"Return-Path: <alice@example.net>\r\n"
        b"X-OriginalArrivalTime: 28 Nov 2026 10:15:02.0123 (UTC) FILETIME=[0:0]\r\n"
        b"\r\n"
        b"body\r\n"
    )
    result = accept(drop)
    assert result.sender == "alice@example.net"
    assert result.recipients == ("bob@example.com", "carol@example.com")
    assert result.message == RECEIVED + b"\r\n" + drop[drop.index(b"Received:") :]


def test_x_sender_among_ordinary_headers_is_just_a_header() -> None:
    # Eudora writes an informational X-Sender: only the leading run is the envelope.
    raw = b"From: f@example.com\nX-Sender: eudora@example.com\nTo: t@example.com\n\nx\n"
    result = accept(raw)
    assert result.sender == "f@example.com"
    assert b"\r\nX-Sender: eudora@example.com\r\n" in result.message


def test_existing_message_id_and_date_are_kept_whatever_their_case() -> None:
    raw = b"From: f@example.com\nTo: t@example.com\nmessage-id: <x@y>\nDATE: whenever\n\nx\n"
    message = accept(raw).message
    assert message.count(b"<Q0001@") == 0
    assert message.lower().count(b"\r\ndate:") == 1


def test_obsolete_space_before_colon_is_a_header() -> None:
    # RFC 5322 section 4.5.8.
    assert accept(b"From : f@example.com\nTo\t: t@example.com\n\nx").sender == "f@example.com"


def test_utf8_headers_are_allowed() -> None:
    raw = "From: Jörg <jörg@bücher.example>\nTo: 李 <li@例え.jp>\nSubject: Grüße\n\nx\n".encode()
    result = accept(raw)
    assert result.sender == "jörg@bücher.example"
    assert result.recipients == ("li@例え.jp",)
    assert "Subject: Grüße\r\n".encode() in result.message


def test_latin1_in_a_non_address_header_is_kept() -> None:
    raw = b"From: f@example.com\nTo: t@example.com\nSubject: Gr\xfc\xdfe\n\nx\n"
    assert b"Subject: Gr\xfc\xdfe\r\n" in accept(raw).message


def test_received_uses_fqdn_and_now() -> None:
    options = PickupOptions(fqdn="relay.test", default_domain="test")
    now = datetime(2002, 11, 25, 18, 22, 2, tzinfo=timezone(timedelta(hours=-8)))
    result = parse_pickup(
        b"From: a@test\nTo: b@test\n\nx", options=options, queue_id="A-1", now=now
    )
    assert isinstance(result, PickupAccepted)
    assert result.message.startswith(
        b"Received: from mail pickup service by relay.test with spoolmail;\r\n"
        b"\t Mon, 25 Nov 2002 18:22:02 -0800\r\n"
    )
    assert b"Message-ID: <A-1@relay.test>\r\nDate: Mon, 25 Nov 2002 18:22:02 -0800\r\n" in (
        result.message
    )


# --- long header lines (RFC 5322 section 2.1.1) -------------------------------------------------


def unfold(field: bytes) -> bytes:
    """RFC 5322 section 2.2.3: unfolding removes each CRLF that comes before white space."""
    return field.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")


def stored_field(message: bytes, name: bytes) -> bytes:
    """One field of a stored message, every line of it, without the last CRLF."""
    match = re.search(rb"^" + name + rb":.*?(?=\r\n[^ \t])", message, re.MULTILINE | re.DOTALL)
    assert match is not None, name
    return match.group()


def assert_lines_fit(message: bytes) -> None:
    head = message.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998


MONO_TO = b"To: " + b", ".join(b"recipient%02d@partner.example" % n for n in range(60))


def test_mono_one_line_to_with_60_recipients_is_folded() -> None:
    # Mono's SmtpClient never folds: 60 recipients make one To: line far over 998 octets.
    assert len(MONO_TO) > 998
    raw = b"X-Sender: app@example.com\r\nFrom: app@example.com\r\n" + MONO_TO + b"\r\n"
    result = accept(raw + b"Subject: report\r\n\r\nbody\r\n")
    assert len(result.recipients) == 60
    assert_lines_fit(result.message)
    to = stored_field(result.message, b"To")
    assert unfold(to) == MONO_TO  # white space was there to fold at: nothing added
    lines = to.split(b"\r\n")
    assert lines[0] == b"To: recipient00@partner.example, recipient01@partner.example,"
    assert all(len(line) <= 78 for line in lines)
    assert b"\r\nSubject: report\r\n" in result.message
    assert result.message.endswith(b"\r\n\r\nbody\r\n")


def test_address_list_without_spaces_is_folded_after_commas_outside_quotes() -> None:
    to = b"To: " + b",".join(b'"Doe,Jane%d"<jane%d@x.example>' % (n, n) for n in range(40))
    result = accept(b"From: a@example.com\r\n" + to + b"\r\n\r\n")
    assert len(result.recipients) == 40
    assert_lines_fit(result.message)
    folded = stored_field(result.message, b"To")
    # A space is added after the commas it folds at (CFWS), never inside a display name.
    assert unfold(folded).replace(b", ", b",") == to
    assert b'"Doe, Jane' not in unfold(folded)
    assert all(line.startswith(b' "Doe,Jane') for line in folded.split(b"\r\n")[1:])


def test_long_continuation_line_is_folded_and_short_lines_are_kept() -> None:
    words = b" ".join(b"word%d" % n for n in range(300))
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: short\r\n\t" + words + b"\r\n\r\n"
    result = accept(raw)
    assert_lines_fit(result.message)
    subject = stored_field(result.message, b"Subject")
    assert subject.startswith(b"Subject: short\r\n\tword0 word1 ")
    assert unfold(subject) == b"Subject: short\t" + words


def test_no_fold_before_the_colon_or_into_a_white_line() -> None:
    # The only white space is before the colon (obsolete syntax) and in the leading run: neither
    # is a place to fold, so the line is refused rather than broken.
    name = b"Subject :"
    result = reject(b"From: a@x.com\r\nTo: b@x.com\r\n" + name + b"x" * 1000 + b"\r\n\r\n")
    assert result.reason.startswith("line 3 is 1009 octets long")
    result = reject(b"From: a@x.com\r\nTo: b@x.com\r\nSubject: s\r\n   " + b"x" * 997 + b"\r\n\r\n")
    assert result.reason.startswith("line 4 is 1000 octets long")


def test_unfoldable_line_is_rejected_with_what_was_found() -> None:
    raw = b"x-sender: a@x.com\r\nx-receiver: b@x.com\r\nTo: " + b"c" * 995 + b"@x.com\r\n\r\n"
    result = reject(raw)
    assert result.status == "5.6.0"
    assert result.reason == (
        "line 3 is 1005 octets long, over the 998 a line may have (RFC 5322 section 2.1.1), and "
        "the To: header (line 3) has no white space or a comma between addresses to fold it "
        "at within 998 octets"
    )
    assert (result.sender, result.recipients) == ("a@x.com", ("b@x.com",))


def test_long_envelope_lines_are_read_and_never_stored() -> None:
    receivers = b",".join(b"r%d@partner.example" % n for n in range(100))
    assert len(receivers) > 998
    raw = b"x-sender: a@example.com\r\nx-receiver: " + receivers + b"\r\nSubject: s\r\n\r\nx\r\n"
    result = accept(raw)
    assert len(result.recipients) == 100
    assert b"partner" not in result.message


def test_a_one_mebibyte_header_block_is_folded_in_linear_time() -> None:
    # A header block may be 1 MiB (docs/design.md#pickup-intake); folding it must not be quadratic.
    to = b"To: " + b",".join(b"r%d@x.example" % n for n in range(9_000))
    subject = b"Subject:" + b" word" * 200_000
    raw = b"From: a@x.example\r\n" + to + b"\r\n" + subject + b"\r\n\r\nbody\r\n"
    assert len(raw) > 1024 * 1024
    options = PickupOptions(fqdn="h.example", default_domain="x.com", max_message_size=len(raw))
    started = time.perf_counter()
    result = accept(raw, options)
    assert time.perf_counter() - started < 10  # about 0.2 s; a quadratic fold takes minutes
    assert_lines_fit(result.message)
    assert len(result.recipients) == 9_000


# --- limits and rejections --------------------------------------------------------------------

BAD = {
    "empty.eml": ("the file is empty", "5.6.0"),
    "nul-byte.eml": ("line 3 contains a NUL byte", "5.6.0"),
    "no-blank-line.eml": (
        "line 4 is not a header field (no blank line separates the headers from the body?)",
        "5.6.0",
    ),
    "leading-continuation.eml": ("line 1 starts with white space", "5.6.0"),
    "long-header-line.eml": (
        "line 3 is 1209 octets long, over the 998 a line may have (RFC 5322 section 2.1.1), and "
        "the Subject: header (line 3) has no white space to fold it at within 998 octets",
        "5.6.0",
    ),
    "no-sender.eml": (
        "no sender: the file has no x-sender line and no Sender: or From: header",
        "5.1.7",
    ),
    "no-recipient.eml": ("no recipient:", "5.1.3"),
    "two-x-senders.eml": ("2 x-sender lines (lines 1, 3)", "5.1.7"),
    "bad-x-receiver.eml": ("bad recipient in the x-receiver line 2: 'bob@exa mple.com'", "5.1.3"),
    "bad-from.eml": ("bad sender in the From: header (line 1): 'John Smith'", "5.1.7"),
    "latin1-to.eml": ("the To: header (line 2) is not valid UTF-8", "5.6.0"),
    "empty-x-sender.eml": ("the x-sender line 1 is empty", "5.1.7"),
    "null-recipient.eml": ("bad recipient in the x-receiver line 2: '<>'", "5.1.3"),
    "starts-with-blank.eml": ("no header fields", "5.6.0"),
    "bad-domain.eml": ("starts or ends with '-'", "5.1.3"),
    "undisclosed-only.eml": ("no recipient:", "5.1.3"),
    "lone-cr.eml": ("line 4 is not a header field", "5.6.0"),
    "unbalanced-angle.eml": ("without its closing '>'", "5.1.3"),
    "ip-without-brackets.eml": ("write it as [192.0.2.1]", "5.1.7"),
    "long-local-part.eml": ("longer than 64 octets", "5.1.3"),
}


def test_every_bad_file_has_an_expected_reason() -> None:
    assert sorted(path.name for path in (FILES / "bad").iterdir()) == sorted(BAD)


@pytest.mark.parametrize(("name", "expected"), sorted(BAD.items()))
def test_bad_file_is_rejected(name: str, expected: tuple[str, str]) -> None:
    fragment, status = expected
    result = reject((FILES / "bad" / name).read_bytes())
    assert fragment in result.reason
    assert result.status == status
    assert "\n" not in result.reason


def test_rejection_keeps_what_was_found() -> None:
    result = reject((FILES / "bad" / "no-blank-line.eml").read_bytes())
    assert (result.sender, result.recipients) == ("a@example.com", ("b@example.com",))
    result = reject(b"From: a@example.com\nTo: b@example.com\nCc: b@x.com, c@@example.com\n\nx")
    assert result.sender == "a@example.com"
    assert result.recipients == ("b@example.com",)
    assert result.reason == (
        "bad recipient in the Cc: header (line 3): 'b@x.com, c@@example.com' is not an address "
        "list: it has more than one '@'"
    )


def test_size_limit_is_checked_first() -> None:
    raw = b"From: a@example.com\nTo: b@example.com\n\n"
    options = PickupOptions(fqdn="h.example", default_domain="x.com", max_message_size=len(raw))
    assert isinstance(parse(raw, options), PickupAccepted)
    result = reject(raw + b"\x00", options)  # too big is found before the NUL
    assert result.status == "5.3.4"
    assert result.reason == (
        f"the file is {len(raw) + 1} bytes, over the message size limit of {len(raw)} bytes"
    )


def test_recipient_limit() -> None:
    options = PickupOptions(fqdn="h.example", default_domain="example.com", max_recipients=2)
    assert isinstance(
        parse(b"From: a@x.com\nTo: b@x.com, c@x.com, b@x.com\n\n", options), PickupAccepted
    )
    result = reject(b"From: a@x.com\nTo: b@x.com, c@x.com, d@x.com\n\n", options)
    assert (result.status, result.reason) == (
        "5.5.3",
        "the file has 3 recipients, over the limit of 2",
    )


def test_only_empty_groups_in_x_receiver() -> None:
    result = reject(b"x-sender: a@x.com\nx-receiver: nobody:;\nTo: b@x.com\n\n")
    assert (result.status, result.reason) == (
        "5.1.3",
        "no recipient: the x-receiver lines hold only empty groups",
    )


def test_reason_quotes_a_huge_header_briefly() -> None:
    raw = b"From: a@x.com\nTo: " + b",\n ".join([b"b@x.com"] * 20_000) + b", @\n\n"
    result = reject(raw)
    assert len(result.reason) < 400


def test_pathological_address_headers_finish() -> None:
    # Linear scanning: nested comments, quotes and brackets cannot make the parser backtrack.
    for filler in (b"(" * 900, b'"' * 900, b"<" * 900, b"[" * 900, b"\\" * 900, b"a." * 450):
        raw = b"From: a@x.com\nTo: " + b"\n ".join([filler] * 2000) + b"\n\n"
        assert isinstance(parse(raw), PickupRejected)


@pytest.mark.parametrize(
    ("field", "value"),
    [("fqdn", "bad host"), ("default_domain", ""), ("max_message_size", 0), ("max_recipients", 0)],
)
def test_options_are_checked(field: str, value: object) -> None:
    arguments: dict[str, object] = {"fqdn": "h.example", "default_domain": "example.com"}
    arguments[field] = value
    with pytest.raises(ConfigurationError, match=field):
        PickupOptions(**arguments)  # type: ignore[arg-type]


# --- render_pickup ----------------------------------------------------------------------------


def test_render_writes_iis_style_envelope_lines() -> None:
    rendered = render_pickup(
        b"From: a@example.com\nSubject: x\n\nbody\n",
        sender="a@example.com",
        recipients=["b@example.com", "c@example.org"],
    )
    assert rendered == (
        b"x-sender: <a@example.com>\r\n"
        b"x-receiver: <b@example.com>\r\n"
        b"x-receiver: <c@example.org>\r\n"
        b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    )


def test_render_without_envelope_is_just_the_message() -> None:
    message = b"From: a@example.com\rTo: b@example.com\n\nbody"
    expected = b"From: a@example.com\r\nTo: b@example.com\r\n\r\nbody\r\n"
    assert render_pickup(message, sender=None, recipients=None) == expected
    assert render_pickup(message, sender=None, recipients=[]) == expected


def test_render_null_sender() -> None:
    rendered = render_pickup(b"From: m@x.com\n\n", sender="", recipients=["r@x.com"])
    assert rendered.startswith(b"x-sender: <>\r\nx-receiver: <r@x.com>\r\n")
    assert accept(rendered).sender == ""


def test_render_replaces_the_message_envelope_lines() -> None:
    drop = b"x-sender: old@x.com\nx-receiver: old1@x.com,\n folded@x.com\nFrom: f@x.com\n\nbody\n"
    rendered = render_pickup(drop, sender="new@x.com", recipients=None)
    assert rendered == b"x-sender: <new@x.com>\r\nFrom: f@x.com\r\n\r\nbody\r\n"
    # Without an envelope of its own, the message's lines stay and still count.
    kept = render_pickup(drop, sender=None, recipients=None)
    assert accept(kept).recipients == ("old1@x.com", "folded@x.com")


def test_render_dot_stuffs_body_lines_only() -> None:
    rendered = render_pickup(
        b".Name: v\nFrom: a@x.com\nTo: b@x.com\n\n.x\n..y\nz\n",
        sender=None,
        recipients=None,
        dot_stuffed=True,
    )
    assert rendered == b".Name: v\r\nFrom: a@x.com\r\nTo: b@x.com\r\n\r\n..x\r\n...y\r\nz\r\n"
    assert accept(rendered, STUFFED).message.endswith(b"\r\n\r\n.x\r\n..y\r\nz\r\n")


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        ("a@x.com\r\nBcc: evil@x.com", ["b@x.com"]),
        ("a@x.com", ["b@x.com>, <evil@x.com"]),
        ("a@x.com", [""]),
        ("Bob <b@x.com>", ["b@x.com"]),
        ("a@x.com", ["bare-local-part"]),
        ("a@x.com", ["b@x.com, c@x.com"]),
    ],
)
def test_render_refuses_what_would_not_come_back(sender: str, recipients: list[str]) -> None:
    with pytest.raises(MessageError):
        render_pickup(b"Subject: x\n\n", sender=sender, recipients=recipients)


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=2000))
@example(b"\r")
@example(b"\n\n")
@example(b" ")
@example(b":")
@example(b"x-sender:\r\n ")
@example(b"From: (\r\nTo: <\r\n\r\n")
@example(b"x-receiver: \xc3\r\n\r\n")
def test_parse_never_raises_on_bytes(raw: bytes) -> None:
    result = parse(raw)
    assert isinstance(result, PickupAccepted | PickupRejected)
    if isinstance(result, PickupAccepted):
        assert_crlf(result.message)
    else:
        assert result.reason
        assert result.status.startswith("5.")


LINE_PIECES = st.sampled_from(
    [
        b"x-sender: ",
        b"X-Receiver: ",
        b"From: ",
        b"To: ",
        b"Cc: ",
        b"Bcc: ",
        b"Sender: ",
        b"Subject: ",
        b"Message-ID: ",
        b"Date: ",
        b" ",
        b"\t",
        b"",
        b":",
        b"a@example.com",
        b"<b@example.com>",
        b'"N, J" <c@x.org>',
        b"<>",
        b"Sender",
        b"undisclosed:;",
        b",",
        b";",
        b"(",
        b")",
        b'"',
        b"\\",
        b"[192.0.2.1]",
        b"@",
        b".",
        b"..",
        b"\xc3\xa4",
        b"\xff",
        b"\x00",
        b"-",
        b"a" * 999,
        b"=?utf-8?B?w6Q=?=",
    ]
)
LINE_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"])


@st.composite
def near_miss_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.lists(LINE_PIECES, max_size=5).map(b"".join), max_size=12))
    out = b""
    for line in lines:
        out += line + draw(LINE_ENDS)
    return out


@settings(max_examples=500)
@given(near_miss_files(), st.booleans())
def test_parse_never_raises_on_near_misses(raw: bytes, stuffed: bool) -> None:
    result = parse(raw, STUFFED if stuffed else OPTIONS)
    assert isinstance(result, PickupAccepted | PickupRejected)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
TOP = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
DOMAIN = st.builds(lambda labels, top: ".".join([*labels, top]), st.lists(LABEL, max_size=3), TOP)
ATOM = st.text(alphabet="abcXYZ0123456789!#$%&'*+-/=?^_`{|}~äß", min_size=1, max_size=8)
LOCAL = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)

HEADER = st.builds(
    lambda name, value: name + b": " + value,
    st.sampled_from([b"Subject", b"X-Mailer", b"Content-Type", b"Message-ID", b"Date", b"To"]),
    st.text(alphabet="abc ,;:<>@\"'.=?-", max_size=60).map(lambda text: text.encode().strip()),
)
BODY_LINE = st.text(alphabet="ab .\t-=>", max_size=30).map(str.encode)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes] | None]:
    """A message in any line-end style, with its header lines and body lines (None: no body)."""
    headers = draw(st.lists(HEADER, max_size=6))
    body = draw(st.none() | st.lists(BODY_LINE, max_size=8))
    end = draw(LINE_ENDS.filter(lambda end: end != b"\r\r\n"))
    lines = [*headers, *([] if body is None else [b"", *body])]
    return end.join(lines) + (end if lines else b""), headers, body


@settings(max_examples=300)
@given(
    messages(),
    st.just("") | ADDRESS,
    st.lists(ADDRESS, min_size=1, max_size=5),
    st.booleans(),
)
def test_render_then_parse_round_trips(
    message: tuple[bytes, list[bytes], list[bytes] | None],
    sender: str,
    recipients: list[str],
    stuffed: bool,
) -> None:
    raw, headers, body = message
    rendered = render_pickup(raw, sender=sender, recipients=recipients, dot_stuffed=stuffed)
    result = accept(rendered, STUFFED if stuffed else OPTIONS)
    assert result.sender == sender
    assert result.recipients == tuple(dict.fromkeys(recipients))
    names = {header.split(b":", 1)[0].lower() for header in headers}
    added = [b"Message-ID: <Q0001@mail.example.com>"] * (b"message-id" not in names)
    added += [b"Date: " + NOW_TEXT] * (b"date" not in names)
    rest = [] if body is None else [b"", *body]
    expected_lines = [RECEIVED, *headers, *added, *rest]
    assert result.message == b"\r\n".join(expected_lines) + b"\r\n"


# Header values of any length: printable words, some long, joined by commas and white space.
PRINTABLE = st.characters(min_codepoint=33, max_codepoint=126)
WORD = st.one_of(
    st.text(PRINTABLE, max_size=30),
    st.builds(lambda char, count: char * count, PRINTABLE, st.integers(0, 1000)),
).map(str.encode)
GLUE = st.sampled_from([b" ", b",", b", ", b"  ", b"\t", b" ,", b",,"])


@st.composite
def long_values(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 120))
    words = draw(st.lists(WORD, min_size=count, max_size=count))
    return b"".join(word + draw(GLUE) for word in words[:-1]) + words[-1]


def foldable(line: bytes, *, start: int, commas: bool) -> bool:
    """The rule, stated plainly: a fold may go before a run of white space with text after it,
    or (address lists) after a comma followed by text; every piece must fit in 998 octets."""
    places = [(m.start(), 0) for m in re.finditer(rb"[ \t]+(?=[^ \t])", line[start:])]
    if commas:
        assert re.search(rb'["(\[\\]', line) is None  # so every comma separates addresses
        places += [(m.end(), 1) for m in re.finditer(rb",(?=[^ \t])", line[start:])]
    pieces = [(0, 0), *sorted((start + at, added) for at, added in places), (len(line), 0)]
    return all(
        end - begin + added <= 998 for (begin, added), (end, _) in itertools.pairwise(pieces)
    )


@settings(max_examples=300, deadline=None)
@given(long_values(), st.sampled_from([b"Subject", b"To", b"X-Mailer"]))
@example(b"x" * 994, b"Subject")
@example(b"x" * 995, b"Subject")
@example(b"a" * 990 + b" " + b"b" * 990, b"Subject")
@example(b"a" * 990 + b"," + b"b" * 990, b"To")
@example(b"a" * 990 + b"," + b"b" * 990, b"Subject")
def test_any_header_line_is_folded_or_rejected_with_a_reason(value: bytes, name: bytes) -> None:
    commas = name == b"To"
    if commas:
        value = value.translate(None, b'"()[]\\')
    line = name + b": " + value
    raw = b"x-sender: a@x.com\r\nx-receiver: b@x.com\r\n" + line + b"\r\nX-After: 1\r\n\r\nbody\r\n"
    result = parse(raw)
    if isinstance(result, PickupRejected):
        assert result.status == "5.6.0"
        assert result.reason.startswith(f"line 3 is {len(line)} octets long")
        assert not foldable(line, start=len(name) + 1, commas=commas)
        return
    assert_lines_fit(result.message)
    stored = unfold(stored_field(result.message, name))
    if commas:
        assert stored.replace(b", ", b",") == line.replace(b", ", b",")
    else:
        assert stored == line
    if len(line) <= 998:
        assert stored_field(result.message, name) == line  # a line that fits is not touched
    assert result.message.endswith(
        b"\r\nX-After: 1\r\nMessage-ID: <Q0001@mail.example.com>"
        b"\r\nDate: " + NOW_TEXT + b"\r\n\r\nbody\r\n"
    )


@settings(max_examples=300)
@given(near_miss_files())
def test_the_hops_counted_while_reading_are_the_stored_message_s(raw: bytes) -> None:
    result = parse(b"x-sender: a@b.example\r\nx-receiver: c@d.example\r\n" + raw)
    if isinstance(result, PickupAccepted):
        assert result.hops == count_received(split_head(result.message)[0])


def test_received_fields_count_as_hops() -> None:
    result = accept(
        b"Received: from a\r\n\tby b\r\nreceived : from c\r\nFrom: a@b.example\r\n"
        b"To: c@d.example\r\n\r\nbody\r\n"
    )
    assert result.hops == 3  # spoolmail's own, and the two
