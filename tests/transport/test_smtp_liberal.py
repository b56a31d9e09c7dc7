"""The SMTP client with real servers' habits: odd replies, and what MAIL must declare.

Whatever a server sends must end as a reply for every recipient, never as an exception: the
reply reader is driven on bytes alone (hypothesis), as is what intake's stored bytes ask MAIL to
declare (UTF-8 header fields need SMTPUTF8, RFC 6531 §3.4; octets over 127, BODY=8BITMIME). The
protocol's answers to hostile replies at each step, and SMTPUTF8 against servers with and
without it, are in ``test_protocol.py`` and ``test_transactions.py``, on bytes too. Only a
failed transaction on a kept connection, which the next delivery starts with RSET (RFC 5321
§4.1.1.5), needs a raw-socket server on 127.0.0.1 here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail._core.reply import Reply
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import DataEncoder, examine
from spoolmail._transport.replies import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    MAX_REPLY_OCTETS,
    BadReply,
    ReplyReader,
    ServerReply,
    SmtpExtensions,
)
from spoolmail._transport.smtp import SmtpTransport
from tests.smtpservers import SHORT, raw_server

integration = pytest.mark.integration

HOST = "127.0.0.1"
ASCII_MESSAGE = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
# RFC 6532: UTF-8 in header fields, addresses in ASCII.
UTF8_MESSAGE = (
    "From: Zoë <alice@example.net>\r\n"
    "To: bob@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "\r\n"
    "Viele Grüße.\r\n"
).encode()
NO_PIPELINING: dict[str, bytes | None] = {
    "EHLO": b"250-raw.test greets you\r\n250 8BITMIME\r\n",
}


def outgoing(
    data: bytes = ASCII_MESSAGE,
    *,
    recipients: Sequence[str] = ("bob@example.com",),
    eight_bit: bool | None = None,
) -> Outgoing:
    return Outgoing(
        id="test",
        sender="alice@example.net",
        recipients=recipients,
        size=len(data),
        open=lambda: io.BytesIO(data),
        eight_bit=eight_bit,
    )


# The reply reader, on bytes alone.


def read_all(chunks: Sequence[bytes]) -> tuple[list[ServerReply], str | None]:
    """Everything a session would get from these bytes: its replies, then the reason it stops
    reading, if it does (``None``: the bytes ran out)."""
    reader = ReplyReader()
    replies: list[ServerReply] = []
    for chunk in chunks:
        reader.feed(chunk)
        try:
            while (line := reader.next_line()) is not None:
                reply = reader.take(line)
                if reply is not None:
                    replies.append(reply)
        except BadReply as bad:
            return replies, str(bad)
    return replies, None


reply_lines = st.one_of(
    st.binary(max_size=80),
    st.builds(
        b"".join,
        st.tuples(
            st.sampled_from([b"250", b"220", b"421", b"354", b"550", b"199", b"600", b"25", b""]),
            st.sampled_from([b" ", b"-", b"", b"\t", b"--"]),
            st.one_of(
                st.binary(max_size=60),
                st.sampled_from(
                    [
                        b"",
                        b" ",
                        b"SIZE",
                        b"SIZE \xc2\xb2",
                        b"SIZE 99999999999999999999999999",
                        b"SIZE -1",
                        b"AUTH=",
                        b"=",
                        b"AUTH PLAIN",
                        b"5.1.1 no such user",
                        b"5.9.999 x",
                        b"\xff\xfe not utf-8",
                        b"\x00\x1b[31m",
                    ]
                ),
            ),
        ),
    ),
)
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n"])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.tuples(reply_lines, line_ends), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_no_reply_raises_out_of_the_reader(
    lines: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    data = b"".join(line + end for line, end in lines)
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    replies, _ = read_all(chunks)
    for reply in replies:
        assert 200 <= reply.code <= 599
        assert 1 <= len(reply.lines) <= MAX_REPLY_LINES
        # What the session makes of a reply raises nothing either: the verdict for recipients,
        # and the extensions when it answers EHLO.
        assert isinstance(reply.to_reply("mx.test"), Reply)
        assert isinstance(SmtpExtensions.from_ehlo(reply.lines), SmtpExtensions)


@given(st.binary(max_size=3 * MAX_REPLY_LINE))
def test_any_bytes_end_in_replies_a_reason_or_a_wait(data: bytes) -> None:
    replies, problem = read_all([data])
    assert problem is None or problem
    assert all(isinstance(reply, ServerReply) for reply in replies)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"\r\n", 'garbage ("")', id="empty-line"),
        pytest.param(b"hello\r\n", 'garbage ("hello")', id="no-code"),
        pytest.param(b"099 x\r\n", 'garbage ("099 x")', id="code-below-200"),
        pytest.param(b"250-a\r\n251 b\r\n", "lines with codes 250 and 251", id="mixed-codes"),
        pytest.param(b"250-" + b"x" * 3000, "a line longer than 2048 octets", id="long-line"),
        pytest.param(
            b"250-more\r\n" * 1000,
            f"a reply of more than {MAX_REPLY_LINES} lines or {MAX_REPLY_OCTETS} octets",
            id="endless-lines",
        ),
        pytest.param(
            (b"250-" + b"y" * 2000 + b"\r\n") * 50,
            f"a reply of more than {MAX_REPLY_LINES} lines or {MAX_REPLY_OCTETS} octets",
            id="endless-octets",
        ),
    ],
)
def test_what_cannot_be_a_reply_is_refused_with_a_reason(data: bytes, problem: str) -> None:
    replies, reason = read_all([data])
    assert replies == []
    assert reason == problem


def test_an_endless_reply_is_refused_within_its_bounds() -> None:
    reader = ReplyReader()
    line = b"250-" + b"z" * 1000

    def one_more() -> None:
        reader.feed(line + b"\r\n")
        assert reader.take(reader.next_line() or b"") is None

    taken = 0
    while taken * (len(line) + 2) < MAX_REPLY_OCTETS - (len(line) + 2):
        one_more()
        taken += 1
    with pytest.raises(BadReply, match="more than"):
        one_more()


@pytest.mark.parametrize(
    ("data", "code", "lines"),
    [
        pytest.param(b"250 \r\n", 250, ("",), id="empty-text"),
        pytest.param(b"250\r\n", 250, ("",), id="no-text"),
        pytest.param(b"250-a\n250 b\n", 250, ("a", "b"), id="bare-lf"),
        pytest.param(b"550 5.1.1 \xff\xfe\r\n", 550, ("5.1.1 \ufffd\ufffd",), id="not-utf8"),
        pytest.param(b"250 ok\x1b[0m\r\n", 250, ("ok\\x1b[0m",), id="control"),
    ],
)
def test_odd_but_readable_replies_are_read(data: bytes, code: int, lines: tuple[str, ...]) -> None:
    assert read_all([data]) == ([ServerReply(code, lines)], None)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["smtp-sink", "PIPELINING", "8BITMIME", "DSN", ""], id="smtp-sink"),
        pytest.param(["mx.test", "   ", "PIPELINING"], id="blank"),
    ],
)
def test_an_ehlo_reply_with_an_empty_line_is_read(lines: list[str]) -> None:
    extensions = SmtpExtensions.from_ehlo(lines)
    assert extensions.pipelining
    assert "" not in extensions.keywords


@pytest.mark.parametrize(
    ("params", "size"),
    [("SIZE 1000", 1000), ("SIZE \u00b2", 0), ("SIZE \u0661\u0662", 0), ("SIZE " + "9" * 30, 0)],
)
def test_a_size_that_is_not_a_number_is_no_limit(params: str, size: int) -> None:
    assert SmtpExtensions.from_ehlo(["mx.test", params]).size == size


# A failed transaction on a kept connection: the next one starts with RSET.


@integration
def test_a_refused_end_of_data_is_followed_by_rset(transcript: Transcript) -> None:
    replies = {**NO_PIPELINING, ".": b"500 5.0.0 Error: command failed\r\n"}
    with (
        raw_server(replies=replies) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
    ):
        [first] = transport.send(server.target, outgoing(), transcript).values()
        # At once, well within the moment in which a used connection is trusted without RSET.
        [second] = transport.send(server.target, outgoing(), transcript).values()
        assert server.connections == 1
    assert first == second == Reply(500, "5.0.0", "Error: command failed", host=HOST)
    # RFC 5321 §4.1.1.5: RSET ends what the failed transaction left, before the next MAIL.
    assert server.commands[1:] == [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<bob@example.com>",
        "DATA",
        "RSET",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<bob@example.com>",
        "DATA",
        "QUIT",
    ]
    assert "the last transaction on it failed: RSET first" in "\n".join(transcript.lines)


# What MAIL declares, read from the stored message.


class Trickle(io.BytesIO):
    """A stored file that hands out at most ``step`` octets per read, whatever is asked."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step
        self.handed_out = 0

    def read(self, size: int | None = -1, /) -> bytes:
        block = super().read(self.step)
        self.handed_out += len(block)
        return block


def expected_utf8_headers(data: bytes) -> bool:
    """The reference: the header section of the DATA form of ``data``, in one piece."""
    encoder = DataEncoder()
    wire = b"\r\n" + encoder.encode(data) + encoder.finish()
    end = wire.find(b"\r\n\r\n")
    head = wire[2:end] if end >= 2 else b""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not head.isascii()


@given(
    head=st.lists(st.sampled_from(["Subject: ", "é", "x", "\r\n", "\n", "\r", " ", "日本"])),
    junk=st.sampled_from([b"", b"\xff", b"\xc3"]),
    body=st.binary(max_size=20),
    step=st.integers(min_value=1, max_value=7),
)
def test_utf8_headers_are_found_whatever_the_reads(
    head: list[str], junk: bytes, body: bytes, step: int
) -> None:
    data = "".join(head).encode() + junk + b"\r\n\r\n" + body
    message = attrs.evolve(outgoing(data), open=lambda: Trickle(data, step))
    content = examine(message, eight_bit_matters=True)
    assert content.utf8_headers == expected_utf8_headers(data)
    assert content.eight_bit == (not data.isascii())


@pytest.mark.parametrize(
    ("data", "utf8_headers", "eight_bit"),
    [
        (ASCII_MESSAGE, False, False),
        (UTF8_MESSAGE, True, True),
        # UTF-8 in the body only: 8BITMIME's business, not SMTPUTF8's.
        (b"Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", False, True),
        # An old client's Latin-1 Subject: 8-bit, but no RFC 6532 header.
        (b"Subject: Gr\xfc\xdfe\r\n\r\nhi\r\n", False, True),
        # No header section at all; then one that never ends.
        (b"\r\nGr\xc3\xbc\xc3\x9fe\r\n", False, True),
        ("Subject: Grüße".encode(), True, True),
        # A UTF-8 sequence cut by the end of the header section is not UTF-8.
        (b"Subject: \xc3\r\n\r\n\xbc\r\n", False, True),
    ],
)
def test_what_mail_must_declare(data: bytes, utf8_headers: bool, eight_bit: bool) -> None:
    assert examine(outgoing(data), eight_bit_matters=True).utf8_headers == utf8_headers
    assert examine(outgoing(data), eight_bit_matters=True).eight_bit == eight_bit


def test_an_all_ascii_message_is_not_read() -> None:
    def refuse() -> io.BytesIO:
        raise AssertionError("read although intake found it all ASCII")

    message = attrs.evolve(outgoing(), open=refuse, eight_bit=False)
    content = examine(message, eight_bit_matters=True)
    assert (content.eight_bit, content.utf8_headers) == (False, False)


def test_only_the_header_section_is_read_when_the_body_does_not_matter() -> None:
    source = Trickle(b"Subject: hi\r\n\r\n" + b"body line\r\n" * 1000, step=64)
    message = attrs.evolve(outgoing(), open=lambda: source, eight_bit=True)
    assert not examine(message, eight_bit_matters=True).utf8_headers
    assert source.handed_out <= 64
