"""Reading replies (``spoolmail._transport.replies``), on bytes alone.

Whatever a server sends, cut into whatever reads, must end in replies, a reason to stop reading,
or a wait for more: never in an exception, and never in unbounded memory (RFC 5321 §4.2,
§4.5.3.1.5). EHLO replies are read as real servers write them (Postfix's smtp-sink ends its
with an empty ``250 `` line).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail._core.reply import Reply
from spoolmail._transport.replies import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    MAX_REPLY_OCTETS,
    BadReply,
    ReplyReader,
    ServerReply,
    SmtpExtensions,
    parse_reply_line,
    printable,
)


@given(st.binary(max_size=300))
def test_reply_parser_never_crashes(line: bytes) -> None:
    parsed = parse_reply_line(line)
    assert parsed is None or 200 <= parsed[0] <= 599


def _general(line: bytes) -> tuple[int, tuple[str, ...]] | str:
    """What the reader makes of ``line`` by the parse of any line (its one-line path not used)."""
    parsed = parse_reply_line(line)
    if parsed is None:
        return "refused"
    code, more, text = parsed
    return "more" if more else (code, (printable(text, limit=1000),))


@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda code, rest: code + rest,
            st.sampled_from(
                [b"250", b"199", b"600", b"550", b"354", "\u0660\u0661\u0662".encode()]
            ),
            st.binary(max_size=30).map(lambda rest: b" " + rest),
        ),
    )
)
def test_a_one_line_reply_is_read_as_any_line_is(line: bytes) -> None:
    reader = ReplyReader()
    try:
        taken = reader.take(line)
    except BadReply:
        assert _general(line) == "refused"
        return
    if taken is None:
        assert _general(line) == "more"
    else:
        assert _general(line) == (taken.code, taken.lines)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"250 2.1.0 Ok", (250, False, "2.1.0 Ok")),
        (b"250-SIZE 100", (250, True, "SIZE 100")),
        (b"354", (354, False, "")),
        (b"hello", None),
        (b"25 x", None),
        (b"2500 x", None),
        (b"999 x", None),
        (b"250:x", None),
    ],
)
def test_reply_parser(line: bytes, expected: tuple[int, bool, str] | None) -> None:
    assert parse_reply_line(line) == expected


def test_extensions_from_ehlo() -> None:
    extensions = SmtpExtensions.from_ehlo(
        [
            "mx.test greets client.test",
            "SIZE 10000",
            "8BITMIME",
            "pipelining",
            "AUTH=LOGIN",
            "AUTH PLAIN login",
            "STARTTLS",
            "SMTPUTF8",
        ]
    )
    assert extensions == SmtpExtensions(
        esmtp=True,
        size=10000,
        eight_bit_mime=True,
        smtputf8=True,
        pipelining=True,
        starttls=True,
        auth=frozenset({"LOGIN", "PLAIN"}),
        keywords=frozenset({"SIZE", "8BITMIME", "PIPELINING", "AUTH", "STARTTLS", "SMTPUTF8"}),
    )
    assert SmtpExtensions.from_ehlo(["mx.test", "SIZE"]).size == 0
    assert SmtpExtensions.from_ehlo(["mx.test"]) == SmtpExtensions(esmtp=True)


# The reply reader.


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
