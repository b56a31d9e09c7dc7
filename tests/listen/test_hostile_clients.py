"""Hostile and broken SMTP clients against a real listener on 127.0.0.1, through raw sockets.

Each test plays one client the listener must survive: lines that never end, clients that drip a
byte at a time or never read, NUL and 8-bit octets, absurd parameters and paths, floods, cut
DATA, STARTTLS with something smuggled behind it. Each asserts the replies, what is (and is not)
in the Queue, that memory stays bounded where a client could grow it, and that a well-behaved
client is served afterwards.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import select
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail import Listener, Spool
from spoolmail._listen.session import JUNK_LIMIT
from spoolmail.testing import FakeClock
from tests.listen.conftest import running
from tests.listen.raw import RawClient
from tests.tlscerts import TestCertificates, make_certificates
from tests.waiting import until

MESSAGE = b"From: a@client.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
TRANSACTION = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
# Every final reply: a code and (RFC 2034) an enhanced code; EHLO's last line and 354 aside.
REPLY = re.compile(r"^(?:[245]\d\d [245]\.\d{1,3}\.\d{1,3} |250 HELP$|354 )")
CHUNK = b"x" * 65536


def queued(spool: Spool) -> set[str]:
    return {item.id for item in spool.queued()}


def body_of(spool: Spool, queue_id: str) -> bytes:
    """The message as queued, without the Received field the listener put on top."""
    stored = spool.message(queue_id)
    assert stored.startswith(b"Received: ")
    end = re.match(rb"Received: .*? [+-]\d{4}\r\n", stored, re.DOTALL)  # ends with its date
    assert end is not None
    return stored[end.end() :]


def serves(listener: Listener, spool: Spool) -> None:
    """A well-behaved client after the hostile one: its message is queued, whole."""
    before = queued(spool)
    client = RawClient(listener)
    assert client.greeting.startswith("220 ")
    client.send(b"EHLO good.test\r\n" + TRANSACTION + MESSAGE + b".\r\nQUIT\r\n")
    replies = client.replies(6)
    assert [r[:9] for r in replies] == [
        "250 HELP",
        "250 2.1.0",
        "250 2.1.5",
        "354 End d",
        "250 2.0.0",
        "221 2.0.0",
    ]
    (new,) = queued(spool) - before
    assert body_of(spool, new) == MESSAGE
    assert replies[4].endswith(f"queued as {new}")


def closed_within(
    client: RawClient, seconds: float, *, feed: bytes = b"", every: float = 0
) -> float:
    """Seconds until the server closes ``client`` (while it sends ``feed`` every ``every`` s);
    fails if it has not after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if feed:
            try:
                client.sock.sendall(feed)
            except OSError:  # closed by the server: a reset or a broken pipe
                return time.monotonic() - started
        readable, _, _ = select.select([client.sock], [], [], every or 0.05)
        if readable:
            try:
                chunk = client.sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - started
            if not chunk:
                return time.monotonic() - started
            client.buffer += chunk
    raise AssertionError(f"the server kept the connection for {seconds} s")


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The most memory Python held (every thread's, the listener's too) while in the block."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    peak = 0

    def measured() -> int:
        return peak

    try:
        yield measured
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_session(
    listener: Listener, certificates: TestCertificates, first: bytes = b""
) -> RawClient:
    """A raw client that said EHLO and STARTTLS (and ``first`` in the same packet) and is now
    talking TLS; its 220 is read."""
    client = RawClient(listener)
    client.send(b"EHLO c.test\r\nSTARTTLS\r\n" + first)
    assert client.replies(2)[1] == "220 2.0.0 Ready to start TLS"
    assert client.buffer == b""  # nothing answered in plain text after the 220
    context = certificates.client_context()
    context.check_hostname = False
    client.sock = context.wrap_socket(client.sock, server_hostname="mx.test")
    return client


def users(user: str, password: str) -> bool:
    return (user, password) == ("app", "s3cret")


# -- lines that never end, clients that drip, clients that never read ----------------------------


def test_a_command_line_of_megabytes_is_dropped_as_it_comes(spool: Spool) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n")
        client.replies(1)
        with peak_memory() as peak:
            client.send(b"NOOP ")
            for _ in range(256):  # 16 MiB without a CRLF
                client.send(CHUNK)
            client.send(b"\r\nNOOP\r\n")
            replies = client.replies(2)
        assert replies == ["500 5.5.2 Command line too long", "250 2.0.0 Ok"]
        assert peak() < 4 * 1024 * 1024
        serves(listener, spool)


@pytest.mark.parametrize(
    ("feed", "every"),
    [(CHUNK, 0.01), (b"x", 0.02)],
    ids=["endless-line", "one-byte-at-a-time"],
)
@pytest.mark.parametrize("where", ["command", "data"])
def test_a_client_that_never_finishes_is_closed_at_the_command_timeout(
    spool: Spool, feed: bytes, every: float, where: str
) -> None:
    """The silence timer runs from the last whole command: octets that never make a line (or
    a DATA that never ends) do not hold it off. Nothing is queued."""
    with running(spool, limits={"command_timeout": 0.5}) as listener:
        client = RawClient(listener)
        if where == "data":
            client.send(b"EHLO c.test\r\n" + TRANSACTION + b"Subject: slow\r\n\r\n")
            assert client.replies(4)[3].startswith("354 ")
        else:
            client.send(b"EHLO c.test\r\nMAIL FROM:<")
            client.replies(1)
        assert closed_within(client, 5, feed=feed, every=every) < 3
        assert client.replies(1) == []  # closed without a word: no reply was due
        serves(listener, spool)
    assert len(queued(spool)) == 1  # the good client's


def test_a_client_that_never_reads_its_replies_holds_bounded_memory(spool: Spool) -> None:
    """Pipelined commands whose replies are never read: the listener stops reading when its
    writes back up, instead of queueing replies without end."""
    with running(spool) as listener:
        client = RawClient(listener)
        client.sock.settimeout(2)
        sent = 0
        with peak_memory() as peak:
            try:
                while sent < 64 * 1024 * 1024:
                    # HELP: not a junk command (NOOP would end the session at JUNK_LIMIT)
                    client.sock.sendall(b"HELP\r\n" * 10_000)
                    sent += 60_000
            except TimeoutError:
                pass  # the listener stopped reading: flow control
        assert sent < 64 * 1024 * 1024
        assert peak() < 8 * 1024 * 1024
        client.close()
        serves(listener, spool)


# -- NUL, 8-bit, garbage -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"\x00", '500 5.5.2 Error: command "\x00" not recognized'),
        (b"NO\x00OP", "500 5.5.2 Error: command"),
        (b"\xff\xfe\xfd", "500 5.5.2 Error: bad syntax"),
        (b"\xc3\xa9HLO x", "500 5.5.2 Error: bad syntax"),
        (b"NOOP \x00\xff", "250 2.0.0 Ok"),
        (b"MAIL FROM:<a\x00b@client.test>", "501 5.1.7 "),
        (b"MAIL FROM:<a\xffb@client.test>", "553 5.6.7 "),
        (b"MAIL FROM:<a\xffb@client.test> SMTPUTF8", "501 5.1.7 "),
        (b"MAIL FROM:<a@client.test> SIZE=1\x00", "501 5.5.4 "),
        (b"MAIL FROM:<a@client.test> BODY=8BIT\xffMIME", "501 5.5.4 "),
        (b"VRFY \x00\xff", "252 "),
        (b"", "500 5.5.2 Error: bad syntax"),
        (b"   ", '500 5.5.2 Error: command "" not recognized'),
    ],
)
def test_nul_and_8bit_octets_in_commands_get_a_reply_and_the_session_goes_on(
    spool: Spool, line: bytes, reply: str
) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + line + b"\r\nRSET\r\nNOOP\r\n")
        replies = client.replies(4)
        assert replies[1].startswith(reply)
        assert replies[2:] == ["250 2.0.0 Ok", "250 2.0.0 Ok"]
    assert queued(spool) == set()


@pytest.mark.parametrize("name", [b"\x00\x01evil", b"\xff\xfe", b"x)(y\x7f", b"\xc3\xa9vil"])
def test_a_hostile_helo_name_never_reaches_the_received_field_raw(
    spool: Spool, name: bytes
) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO " + name + b"\r\n" + TRANSACTION + MESSAGE + b".\r\n")
        assert client.replies(5)[4].startswith("250 2.0.0 ")
        (only,) = queued(spool)
        stored = spool.message(only)
        head = stored[: stored.index(b"\r\nFrom: ")]
        assert re.fullmatch(rb"[\x21-\x7e\r\n\t ]*", head), head
        assert head.startswith(b"Received: from ")
        assert body_of(spool, only) == MESSAGE


def test_pipelined_commands_with_garbage_between_them(spool: Spool) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(
            b"EHLO c.test\r\n\x00\x01\x02\r\nMAIL FROM:<a@client.test>\r\n\xff\xfe\r\n"
            b"RCPT TO:<bob@example.com>\r\nRCPT TO:<>\r\nRCPT TO:<eve@remote.test>\r\n   \r\n"
            b"DATA\r\n" + MESSAGE + b".\r\nGARBAGE\r\nQUIT\r\n"
        )
        replies = client.replies(12)
        assert [r[:9] for r in replies] == [
            "250 HELP",
            "500 5.5.2",  # unknown command
            "250 2.1.0",
            "500 5.5.2",  # not ASCII
            "250 2.1.5",
            "501 5.1.3",  # <> is no recipient
            "550 5.7.1",
            "500 5.5.2",  # blank
            "354 End d",
            "250 2.0.0",
            "500 5.5.2",
            "221 2.0.0",
        ]
        assert client.closed()
        (only,) = queued(spool)
        assert body_of(spool, only) == MESSAGE
        assert [r.address for r in spool.queued_message(only).envelope.recipients] == [
            "bob@example.com"
        ]


def test_a_stream_of_unknown_commands_ends_the_session(spool: Spool) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + b"FOO\r\n" * 20)
        replies = client.replies(7)
        assert replies[1:5] == ['500 5.5.2 Error: command "FOO" not recognized'] * 4
        assert replies[5] == "502 5.5.1 Too many unrecognized commands, goodbye."
        assert client.closed()
        serves(listener, spool)


def test_junk_commands_hold_a_session_only_so_long(spool: Spool) -> None:
    """NOOP, RSET and VRFY each restart the silence timer: at most JUNK_LIMIT of them between two
    accepted messages (Postfix's smtpd_junk_command_limit), the next is 421 and the end."""
    with running(spool) as listener:
        client = RawClient(listener)
        junk = [b"NOOP\r\n", b"RSET\r\n", b"VRFY bob\r\n"]
        client.send(b"EHLO c.test\r\n" + b"".join(junk[n % 3] for n in range(JUNK_LIMIT - 1)))
        replies = client.replies(JUNK_LIMIT)
        assert all(r.startswith(("250 ", "252 ")) for r in replies[1:]), replies[-3:]
        client.send(TRANSACTION + MESSAGE + b".\r\n")  # one message: the count starts again
        assert client.replies(4)[3].startswith("250 2.0.0 Ok: queued as")
        client.send(b"NOOP\r\n" * JUNK_LIMIT)
        assert client.replies(JUNK_LIMIT) == ["250 2.0.0 Ok"] * JUNK_LIMIT  # still served
        client.send(b"NOOP\r\n")
        assert client.replies(1) == [f"421 4.7.0 {listener.fqdn} Error: too many junk commands"]
        assert client.closed()
        assert len(queued(spool)) == 1
        serves(listener, spool)


# -- MAIL and RCPT: absurd parameters and paths ----------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        ("SIZE=-1", "501 5.5.4 "),
        ("SIZE=", "501 5.5.4 "),
        ("SIZE", "501 5.5.4 "),
        ("SIZE=1e3", "501 5.5.4 "),
        ("SIZE=99999999999999999999", "552 5.3.4 "),
        ("SIZE=\u00b2", "501 5.5.4 "),  # str.isdigit, not int: was 451 Internal error
        ("SIZE=\u0661\u0662", "501 5.5.4 "),  # Arabic-Indic digits are not DIGIT
        ("SIZE=\uff11", "501 5.5.4 "),  # fullwidth
        ("SIZE=1 SIZE=2", "250 2.1.0 "),
        ("BODY=garbage", "501 5.5.4 "),
        ("BODY=", "501 5.5.4 "),
        ("BODY=8BITMIME BODY=7BIT", "250 2.1.0 "),
        ("FROB=1", "555 5.5.4 "),
        ("=1", "501 5.5.4 "),
        ("X-\u00e9=1", "501 5.5.4 "),
        ("SMTPUTF8=yes", "501 5.5.4 "),
        ("RET=FULL RET=FULL", "501 5.5.4 "),
        ("ENVID=" + "A" * 300, "501 5.5.4 "),
        ("SIZE=1 " * 80, "500 5.5.2 Command line too long"),
    ],
)
def test_absurd_mail_parameters_get_their_reply(spool: Spool, parameters: str, reply: str) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        line = f"MAIL FROM:<a@client.test> {parameters}\r\n".encode()
        client.send(b"EHLO c.test\r\n" + line + b"NOOP\r\n")
        replies = client.replies(3)
        assert replies[1].startswith(reply)
        assert replies[2] == "250 2.0.0 Ok"


def test_a_size_parameter_does_not_lift_the_size_limit(spool: Spool) -> None:
    """A SIZE that lies, or two of them, the smaller last: DATA still counts the octets."""
    with running(spool, limits={"max_message_size": 1000}) as listener:
        client = RawClient(listener)
        client.send(
            b"EHLO c.test\r\nMAIL FROM:<a@client.test> SIZE=99999 SIZE=10\r\n"
            b"RCPT TO:<bob@example.com>\r\nDATA\r\n" + MESSAGE + b"x" * 2000 + b"\r\n.\r\nNOOP\r\n"
        )
        replies = client.replies(6)
        assert [r[:9] for r in replies[1:]] == [
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "552 5.3.4",
            "250 2.0.0",
        ]
    assert queued(spool) == set()


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        ("a@", "553 5.1.3 "),  # the email parser raised IndexError: was 451 Internal error
        ('"', "553 5.1.3 "),
        ("a\x01@", "553 5.1.3 "),
        ("<a@>", "553 5.1.3 "),
        ("<>", "501 5.1.3 "),  # the null path is for senders only
        ("<postmaster>", "501 5.1.3 "),
        ("<@remote.test:bob@example.com>", "250 2.1.5 "),  # the source route is ignored
        ("<@example.com:bob@remote.test>", "550 5.7.1 "),  # ...and opens no relay
        ('<"bob@remote.test"@example.com>', "250 2.1.5 "),
        ("<bob%remote.test@example.com>", "250 2.1.5 "),
        ("<bob@[127.0.0.1]>", "550 5.7.1 "),
        ("<bob@example.com.>", "553 5.1.3 "),
        ('<"b\\"o\\\\b"@example.com>', "250 2.1.5 "),
        ('<"b\x01b"@example.com>', "501 5.1.3 "),
        ("<b\x7fb@example.com>", "501 5.1.3 "),
        ("<" + "b" * 300 + "@example.com>", "501 5.1.3 "),
        ("<bob@" + "x" * 63 + ".example.com>", "550 5.7.1 "),
        ("<bob@" + "x" * 64 + ".example.com>", "501 5.1.3 "),  # a label over 63 octets
        ("<" + "b" * 600 + "@example.com>", "500 5.5.2 Command line too long"),
    ],
)
def test_absurd_recipient_paths_get_their_reply(spool: Spool, path: str, reply: str) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(
            b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\n"
            + f"RCPT TO:{path}\r\n".encode()
            + b"RCPT TO:<carol@example.com>\r\nDATA\r\n"
            + MESSAGE
            + b".\r\n"
        )
        replies = client.replies(6)
        assert replies[2].startswith(reply)
        assert replies[3].startswith("250 2.1.5 ")
        assert replies[5].startswith("250 2.0.0 ")
        (only,) = queued(spool)
        recipients = [r.address for r in spool.queued_message(only).envelope.recipients]
        assert recipients[-1] == "carol@example.com"
        assert len(recipients) == (2 if reply.startswith("250") else 1)


@pytest.mark.parametrize("path", ["a@", '"', "\x01@", "<a@>"])
def test_a_sender_path_the_parser_cannot_read_is_553(spool: Spool, path: str) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(f"EHLO c.test\r\nMAIL FROM:{path}\r\nMAIL FROM:<a@b.test>\r\n".encode())
        replies = client.replies(3)
        assert replies[1].startswith("553 5.1.3 ")
        assert replies[2] == "250 2.1.0 Ok"


def test_many_ehlos_do_not_lengthen_the_mail_line_limit(spool: Spool) -> None:
    """aiosmtpd adds SIZE's and SMTPUTF8's room to MAIL's line limit at every EHLO, in one dict
    its sessions share: a few thousand EHLOs let MAIL lines grow to the reader's 64 KiB, whose
    paths the email package's parser reads in quadratic time (seconds of the event loop's for a
    line of quoted words), and a new connection's set-up cut every other session's limit back."""
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" * 100)
        client.replies(100)
        words = "<" + '"a".' * 200 + "a@client.test>"  # 807 octets of MAIL line
        client.send(f"MAIL FROM:{words}\r\n".encode())
        assert client.replies(1) == ["500 5.5.2 Command line too long"]
        other = RawClient(listener)
        other.send(b"EHLO other.test\r\n")
        other.replies(1)
        # 540 octets: over 512, under what EHLO's SIZE and SMTPUTF8 allow (548).
        long_ok = (
            "MAIL FROM:<a@client.test> ENVID="
            + "A" * 100
            + " SIZE=1"
            + " BODY=7BIT" * 39
            + " SIZE=12345"
        )
        assert len(long_ok) == 540
        client.send(long_ok.encode() + b"\r\n")
        assert client.replies(1) == ["250 2.1.0 Ok"]


def test_a_recipient_flood_beyond_the_limit(spool: Spool) -> None:
    with running(spool, limits={"max_recipients": 5}) as listener:
        client = RawClient(listener)
        rcpts = b"".join(b"RCPT TO:<u%d@example.com>\r\n" % i for i in range(300))
        client.send(b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\n" + rcpts)
        replies = client.replies(302)
        assert replies[2:7] == ["250 2.1.5 Ok"] * 5
        assert set(replies[7:]) == {"452 4.5.3 Too many recipients"}
        client.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        assert client.replies(2)[1].startswith("250 2.0.0 ")
        (only,) = queued(spool)
        assert len(spool.queued_message(only).envelope.recipients) == 5
        assert body_of(spool, only) == MESSAGE


@pytest.mark.parametrize(
    "before",
    [b"", b"MAIL FROM:<a@client.test>\r\n", b"MAIL FROM:<a@client.test>\r\nRCPT TO:<e@x.test>\r\n"],
    ids=["no-mail", "no-rcpt", "rcpt-refused"],
)
def test_data_without_an_accepted_recipient_is_503(spool: Spool, before: bytes) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        commands = before.count(b"\r\n")
        client.send(b"EHLO c.test\r\n" + before + b"DATA\r\nNOOP\r\n")
        replies = client.replies(3 + commands)
        assert replies[-2].startswith("503 5.5.1 ")
        assert replies[-1] == "250 2.0.0 Ok"
    assert queued(spool) == set()


# -- DATA -----------------------------------------------------------------------------------------


def test_data_at_the_size_limit_is_queued_with_the_size_the_limit_applied_to(
    spool: Spool,
) -> None:
    """Stored, the message has the listener's Received field too: the envelope keeps the size of
    the DATA, which delivery checks the limit against (it failed such a message 5.3.4)."""
    limit = 64 * 1024
    with running(spool, limits={"max_message_size": limit}) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + TRANSACTION)
        assert client.replies(4)[3].startswith("354 ")
        fill = limit - len(MESSAGE)
        body = MESSAGE + (b"y" * 98 + b"\r\n") * (fill // 100) + b"y" * (fill % 100 - 2) + b"\r\n"
        assert len(body) == limit
        client.send(body + b".\r\n")
        assert client.replies(1)[0].startswith("250 2.0.0 Ok: queued as")
    [item] = spool.queued()
    assert item.envelope.received_size == limit < item.envelope.size


def test_a_message_over_the_size_limit_is_552_with_memory_bounded(spool: Spool) -> None:
    with running(spool, limits={"max_message_size": 64 * 1024}) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + TRANSACTION)
        assert client.replies(4)[3].startswith("354 ")
        line = b"y" * 998 + b"\r\n"
        block = line * 64
        with peak_memory() as peak:
            for _ in range(256):  # 16 MiB
                client.send(block)
            client.send(b".\r\nNOOP\r\n")
            replies = client.replies(2)
        assert replies == [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 Ok",
        ]
        assert peak() < 4 * 1024 * 1024
        assert queued(spool) == set()
        serves(listener, spool)


@pytest.mark.parametrize(
    "tail",
    [
        b"no end of line",
        b"the last line\r\n",
        b"a dot but no CRLF after it\r\n.",
        b"a dot and a CR\r\n.\r",
        b"QUIT\r\n",  # QUIT is body text inside DATA
    ],
)
@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_message_cut_short_by_the_client_queues_nothing(
    spool: Spool, tail: bytes, how: str
) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + TRANSACTION)
        assert client.replies(4)[3].startswith("354 ")
        client.send(b"Subject: cut\r\n\r\n" + tail)
        if how == "close":
            client.sock.shutdown(socket.SHUT_RDWR)
            client.close()
        else:
            client.sock.shutdown(socket.SHUT_WR)
            assert client.closed()
            assert client.replies(1) == []
        until("the session ends", lambda: not listener._sessions)
        serves(listener, spool)
        (only,) = queued(spool)
        assert b"cut" not in spool.message(only)


def test_quit_inside_data_is_part_of_the_message(spool: Spool) -> None:
    with running(spool) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\n" + TRANSACTION + b"Subject: q\r\n\r\nQUIT\r\n")
        assert client.replies(4)[3].startswith("354 ")
        client.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.replies(1)  # no 221: the listener is still reading the message
        client.sock.settimeout(10)
        client.send(b".\r\nQUIT\r\n")
        replies = client.replies(2)
        assert replies[0].startswith("250 2.0.0 ")
        assert replies[1] == "221 2.0.0 Bye"
        (only,) = queued(spool)
        assert body_of(spool, only) == b"Subject: q\r\n\r\nQUIT\r\n"


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Spool, Listener]]:
    """One listener for the property tests' many examples (each on a new connection)."""
    with Spool("mem://", clock=FakeClock()) as spool, running(spool) as listener:
        yield spool, listener


BODY_PARTS = [b"a", b".", b"..", b"\r\n", b"\r\n.", b"\r\n..", b"\r", b"\n", b"\x00", b"\xff", b" "]


def unstuffed(body: bytes) -> bytes:
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in body.split(b"\r\n"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(BODY_PARTS), max_size=40))
def test_a_body_is_queued_whole_or_refused_with_nothing_queued(
    shared: tuple[Spool, Listener], parts: list[bytes]
) -> None:
    """Any body of dots, NULs, 8-bit octets and line ends: with a bare CR or LF, 521 and the
    session closed, nothing queued; else queued exactly, dots unstuffed."""
    spool, listener = shared
    body = b"".join(parts)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b".\r\n") or b"\r\n.\r\n" in body:
        return  # a lone dot ends it sooner
    before = queued(spool)
    client = RawClient(listener)
    client.send(b"EHLO c.test\r\n" + TRANSACTION + body + b".\r\nQUIT\r\n")
    replies = client.replies(6)
    bare = any(b"\r" in line or b"\n" in line for line in body.split(b"\r\n"))
    if bare:
        assert replies[4].startswith("521 5.5.2 mx.example.com Error: bare <")
        assert client.closed()
        assert queued(spool) == before
    else:
        assert replies[4].startswith("250 2.0.0 ")
        assert replies[5] == "221 2.0.0 Bye"
        (new,) = queued(spool) - before
        assert body_of(spool, new) == unstuffed(body)
    client.close()


PATH_PARTS = st.sampled_from(
    [
        "a",
        "@",
        "<",
        ">",
        '"',
        "\\",
        "\xff",
        "\u00e9",
        "\x00",
        "\x01",
        "\t",
        " ",
        ".",
        "(",
        ")",
        "[",
        "]",
        ":",
        ",",
        "=",
        ";",
        "+",
        "\u00b2",
        "\u2028",
        "example.com",
        "SIZE=",
        "BODY=",
        "ORCPT=",
        "NOTIFY=",
        "SMTPUTF8",
        "1",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(PATH_PARTS, min_size=1, max_size=16).map("".join), st.booleans())
def test_any_mail_or_rcpt_argument_gets_a_clear_reply(
    shared: tuple[Spool, Listener], argument: str, rcpt: bool
) -> None:
    """Whatever follows MAIL FROM: or RCPT TO:, the reply is a 2xx or a refusal with its
    enhanced code; never 451 (an exception inside the listener); the session goes on."""
    _, listener = shared
    data = argument.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff")
    command = b"RCPT TO:" if rcpt else b"MAIL FROM:"
    prefix = b"MAIL FROM:<a@client.test> SMTPUTF8\r\n" if rcpt else b""
    client = RawClient(listener)
    client.send(b"EHLO c.test\r\n" + prefix + command + data + b"\r\nRSET\r\nNOOP\r\n")
    replies = client.replies(5 if rcpt else 4)
    for reply in replies:
        assert REPLY.match(reply), reply
        assert not reply.startswith("451"), reply
    assert replies[-2:] == ["250 2.0.0 Ok", "250 2.0.0 Ok"]
    client.close()


# -- connections -----------------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_421_and_the_slots_come_back(spool: Spool) -> None:
    with running(spool, limits={"max_sessions": 3}) as listener:
        clients = [RawClient(listener) for _ in range(30)]
        greetings = [c.greeting[:9] for c in clients]
        assert greetings[:3] == ["220 mx.ex"] * 3
        assert set(greetings[3:]) == {"421 4.7.0"}
        for client in clients[3:]:
            assert client.closed()
        for client in clients[:3]:
            client.close()
        until("the sessions end", lambda: not listener._sessions)
        serves(listener, spool)


def test_denied_clients_count_among_the_sessions(spool: Spool) -> None:
    """A client turned away (554) waits for its QUIT, as RFC 5321 section 3.1 says; it holds a
    connection meanwhile, so it counts: a denied network cannot open connections without end."""
    with running(
        spool, denied_clients=["127.0.0.0/8"], limits={"max_sessions": 2, "command_timeout": 5}
    ) as listener:
        first, second = RawClient(listener), RawClient(listener)
        assert first.greeting.startswith("554 5.7.1 ")
        assert second.greeting.startswith("554 5.7.1 ")
        third = RawClient(listener)
        assert third.greeting.startswith("421 4.7.0 ")
        assert third.closed()
        first.send(b"QUIT\r\n")
        assert first.replies(1) == ["221 2.0.0 Bye"]
        until("the turned-away session ends", lambda: len(listener._sessions) == 1)
        assert RawClient(listener).greeting.startswith("554 5.7.1 ")


# -- STARTTLS and AUTH -----------------------------------------------------------------------------


def test_commands_pipelined_behind_starttls_are_dropped(
    spool: Spool, certificates: TestCertificates
) -> None:
    """CVE-2011-0411's class: what follows STARTTLS in the same packet was sent in plain text
    and must not be run inside the TLS session (RFC 3207 section 4.2: the session starts anew)."""
    with running(spool, tls_context=certificates.server_context()) as listener:
        injected = b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        client = tls_session(listener, certificates, first=injected + MESSAGE + b".\r\n")
        client.send(b"MAIL FROM:<good@client.test>\r\n")
        assert client.replies(1) == ["503 5.5.1 Error: send HELO first"]
        client.send(b"EHLO c.test\r\nMAIL FROM:<good@client.test>\r\n")
        client.send(b"RCPT TO:<bob@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\n")
        replies = client.replies(5)
        assert [r[:9] for r in replies] == [
            "250 HELP",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0",
        ]
        (only,) = queued(spool)
        assert spool.queued_message(only).envelope.sender == "good@client.test"
        assert b" with ESMTPS id " in spool.message(only)


def test_plain_text_after_starttls_ends_the_session_quietly(
    spool: Spool, certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed handshake is the client's doing: the connection closed, one INFO line, no
    error with a traceback for every scanner that tries."""
    caplog.set_level(logging.INFO, logger="spoolmail.listener")
    with running(spool, tls_context=certificates.server_context()) as listener:
        client = RawClient(listener)
        client.send(b"EHLO c.test\r\nSTARTTLS\r\n")
        assert client.replies(2)[1] == "220 2.0.0 Ready to start TLS"
        client.send(b"MAIL FROM:<evil@client.test>\r\n" * 10)
        assert client.closed()
        until("the session ends", lambda: not listener._sessions)
        serves(listener, spool)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


def test_a_client_silent_after_starttls_gives_its_session_back(
    spool: Spool, certificates: TestCertificates
) -> None:
    """The silence timer closed it mid-handshake and asyncio woke STARTTLS as if it had worked:
    the session waited for a command for ever and kept its place among ``max_sessions``, so
    a few such clients locked everyone out (421) until a restart."""
    with running(
        spool,
        tls_context=certificates.server_context(),
        limits={"max_sessions": 1, "command_timeout": 0.3},
    ) as listener:
        for _ in range(3):
            client = RawClient(listener)
            assert client.greeting.startswith("220 ")
            client.send(b"EHLO c.test\r\nSTARTTLS\r\n")
            assert client.replies(2)[1] == "220 2.0.0 Ready to start TLS"
            assert closed_within(client, 5) < 3
            client.close()
            until("the session ends", lambda: not listener._sessions, deadline=5)
        serves(listener, spool)


def test_a_tls_client_that_never_sends_close_notify_is_not_waited_for(
    spool: Spool, certificates: TestCertificates
) -> None:
    """After QUIT in TLS, asyncio's TLS transport sent its close_notify and then waited up to
    30 s for the client's: the connection stayed open, counted among no sessions (the session
    had ended), and outlived the listener's stop as an unclosed transport. Postfix does not
    wait; the server's close_notify comes, then the end of the connection."""
    with running(spool, tls_context=certificates.server_context()) as listener:
        for _ in range(2):
            client = tls_session(listener, certificates)
            client.send(b"EHLO c.test\r\nQUIT\r\n")
            assert client.replies(2)[1] == "221 2.0.0 Bye"
            # Beneath TLS, without answering the close_notify: the server's end must come.
            raw = socket.socket(fileno=os.dup(client.sock.fileno()))
            raw.settimeout(10)
            started = time.monotonic()
            while raw.recv(65536):  # TimeoutError if the server waits for our close_notify
                pass
            assert time.monotonic() - started < 5
            raw.close()
            until("the session ends", lambda: not listener._sessions, deadline=5)
        serves(listener, spool)


def test_starttls_inside_tls_is_refused(spool: Spool, certificates: TestCertificates) -> None:
    with running(spool, tls_context=certificates.server_context()) as listener:
        client = tls_session(listener, certificates)
        client.send(b"EHLO c.test\r\nSTARTTLS\r\nNOOP\r\n")
        assert client.replies(3)[1:] == ["503 5.5.1 TLS already active", "250 2.0.0 Ok"]


def test_auth_before_starttls_is_refused_whatever_it_carries(
    spool: Spool, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=users) as listener:
        client = RawClient(listener)
        plain = base64.b64encode(b"\0app\0s3cret")
        client.send(
            b"EHLO c.test\r\nAUTH PLAIN " + plain + b"\r\nAUTH LOGIN\r\n"
            b"AUTH PLAIN " + b"A" * 100_000 + b"\r\nAUTH PLAIN !!!\r\nMAIL FROM:<a@client.test>\r\n"
            b"RCPT TO:<x@remote.test>\r\n"
        )
        replies = client.replies(7)
        assert [r[:10] for r in replies[1:]] == [
            "538 5.7.11",
            "538 5.7.11",
            "500 5.5.2 ",  # too long
            "538 5.7.11",
            "250 2.1.0 ",
            "550 5.7.1 ",  # not authenticated: no relay
        ]


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        (b"A" * 100_000, "500 5.5.2 Line too long"),  # was 451 Internal error
        (b"\xff\xfe\x00", "501 5.5.2 "),
        (b"!!!!", "501 5.5.2 "),
        (base64.b64encode(b"\0app"), "501 5.5.2 "),
        (base64.b64encode(b"\0app\0\xff"), "501 5.5.2 "),
        (base64.b64encode(b"\0app\0" + b"x" * 40_000), "535 5.7.8 "),
        (b"*", "501 5.7.0 "),
    ],
)
def test_a_broken_auth_answer_is_refused_and_the_session_goes_on(
    spool: Spool, certificates: TestCertificates, answer: bytes, reply: str
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=users) as listener:
        client = tls_session(listener, certificates)
        client.send(b"EHLO c.test\r\nAUTH PLAIN\r\n")
        assert client.replies(2)[1] == "334 "
        client.send(answer + b"\r\nNOOP\r\n")
        replies = client.replies(2)
        assert replies[0].startswith(reply)
        assert replies[1] == "250 2.0.0 Ok"
        plain = base64.b64encode(b"\0app\0s3cret")
        client.send(b"AUTH PLAIN " + plain + b"\r\nMAIL FROM:<a@client.test>\r\n")
        client.send(b"RCPT TO:<x@remote.test>\r\n")
        assert [r[:9] for r in client.replies(3)] == ["235 2.7.0", "250 2.1.0", "250 2.1.5"]


def test_the_listener_outlives_the_hostile_clients(tmp_path: Path) -> None:
    """On an OS spool too: after a burst of every kind of hostile client, a good one is queued
    and nothing else is."""
    with Spool(tmp_path / "MailRoot", clock=FakeClock()) as spool:
        with running(spool, limits={"min_free_space": 0, "command_timeout": 2}) as listener:
            for junk in (
                b"NOOP " + CHUNK * 4 + b"\r\n",
                b"EHLO c.test\r\n" + TRANSACTION + b"half\r\n",
                b"EHLO c.test\r\n" + TRANSACTION + b"bare\n.\n",
                b"EHLO c.test\r\nMAIL FROM:a@\r\nMAIL FROM:<a@b.test> SIZE=\xc2\xb2\r\n",
            ):
                client = RawClient(listener)
                client.send(junk)
                client.close()
            serves(listener, spool)
        assert len(queued(spool)) == 1
