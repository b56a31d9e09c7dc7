"""The SMTP client with real servers' habits: odd replies, failed transactions, UTF-8 headers.

Whatever a server sends must end as a reply for every recipient, never as an exception out of
``send``: the reply reader is driven on bytes alone (hypothesis), and a raw-socket server on
127.0.0.1 sends hostile replies at each step of a session. A transaction that failed on a kept
connection leaves the next one to start with RSET (RFC 5321 §4.1.1.5). A message whose header
fields hold UTF-8 (RFC 6532) goes with SMTPUTF8 or not at all (RFC 6531 §3.4), checked against
aiosmtpd with and without SMTPUTF8.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime

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
from tests.smtpservers import SHORT, raw_server, smtp_server

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
# Postfix's smtp-sink, byte for byte (postfix 3.8): the last line is "250 " and nothing else.
SMTP_SINK_EHLO = (
    b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n"
    b"250-XCLIENT NAME HELO\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 \r\n"
)
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


# Hostile replies from a raw-socket server on 127.0.0.1.

HOSTILE = [
    pytest.param("greeting", b"\r\n", id="greeting-empty"),
    pytest.param("greeting", b"\xff\xfe\xfd\r\n", id="greeting-not-utf8"),
    pytest.param("greeting", b"220-raw.test\r\n" * 500, id="greeting-never-ends"),
    pytest.param("EHLO", b"250-raw.test\r\n" + b"250-" + b"A" * 5000 + b"\r\n", id="ehlo-long"),
    pytest.param("EHLO", b"250-raw.test\r\n250-SIZE \xc2\xb2\r\n250 \r\n", id="ehlo-size"),
    pytest.param("EHLO", b"250-raw.test\r\n" * 300, id="ehlo-never-ends"),
    pytest.param("EHLO", b"250-raw.test\r\n\r\n250 OK\r\n", id="ehlo-empty-line"),
    pytest.param("MAIL", b"\r\n", id="mail-empty"),
    pytest.param("MAIL", b"2\r\n", id="mail-short-code"),
    pytest.param("MAIL", b"550 5.7.1 \xc0\xaf\x00 no\r\n", id="mail-not-utf8"),
    pytest.param("RCPT", b"250-" + b"\xff" * 3000 + b"\r\n", id="rcpt-long"),
    pytest.param("RCPT", b"250-ok\r\n" * 2000, id="rcpt-never-ends"),
    pytest.param("DATA", b"354-go\r\n354 \r\n", id="data-multiline"),
    pytest.param(".", b"250-\r\n250-\r\n251 x\r\n", id="end-mixed-codes"),
    pytest.param(".", b"\xef\xbb\xbf250 ok\r\n", id="end-bom"),
    pytest.param(".", b"250 2.0.0 " + "ünïcödé".encode() + b"\r\n", id="end-utf8"),
]


@integration
@pytest.mark.parametrize(("step", "reply"), HOSTILE)
def test_hostile_replies_end_as_replies_for_every_recipient(
    transcript: Transcript, step: str, reply: bytes
) -> None:
    recipients = ["a@x.test", "b@x.test"]
    greeting = reply if step == "greeting" else b"220 raw.test ESMTP\r\n"
    replies = {} if step == "greeting" else {step: reply}
    with (
        raw_server(greeting=greeting, replies=replies) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
    ):
        answers = transport.send(server.target, outgoing(recipients=recipients), transcript)
        # The transport still works, on this connection or a new one.
        again = transport.send(server.target, outgoing(), transcript)
    assert set(answers) == set(recipients)
    assert set(again) == {"bob@example.com"}
    for answer in answers.values():
        assert isinstance(answer, Reply)
        if answer.code >= 400:
            assert answer.host == HOST
    problems = [a for a in answers.values() if a.code // 100 == 4 and a.enhanced == "4.5.0"]
    for problem in problems:
        # The reason reaches the transcript.
        assert any(problem.text in line for line in transcript.lines)


@integration
def test_smtp_sinks_ehlo_reply_is_read(transport: SmtpTransport, transcript: Transcript) -> None:
    with raw_server(replies={"EHLO": SMTP_SINK_EHLO}) as server:
        answers = transport.send(server.target, outgoing(), transcript)
    assert answers == {"bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    # PIPELINING from the reply was taken: MAIL, RCPT and DATA in one write.
    assert ["MAIL FROM:<alice@example.net>", "RCPT TO:<bob@example.com>", "DATA"] in server.groups


# A reply that never completes is waited for, so these waits are short.
IMPATIENT = attrs.evolve(
    SHORT, greeting=0.3, ehlo=0.3, mail=0.3, rcpt=0.3, data_start=0.3, data_end=0.3, rset=0.3
)


@integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.sampled_from(["greeting", "EHLO", "MAIL", "RCPT", "DATA", ".", "RSET"]),
    lines=st.lists(st.tuples(reply_lines, line_ends), min_size=1, max_size=6),
)
def test_random_replies_from_a_socket_never_raise(
    step: str, lines: list[tuple[bytes, bytes]]
) -> None:
    reply = b"".join(line + end for line, end in lines)
    transcript = Transcript(clock=lambda: datetime(2026, 11, 28, tzinfo=UTC))
    greeting = reply if step == "greeting" else b"220 raw.test ESMTP\r\n"
    with (
        raw_server(
            greeting=greeting, replies={} if step == "greeting" else {step: reply}
        ) as server,
        SmtpTransport(helo_name="client.test", timeouts=IMPATIENT) as transport,
    ):
        for _ in range(2):  # the second time on a kept connection, if there is one
            answers = transport.send(server.target, outgoing(recipients=["a@x.test"]), transcript)
            assert set(answers) == {"a@x.test"}


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


@integration
def test_a_refused_end_of_data_resets_within_one_delivery(transcript: Transcript) -> None:
    replies = {**NO_PIPELINING, ".": b"554 5.7.1 Rejected\r\n"}
    with (
        raw_server(replies=replies) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT, max_recipients=1) as transport,
    ):
        answers = transport.send(
            server.target, outgoing(recipients=["a@x.test", "b@x.test"]), transcript
        )
    assert set(answers.values()) == {Reply(554, "5.7.1", "Rejected", host=HOST)}
    assert server.commands[1:] == [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a@x.test>",
        "DATA",
        "RSET",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<b@x.test>",
        "DATA",
        "QUIT",
    ]


@integration
def test_data_ended_without_recipients_is_followed_by_rset(transcript: Transcript) -> None:
    # Pipelined: every RCPT refused, DATA accepted anyway, ended with a lone "." (RFC 2920 §3.1).
    replies = {"RCPT": b"550 5.1.1 No such user\r\n", ".": b"554 5.5.1 No valid recipients\r\n"}
    with (
        raw_server(replies=replies) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
    ):
        transport.send(server.target, outgoing(), transcript)
        transport.send(server.target, outgoing(), transcript)
        assert server.connections == 1
    verbs = [command.split(" ", 1)[0].split(":", 1)[0] for command in server.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


@integration
def test_a_successful_transaction_still_needs_no_rset(transcript: Transcript) -> None:
    with (
        raw_server(replies=NO_PIPELINING) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
    ):
        transport.send(server.target, outgoing(), transcript)
        transport.send(server.target, outgoing(), transcript)
    assert "RSET" not in server.commands
    assert server.commands.count("MAIL FROM:<alice@example.net>") == 2


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


# SMTPUTF8 for UTF-8 header fields (RFC 6531 §3.4, RFC 6532).


@integration
def test_utf8_headers_go_with_smtputf8(transport: SmtpTransport, transcript: Transcript) -> None:
    with smtp_server(enable_smtputf8=True) as server:
        answers = transport.send(server.target, outgoing(UTF8_MESSAGE), transcript)
    assert answers == {"bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    [received] = server.messages
    assert received.smtp_utf8
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)
    assert received.data == UTF8_MESSAGE


@integration
def test_utf8_headers_fail_for_good_without_smtputf8(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    with smtp_server(enable_smtputf8=False) as server:
        answers = transport.send(
            server.target, outgoing(UTF8_MESSAGE, recipients=["a@x.test", "b@x.test"]), transcript
        )
    assert {(r.code, r.enhanced) for r in answers.values()} == {(554, "5.6.7")}
    [answer] = set(answers.values())
    assert "SMTPUTF8" in answer.text
    assert server.handler.mail_froms == []  # nothing was sent that the server could not take
    assert any(re.search(r"not sent: 554 5\.6\.7", line) for line in transcript.lines)


@integration
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Subject: Gr\xfc\xdfe\r\n\r\nhi\r\n", id="latin-1-header"),
        pytest.param(b"Subject: hi\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", id="utf8-body"),
    ],
)
def test_eight_bit_that_is_no_utf8_header_needs_no_smtputf8(
    transport: SmtpTransport, transcript: Transcript, data: bytes
) -> None:
    with smtp_server(enable_smtputf8=False) as server:
        [answer] = transport.send(server.target, outgoing(data), transcript).values()
    assert answer.code == 250
    [received] = server.messages
    assert not received.smtp_utf8
    assert "BODY=8BITMIME" in received.mail_options
    assert "SMTPUTF8" not in received.mail_options
    assert received.data == data
