"""Hostile and broken message content through the real intake, and through ``spoolmail sendmail``.

The entry-level attacks (links, FIFOs, swaps) are tests/service/test_pickup_hostile.py; the parser's
own cases are tests/core/test_pickup.py. Here the bytes of a regular file are the attack: each
file is written into Pickup of a Spool on MemoryFS and on OSFS, one ``run_once`` of a real
MailService (fake clock, capturing transport, a smart host for every domain) takes it, and the
outcome is checked whole: queued (and captured) or in BadMail with a reason, never both, never
an error escaping into the report, Pickup and SortTemp empty afterwards. The sendmail half runs
the real command (``main(["sendmail", ...])``) on a MailRoot in a temp dir: a clear error, a
sysexits status and nothing left in Pickup, or one file that intake then takes as it is.
"""

from __future__ import annotations

import io
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail import Limits, MailService, Reply, Report, Router, Spool
from spoolmail._cli import sendmail as sendmail_command
from spoolmail._cli.main import main
from spoolmail._core.events import MailEvent
from spoolmail._core.events import Queued as QueuedEvent
from spoolmail._service.intake import MAX_HEAD
from spoolmail._store import pyfs
from spoolmail._store.spool import BadMailItem
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

MiB = 1024 * 1024
HEAD = b"From: alice@example.net\r\nTo: bob@example.org\r\n"


@dataclass(frozen=True)
class Queued:
    """A message intake queued, read from the Queue the moment it was announced."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


def make_service(
    spool: Spool,
    clock: FakeClock,
    transport: CapturingTransport,
    *,
    keep: bool = True,
    **settings: Any,
) -> MailService:
    """Every domain but the default one goes to the capturing smart host; the hop limit is out
    of the way. Each message queued from Pickup is read at once into ``service.queued`` (by its
    queue id), before any delivery: what intake stored, whatever happens to it next (``keep``
    False: its envelope only)."""
    limits = Limits(max_message_size=settings.pop("max_message_size", 4 * MiB), max_hop_count=1000)
    queued: dict[str, Queued] = {}

    def observe(event: MailEvent) -> None:
        if isinstance(event, QueuedEvent) and event.origin.startswith("pickup:"):
            data = spool.message(event.queue_id) if keep else b""
            queued[event.queue_id] = Queued(event.sender, event.recipients, data)

    service = MailService(
        spool,
        router=Router(smart_host="relay.test:2525"),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        transport=transport,
        clock=clock,
        fqdn="mail.example.com",
        limits=limits,
        pickup_settle=timedelta(0),
        observers=[observe],
        **settings,
    )
    service.queued = queued  # type: ignore[attr-defined]
    return service


@dataclass(frozen=True)
class Outcome:
    report: Report
    queued: Queued | None
    badmail: BadMailItem | None

    @property
    def reason(self) -> str:
        assert self.badmail is not None, f"queued, not in BadMail: {self.queued}"
        return self.badmail.reason

    @property
    def message(self) -> bytes:
        assert self.queued is not None, f"in BadMail, not queued: {self.reason}"
        return self.queued.data


def take(spool: Spool, service: MailService, raw: bytes) -> Outcome:
    """Write ``raw`` into Pickup, run the service once; check what must hold for any file."""
    spool._store.write("Pickup", "hostile.eml", raw)
    report = service.run_once()
    assert report.errors == ()
    assert spool.pickup() == []
    assert [n for n in spool.fs.listdir("SortTemp") if not n.endswith((".owner", ".tmp"))] == []
    assert len(report.picked_up) + len(report.badmail) == 1, report
    queued: dict[str, Queued] = service.queued  # type: ignore[attr-defined]
    if report.badmail:
        [queue_id] = report.badmail
        item = spool.badmail_item(queue_id)
        assert item.reason[:2] in ("5.", "4."), item.reason  # a status, then words
        assert len(item.reason) > 10
        assert spool.badmail_message(queue_id) == raw  # kept as it was written
        assert queued == {}
        return Outcome(report, None, item)
    [queue_id] = report.picked_up
    assert list(queued) == [queue_id]
    assert not [item for item in spool.badmail() if item.id == queue_id]
    return Outcome(report, queued[queue_id], None)


@pytest.fixture
def hostile(
    spool: Spool, clock: FakeClock, transport: CapturingTransport
) -> Iterator[Callable[..., Outcome]]:
    """``hostile(raw, **service_settings)``: one file through a fresh service on ``spool``."""
    services: list[MailService] = []

    def run(raw: bytes, **settings: Any) -> Outcome:
        service = make_service(spool, clock, transport, **settings)
        services.append(service)
        try:
            return take(spool, service, raw)
        finally:
            service.close()

    yield run
    for service in services:
        service.close()


def head_and_body(message: bytes) -> tuple[bytes, bytes | None]:
    head, blank, body = message.partition(b"\r\n\r\n")
    return (head, body) if blank else (head.removesuffix(b"\r\n"), None)


def stored_body(raw: bytes) -> bytes | None:
    """The body a file's message must have once queued: its lines after the first empty one,
    each ending CRLF (None: the file has no empty line)."""
    lines = raw.splitlines()
    if b"" not in lines:
        return None
    return b"".join(line + b"\r\n" for line in lines[lines.index(b"") + 1 :])


def field_names(head: bytes) -> list[bytes]:
    return [
        line.partition(b":")[0].strip().lower()
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    ]


# -- line ends and the header/body boundary -------------------------------------------------------


def test_no_blank_line_between_header_and_body_is_badmail_naming_the_line(
    hostile: Callable[..., Outcome],
) -> None:
    outcome = hostile(HEAD + b"Subject: s\r\nhello there, this is the body\r\n")
    assert outcome.reason == (
        "5.6.0 line 4 is not a header field (no blank line separates the headers from the body?)"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"From: alice@example.net\rTo: bob@example.org\r\rbody\rline 2\r",  # old Mac
        b"From: alice@example.net\nTo: bob@example.org\r\n\nbody\r\nline 2\n",  # mixed
        b"From: alice@example.net\r\nTo: bob@example.org\n\r\nbody\rline 2",  # all three, no end
    ],
    ids=["cr-only", "lf-and-crlf", "cr-lf-and-crlf"],
)
def test_any_line_ends_become_crlf_and_nothing_else_changes(
    hostile: Callable[..., Outcome], raw: bytes
) -> None:
    head, body = head_and_body(hostile(raw).message)
    assert body == b"body\r\nline 2\r\n"
    assert head.split(b"\r\n")[2:4] == [b"From: alice@example.net", b"To: bob@example.org"]
    assert b"\r" not in head.replace(b"\r\n", b"")
    assert b"\n" not in head.replace(b"\r\n", b"")


@pytest.mark.parametrize("end", [b"\r\n", b""])
def test_a_file_of_headers_only_is_queued_without_a_body(
    hostile: Callable[..., Outcome], end: bytes
) -> None:
    outcome = hostile(HEAD + b"Subject: headers only" + end)
    head, body = head_and_body(outcome.message)
    assert body is None
    assert outcome.message.endswith(b"\r\n")
    assert field_names(head) == [
        b"received",
        b"from",
        b"to",
        b"subject",
        b"message-id",
        b"date",
    ]
    assert outcome.queued is not None
    assert outcome.queued.recipients == ("bob@example.org",)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "5.6.0 the file is empty"),
        (b"\r\n" * 1000, "5.6.0 the file has no header fields (it starts with an empty line)"),
        (b"\n", "5.6.0 the file has no header fields (it starts with an empty line)"),
        (b"\r", "5.6.0 the file has no header fields (it starts with an empty line)"),
    ],
    ids=["empty", "crlfs", "lf", "cr"],
)
def test_empty_and_blank_files_are_badmail(
    hostile: Callable[..., Outcome], raw: bytes, reason: str
) -> None:
    assert hostile(raw).reason.startswith(reason)


# -- sizes -----------------------------------------------------------------------------------------


def test_a_two_mebibyte_header_line_is_badmail_with_or_without_places_to_fold(
    hostile: Callable[..., Outcome],
) -> None:
    foldable = HEAD + b"Subject: " + b"word " * (2 * MiB // 5) + b"\r\n\r\nbody\r\n"
    solid = HEAD + b"Subject: " + b"x" * (2 * MiB) + b"\r\n\r\nbody\r\n"
    for raw in (foldable, solid):
        assert hostile(raw).reason == f"5.3.4 the header section is longer than {MAX_HEAD} bytes"


def test_a_half_mebibyte_header_line_is_folded_or_badmail(
    hostile: Callable[..., Outcome],
) -> None:
    words = b"word " * 100_000
    head, body = head_and_body(hostile(HEAD + b"Subject: " + words + b"\r\n\r\nbody\r\n").message)
    assert body == b"body\r\n"
    assert max(map(len, head.split(b"\r\n"))) <= 78
    subject = head[head.index(b"Subject:") : head.index(b"\r\nMessage-ID:")]
    assert subject.replace(b"\r\n", b"") == b"Subject: " + words  # only folded
    solid = hostile(HEAD + b"Subject: " + b"x" * 500_000 + b"\r\n\r\nbody\r\n")
    assert solid.reason.startswith("5.6.0 line 3 is 500009 octets long, over the 998")
    assert "the Subject: header (line 3) has no white space to fold it at" in solid.reason


def filler(size: int) -> bytes:
    """Header lines of exactly ``size`` bytes in all (``size`` of 7 or more)."""
    lines = []
    while size:
        length = size if size <= 990 else 900 if size - 900 >= 7 else 800
        lines.append(b"X-F: " + b"y" * (length - 7) + b"\r\n")
        size -= length
    return b"".join(lines)


@pytest.mark.parametrize("over", [0, 1])
def test_a_header_section_just_under_and_over_a_mebibyte(
    hostile: Callable[..., Outcome], over: int
) -> None:
    section = HEAD + filler(MAX_HEAD - len(HEAD) + over)
    assert len(section) == MAX_HEAD + over
    outcome = hostile(section + b"\r\nthe body\r\n")
    if over:
        assert outcome.reason == f"5.3.4 the header section is longer than {MAX_HEAD} bytes"
    else:
        assert head_and_body(outcome.message)[1] == b"the body\r\n"


@pytest.mark.parametrize("over", [0, 1, 4096, 100_000])
def test_a_file_of_headers_only_has_the_same_header_limit(
    hostile: Callable[..., Outcome], over: int
) -> None:
    """Without an empty line the whole file is the header section: over 1 MiB it is refused
    as one with an empty line is, not taken in up to a read chunk more."""
    outcome = hostile(HEAD + filler(MAX_HEAD - len(HEAD) + over))
    if over:
        assert outcome.reason == f"5.3.4 the header section is longer than {MAX_HEAD} bytes"
    else:
        assert head_and_body(outcome.message)[1] is None


@pytest.mark.parametrize("over", [0, 1])
def test_a_message_at_and_one_octet_over_the_size_limit(
    hostile: Callable[..., Outcome], over: int
) -> None:
    limit = 50_000
    start = HEAD + b"Subject: size\r\n\r\n"
    raw = start + b"z" * (limit - len(start) - 2 + over) + b"\r\n"
    assert len(raw) == limit + over
    outcome = hostile(raw, max_message_size=limit)
    if over:
        assert outcome.reason == (
            f"5.3.4 message size {limit + 1} bytes exceeds the limit of {limit} bytes"
        )
    else:
        assert outcome.queued is not None  # taken in: not over the limit


def test_a_message_taken_in_at_the_size_limit_is_delivered_not_bounced(
    spool: Spool, clock: FakeClock, transport: CapturingTransport
) -> None:
    limit = 50_000
    start = HEAD + b"Subject: size\r\n\r\n"
    raw = start + b"z" * (limit - len(start) - 2) + b"\r\n"
    service = make_service(spool, clock, transport, max_message_size=limit)
    try:
        spool._store.write("Pickup", "limit.eml", raw)
        report = service.run_once()
    finally:
        service.close()
    assert report.failed == ()
    assert [m.recipients for m in transport.messages] == [("bob@example.org",)]


# -- NUL and 8-bit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (HEAD + b"Subject: a\0b\r\n\r\nbody\r\n", 3),
        (HEAD + b"\r\nbody\r\nsecond\0line\r\n", 5),
        (HEAD + b"\r\n" + b"line\r\n" * 50_000 + b"\0", 50_004),  # past the first read chunk
        (b"\0", 1),
    ],
    ids=["header", "body", "late-in-body", "only-nul"],
)
def test_a_nul_anywhere_is_badmail_naming_its_line(
    hostile: Callable[..., Outcome], raw: bytes, line: int
) -> None:
    assert hostile(raw).reason == f"5.6.0 line {line} contains a NUL byte; a message is text"


def test_8bit_text_in_other_headers_is_kept_byte_for_byte(hostile: Callable[..., Outcome]) -> None:
    raw = HEAD + b"Subject: caf\xe9 \xff\xfe\r\nX-Utf8: \xc3\xa9t\xc3\xa9\r\n\r\nbody \xe9\r\n"
    message = hostile(raw).message
    assert b"\r\nSubject: caf\xe9 \xff\xfe\r\nX-Utf8: \xc3\xa9t\xc3\xa9\r\n" in message
    assert message.endswith(b"\r\n\r\nbody \xe9\r\n")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b"From: alice@example.net\r\nTo: b\xe9b@example.org\r\n\r\nx\r\n",
            "5.6.0 the To: header (line 2) is not valid UTF-8",
        ),
        (
            b"From: \xff <alice@example.net>\r\nTo: bob@example.org\r\n\r\nx\r\n",
            "5.6.0 the From: header (line 1) is not valid UTF-8",
        ),
        (
            b"x-sender: al\xe9@example.net\r\nx-receiver: bob@example.org\r\n\r\nx\r\n",
            "5.1.7 the x-sender line 1 is not valid UTF-8",
        ),
        (
            b"x-sender: alice@example.net\r\nx-receiver: b\xc3\x28@example.org\r\n\r\nx\r\n",
            "5.1.3 the x-receiver line 2 is not valid UTF-8",
        ),
    ],
    ids=["to", "from", "x-sender", "x-receiver"],
)
def test_invalid_utf8_in_an_address_is_badmail(
    hostile: Callable[..., Outcome], raw: bytes, reason: str
) -> None:
    assert hostile(raw).reason.startswith(reason)


def test_a_utf8_address_is_taken_as_rfc_6532_allows(hostile: Callable[..., Outcome]) -> None:
    outcome = hostile("From: alice@example.net\r\nTo: jörg@bücher.example\r\n\r\nx\r\n".encode())
    assert outcome.queued is not None
    assert outcome.queued.recipients == ("jörg@bücher.example",)


# -- the envelope lines ----------------------------------------------------------------------------


def test_ten_thousand_x_receiver_lines_are_ten_thousand_recipients(
    hostile: Callable[..., Outcome],
) -> None:
    receivers = b"".join(b"x-receiver: r%05d@example.org\r\n" % n for n in range(10_000))
    outcome = hostile(b"x-sender: alice@example.net\r\n" + receivers + b"Subject: s\r\n\r\nb\r\n")
    assert outcome.queued is not None
    assert len(outcome.queued.recipients) == 10_000
    assert b"x-receiver" not in outcome.message.lower()
    one_more = receivers + b"x-receiver: extra@example.org\r\n"
    over = hostile(b"x-sender: alice@example.net\r\n" + one_more + b"\r\nb\r\n")
    assert over.reason == "5.5.3 the file has 10001 recipients, over the limit of 10000"


def test_the_same_x_receiver_ten_thousand_times_is_one_recipient(
    hostile: Callable[..., Outcome],
) -> None:
    receivers = b"X-RECEIVER: <bob@example.org>\r\n" * 10_000
    outcome = hostile(b"x-sender: alice@example.net\r\n" + receivers + b"\r\nb\r\n")
    assert outcome.queued is not None
    assert outcome.queued.recipients == ("bob@example.org",)


@pytest.mark.parametrize(
    ("sender_lines", "reason"),
    [
        (
            b"x-sender: alice@example.net\r\nX-Sender: mallory@example.net\r\n",
            "5.1.7 the file has 2 x-sender lines (lines 1, 2); a message has one sender",
        ),
        (b"x-sender:\r\n", "5.1.7 the x-sender line 1 is empty (the null reverse-path is written"),
        (b"x-sender: \t \r\n", "5.1.7 the x-sender line 1 is empty"),
        (b"x-sender: <<>>\r\n", "5.1.7 bad sender in the x-sender line 1:"),
    ],
    ids=["twice", "empty", "white", "garbage"],
)
def test_bad_x_sender_lines_are_badmail(
    hostile: Callable[..., Outcome], sender_lines: bytes, reason: str
) -> None:
    raw = sender_lines + b"x-receiver: bob@example.org\r\nFrom: alice@example.net\r\n\r\nx\r\n"
    assert hostile(raw).reason.startswith(reason)


def test_a_null_x_sender_is_the_null_reverse_path(hostile: Callable[..., Outcome]) -> None:
    outcome = hostile(b"x-sender: <>\r\nx-receiver: bob@example.org\r\nSubject: s\r\n\r\nx\r\n")
    assert outcome.queued is not None
    assert outcome.queued.sender == ""
    assert b"x-sender" not in outcome.message


def test_an_x_receiver_after_the_headers_started_is_a_header_not_the_envelope(
    hostile: Callable[..., Outcome],
) -> None:
    """Only the run at the very top is the envelope (docs/design.md#pickup-files); one further
    down is an ordinary header field, kept, and names no recipient."""
    raw = b"x-sender: alice@example.net\r\nTo: bob@example.org\r\nx-receiver: eve@example.org\r\n"
    outcome = hostile(raw + b"\r\nx\r\n")
    assert outcome.queued is not None
    assert outcome.queued.recipients == ("bob@example.org",)
    assert b"\r\nx-receiver: eve@example.org\r\n" in outcome.message


def test_a_late_envelope_line_alone_is_badmail_saying_where_it_is(
    hostile: Callable[..., Outcome],
) -> None:
    raw = b"x-sender: alice@example.net\r\nSubject: s\r\nx-receiver: bob@example.org\r\n\r\nx\r\n"
    assert hostile(raw).reason == (
        "5.1.3 no recipient: the file has no x-receiver line and no address in a To:, Cc: or "
        "Bcc: header; the x-receiver line 3 comes after a header field, so it is a header, not "
        "the envelope (x-sender and x-receiver lines go at the very top)"
    )
    late_sender = b"To: bob@example.org\r\nX-Sender: alice@example.net\r\n\r\nx\r\n"
    assert hostile(late_sender).reason.startswith(
        "5.1.7 no sender: the file has no x-sender line and no Sender: or From: header; the "
        "X-Sender line 2 comes after a header field"
    )


# -- Bcc, encoded words, groups --------------------------------------------------------------------


def test_bcc_folded_over_many_lines_and_twice_is_removed_and_each_address_gets_it(
    hostile: Callable[..., Outcome],
) -> None:
    folded = b"Bcc: " + b",\r\n ".join(b"b%03d@example.org" % n for n in range(200)) + b"\r\n"
    raw = (
        b"From: alice@example.net\r\nTo: bob@example.org\r\n"
        + folded
        + b"Subject: s\r\nBCC : \r\n\tlast@example.org\r\n\r\nbody\r\n"
    )
    outcome = hostile(raw)
    assert outcome.queued is not None
    assert outcome.queued.recipients == (
        "bob@example.org",
        *(f"b{n:03d}@example.org" for n in range(200)),
        "last@example.org",
    )
    head, body = head_and_body(outcome.message)
    assert b"bcc" not in field_names(head)
    assert b"@example.org" not in head.replace(b"To: bob@example.org", b"")
    assert body == b"body\r\n"


def test_encoded_words_in_to_and_from_are_kept_and_their_addresses_read(
    hostile: Callable[..., Outcome],
) -> None:
    raw = (
        b"From: =?utf-8?b?QWxpY2Ugw4Q=?= <alice@example.net>\r\n"
        b"To: =?utf-8?q?B=C3=B6b?= <bob@example.org>, =?iso-8859-1?q?=E9?= <e@example.org>\r\n"
        b"\r\nx\r\n"
    )
    outcome = hostile(raw)
    assert outcome.queued is not None
    assert outcome.queued.sender == "alice@example.net"
    assert outcome.queued.recipients == ("bob@example.org", "e@example.org")
    assert raw.split(b"\r\n\r\n")[0] in outcome.message


def test_an_encoded_word_in_place_of_an_address_is_a_local_part_as_written(
    hostile: Callable[..., Outcome],
) -> None:
    """RFC 2047 section 5 forbids an encoded-word in an addr-spec, and nothing decodes one
    there: ``=`` and ``?`` are atext (RFC 5322 section 3.2.3), so it is a bare local part,
    completed with the default domain as any other."""
    raw = b"From: alice@example.net\r\nTo: =?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?=\r\n\r\nx\r\n"
    outcome = hostile(raw)
    assert outcome.queued is not None
    assert outcome.queued.recipients == ("=?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?=@localhost",)
    assert b"\r\nTo: =?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?=\r\n" in outcome.message


def test_group_syntax_and_comments_in_to(hostile: Callable[..., Outcome]) -> None:
    raw = (
        b"From: (me) alice@example.net (Alice)\r\n"
        b'To: friends: bob@example.org (Bob), "C, D" <c@example.org>;, (x) e@example.org (y),\r\n'
        b"  undisclosed-recipients:;\r\n\r\nx\r\n"
    )
    outcome = hostile(raw)
    assert outcome.queued is not None
    assert outcome.queued.sender == "alice@example.net"
    assert outcome.queued.recipients == ("bob@example.org", "c@example.org", "e@example.org")


def test_only_an_empty_group_is_no_recipient(hostile: Callable[..., Outcome]) -> None:
    outcome = hostile(b"From: alice@example.net\r\nTo: undisclosed-recipients:;\r\n\r\nx\r\n")
    assert outcome.reason.startswith("5.1.3 no recipient")


# -- dots ------------------------------------------------------------------------------------------

DOTS = b"line\r\n.\r\n..\r\n.x\r\n...\r\n. \r\nend"


@pytest.mark.parametrize(
    ("stuffed", "body"),
    [
        (False, b"line\r\n.\r\n..\r\n.x\r\n...\r\n. \r\nend\r\n"),
        (True, b"line\r\n\r\n.\r\nx\r\n..\r\n \r\nend\r\n"),
    ],
)
def test_lone_dots_and_double_dots_with_dot_stuffing_off_and_on(
    hostile: Callable[..., Outcome], stuffed: bool, body: bytes
) -> None:
    outcome = hostile(HEAD + b".Dotted: header\r\n\r\n" + DOTS, pickup_dot_stuffed=stuffed)
    head, stored = head_and_body(outcome.message)
    assert stored == body
    assert b"\r\n.Dotted: header" in head  # a header is never un-stuffed


# -- any bytes -------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        b"x-sender: alice@example.net",
        b"X-Receiver: bob@example.org",
        b"x-receiver:",
        b"x-sender: <>",
        b"From: alice@example.net",
        b"To: bob@example.org, carol@example.org",
        b"Bcc: dan@example.org",
        b" eve@example.org,",
        b"\t",
        b"Subject: \xe9",
        b"To: \xff",
        b".",
        b"..",
        b"",
        b"Received: from x",
        b"X-Long: " + b"y" * 1000,
        b"X-Foldable: " + b"y " * 600,
        b"Cc: group: h@example.org;",
        b"\x00",
        b"=?utf-8?b?QQ==?=",
        b"To: (c) <i@example.org> (d)",
        b"Message-ID: <a@b>",
        b"Date: x",
        b"no colon here",
    ]
)
_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r"])
_NEAR_MISSES = st.lists(st.tuples(_PIECES, _ENDS), max_size=20).map(
    lambda pairs: b"".join(piece + end for piece, end in pairs)
)
_VALID_HEADS = st.lists(
    st.sampled_from(
        [
            b"x-sender: alice@example.net\r\nx-receiver: bob@example.org\r\n",
            b"From: alice@example.net\nTo: bob@example.org\n",
            b"Sender: s@example.net\rCc: c@example.org\r",
            b"Bcc: d@example.org,\r\n e@example.org\r\n",
        ]
    ),
    min_size=1,
    max_size=3,
).map(b"".join)
_BODIES = st.binary(max_size=400).map(lambda body: body.replace(b"\0", b"."))
_FILES = (
    st.binary(max_size=400) | _NEAR_MISSES | st.tuples(_VALID_HEADS, _ENDS, _BODIES).map(b"".join)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_FILES)
def test_any_file_is_queued_with_its_body_or_in_badmail_with_a_reason(raw: bytes) -> None:
    clock, transport = FakeClock(), CapturingTransport()
    with Spool(pyfs.MemoryFS(), clock=clock) as spool:
        service = make_service(spool, clock, transport)
        try:
            outcome = take(spool, service, raw)
        finally:
            service.close()
    if outcome.queued is None:
        return
    head, body = head_and_body(outcome.message)
    assert body == stored_body(raw)
    names = field_names(head)
    assert b"bcc" not in names
    assert names[0] == b"received"
    assert names.count(b"message-id") >= 1
    assert names.count(b"date") >= 1


def test_a_large_body_streams_through_intake_in_bounded_memory(
    tmp_path: Path, clock: FakeClock
) -> None:
    transport = CapturingTransport()
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        path = tmp_path / "MailRoot" / "Pickup" / "big.eml"
        with path.open("wb") as handle:
            handle.write(HEAD + b"Subject: big\r\n\r\n")
            for _ in range(24):
                handle.write((b"%076d\n" % 7) * (MiB // 77))
        # Deferred, so that the capturing transport does not read the message whole.
        transport.answers = lambda _address: Reply(451, "4.3.0", "later")
        service = make_service(
            spool, clock, transport, keep=False, max_message_size=64 * MiB, pickup_dot_stuffed=True
        )
        tracemalloc.start()
        try:
            report = service.run_once()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            service.close()
        assert report.badmail == ()
        assert len(report.picked_up) == 1
    assert peak < 6 * MiB, peak  # the file is 24 MiB


# -- sendmail --------------------------------------------------------------------------------------


def pickup_names(root: Path) -> list[str]:
    return sorted(os.listdir(root / "Pickup"))


@dataclass(frozen=True)
class Sent:
    status: int
    err: str
    files: list[bytes]


@pytest.fixture
def mailroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "MailRoot"
    Spool(str(root)).close()
    settings = tmp_path / "spoolmail.toml"
    settings.write_text(
        f'[spoolmail]\nroot = "{root}"\nlocal_domains = ["example.com"]\n'
        "max_message_size = 100000\n"
    )
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(settings))
    monkeypatch.delenv("SPOOLMAIL_ROOT", raising=False)
    monkeypatch.delenv("NAME", raising=False)
    monkeypatch.setenv("LOGNAME", "webapp")
    return root


@pytest.fixture
def sendmail(
    mailroot: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Sent]:
    """``spoolmail sendmail ARGV`` reading ``stdin``; every file it left, read and removed."""

    def run(*argv: str, stdin: bytes | io.RawIOBase | None = b"") -> Sent:
        if stdin is None:
            monkeypatch.setattr(sys, "stdin", None)
        else:
            raw = io.BytesIO(stdin) if isinstance(stdin, bytes) else io.BufferedReader(stdin)
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        capsys.readouterr()
        status = main(["sendmail", *argv], out=io.StringIO())
        names = pickup_names(mailroot)
        assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
        files = [(mailroot / "Pickup" / name).read_bytes() for name in names]
        for name in names:
            (mailroot / "Pickup" / name).unlink()
        return Sent(status, capsys.readouterr().err, files)

    return run


class Endless(io.RawIOBase):
    """``head``, then ``line`` for ever, made as read; ``given`` counts the bytes handed out."""

    def __init__(self, head: bytes, line: bytes) -> None:
        self.head = head
        self.lines = line * (64 * 1024 // len(line) + 1)
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data, self.head = (self.head or self.lines), b""
        size = min(len(buffer), len(data))
        buffer[:size] = data[:size]
        self.given += size
        return size


@pytest.mark.parametrize(
    ("head", "line"),
    [(b"Subject: endless\n\n", b"y" * 70 + b"\n"), (b"", b"X-Header: " + b"z" * 60 + b"\n")],
    ids=["body", "header"],
)
def test_endless_stdin_stops_past_the_limit_in_bounded_memory(
    sendmail: Callable[..., Sent], head: bytes, line: bytes
) -> None:
    endless = Endless(head, line)
    tracemalloc.start()
    try:
        sent = sendmail("-i", "ops@example.com", stdin=endless)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent == Sent(
        65,
        "spoolmail sendmail: message larger than 100000 bytes (the max_message_size setting); "
        "nothing was sent\n",
        [],
    )
    assert endless.given < 100_000 + 2 * 64 * 1024 + 8192  # it stopped reading
    assert peak < 2 * MiB


def test_t_with_no_recipients_is_a_usage_error(sendmail: Callable[..., Sent]) -> None:
    for stdin in (b"Subject: nobody\n\nhi\n", b"To: undisclosed-recipients:;\n\nhi\n", b""):
        sent = sendmail("-t", stdin=stdin)
        assert sent.status == 64
        assert sent.err.startswith("spoolmail sendmail: no recipients: -t found no address")
        assert sent.files == []


@pytest.mark.parametrize(
    ("sender", "fragment"),
    [
        ("a@@b", "it has more than one '@'"),
        ("<<>>", "it has '<' inside '<...>'"),
        ("a\0b@example.com", "the control character '\\x00'"),
        ("a@example.com\r\nBcc: x@example.org", "the control character '\\r'"),
        ("x" * 5000 + "@example.com", "longer than 64 octets"),
        ("\udcff@example.com", "not an address"),
    ],
    ids=["two-at", "angles", "nul", "header-injection", "long", "surrogate"],
)
def test_f_with_garbage_is_ex_nouser_and_nothing_is_written(
    sendmail: Callable[..., Sent], sender: str, fragment: str
) -> None:
    sent = sendmail("-i", "-f", sender, "ops@example.com", stdin=b"Subject: s\n\nhi\n")
    assert sent.status == 67
    assert sent.err.startswith("spoolmail sendmail: bad sender (-f): ")
    assert fragment in sent.err
    assert sent.files == []


def test_a_header_that_never_ends_is_a_data_error(sendmail: Callable[..., Sent]) -> None:
    sent = sendmail("-i", "ops@example.com", stdin=b"Subject: s\nFrom: a@example.com\nhello\n")
    assert sent.status == 65
    assert sent.err.startswith("spoolmail sendmail: line 3 is not a header field")
    assert sent.files == []


@pytest.mark.parametrize(
    ("stdin", "line"),
    [
        (b"Subject: a\0b\n\nhi\n", 1),
        (b"Subject: s\n\nhi\nthere\0\n", 4),
        (b"\0hello\n", 1),
        (b"Subject: s\n\n" + b"line\n" * 15_000 + b"\0", 15_003),
    ],
    ids=["header", "body", "first-line", "late"],
)
def test_nul_bytes_are_a_data_error(sendmail: Callable[..., Sent], stdin: bytes, line: int) -> None:
    sent = sendmail("-i", "ops@example.com", stdin=stdin)
    assert sent == Sent(
        65,
        f"spoolmail sendmail: line {line} contains a NUL byte; a message is text (5.6.0); "
        "nothing was sent\n",
        [],
    )


def test_a_closed_stdin_is_an_io_error_and_nothing_is_written(
    sendmail: Callable[..., Sent], mailroot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"Subject: s\n\nhi\n"))
    stdin.buffer.close()
    monkeypatch.setattr(sys, "stdin", stdin)
    err = io.StringIO()
    status = sendmail_command.run(["-i", "ops@example.com"], out=io.StringIO(), err=err)
    assert (status, err.getvalue()) == (
        74,
        "spoolmail sendmail: cannot read the message from standard input: it is closed\n",
    )
    assert pickup_names(mailroot) == []
    # With its descriptor 0 closed, a Python process has no sys.stdin at all.
    assert sendmail("-i", "ops@example.com", stdin=None) == Sent(
        74, "spoolmail sendmail: there is no standard input to read the message from\n", []
    )


def test_an_immediately_empty_stdin_is_an_empty_message(sendmail: Callable[..., Sent]) -> None:
    sent = sendmail("-i", "ops@example.com", stdin=b"")
    assert sent.status == 0
    assert len(sent.files) == 1


def test_what_sendmail_writes_from_hostile_input_intake_takes_as_it_is(
    sendmail: Callable[..., Sent], mailroot: Path
) -> None:
    inputs = [
        b"Subject: cr only\rFrom: a@example.com\r\rline\r",
        b"To: a@example.com\nBcc: b@example.com,\n c@example.com\nBCC : d@example.com\n\nhi\n",
        b'To: g: b@example.com (B), "C, D" <c@example.com>;\nFrom: =?utf-8?b?QQ==?= <a@x.org>\n',
        b"x-receiver: evil@example.org\nSubject: envelope lines of the input\n\n..\n.\n",
        b"Subject: " + b"word " * 3000 + b"\n\nlong but foldable\n",
        b"Subject: caf\xe9\n\nbody \xff\n",
    ]
    written = []
    for stdin in inputs:
        sent = sendmail("-t", "-i", "ops@example.com", stdin=stdin)
        assert sent.status == 0, sent.err
        written += sent.files
    for number, data in enumerate(written):
        (mailroot / "Pickup" / f"{number}.eml").write_bytes(data)
    clock, transport = FakeClock(), CapturingTransport()
    with Spool(str(mailroot), clock=clock) as spool:
        service = make_service(spool, clock, transport)
        try:
            report = service.run_once()
        finally:
            service.close()
    assert report.errors == ()
    assert report.badmail == ()
    assert len(report.picked_up) == len(inputs)
    assert pickup_names(mailroot) == []
    for message in transport.messages:
        head = head_and_body(message.data)[0].lower()
        assert b"\r\nbcc" not in head
        assert b"x-receiver" not in head
        assert "evil@example.org" not in message.recipients
