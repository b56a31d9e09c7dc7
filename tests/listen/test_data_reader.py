"""DATA read whole: the listener's reader gives what aiosmtpd's line-at-a-time reading gave.

No socket: the bytes are fed to the reader in pieces, as the network would, and the outcome is
compared with a line-by-line reading of the same bytes (the rules of RFC 5321 section 4.1.1.4
and the bare CR / LF refusal).
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._listen.session import _BareNewline, _StrictReader, _unstuffed

Outcome = tuple[object, ...]


def line_by_line(stream: bytes, max_size: int) -> Outcome:
    """The reading the listener did before: CRLF lines, each checked, until a lone dot."""
    position = size = 0
    lines = []
    while True:
        end = stream.find(b"\r\n", position)
        if end < 0:
            return ("incomplete",)
        line, position = stream[position : end + 2], end + 2
        if b"\n" in line[:-2] or b"\r" in line[:-2]:
            return ("bare",)
        if line == b".\r\n":
            break
        size += len(line)
        lines.append(line)
    if size > max_size:
        return ("too big", stream[position:])
    return ("message", b"".join(lines), stream[position:])


async def read_whole(pieces: list[bytes], max_size: int) -> Outcome:
    reader = _StrictReader(limit=1001)
    task = asyncio.ensure_future(reader.read_message(max_size))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)
    reader.feed_eof()
    try:
        content = await task
    except _BareNewline:
        return ("bare",)
    except asyncio.IncompleteReadError:
        return ("incomplete",)
    rest = bytes(reader._buffer)
    return ("too big", rest) if content is None else ("message", content, rest)


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@given(
    st.lists(st.sampled_from([b"a", b"..", b".", b"\r\n", b"\r", b"\n", b"xyz"]), max_size=30),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    st.integers(min_value=0, max_value=40),
)
def test_any_stream_in_any_pieces_reads_as_line_by_line(
    parts: list[bytes], points: list[int], max_size: int
) -> None:
    stream = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    expected = line_by_line(stream, max_size)
    assert asyncio.run(read_whole(cut(stream, points), max_size)) == expected


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..a\r\n.b\r\n.\r\n", b"..a\r\n.b\r\n"),
    ],
)
def test_the_end_is_found_byte_by_byte(stream: bytes, content: bytes) -> None:
    pieces = [stream[i : i + 1] for i in range(len(stream))] + [b"RSET\r\n"]
    assert asyncio.run(read_whole(pieces, 100)) == ("message", content, b"RSET\r\n")


@pytest.mark.parametrize(
    ("content", "plain"),
    [
        (b"", b""),
        (b".\r\n", b"\r\n"),
        (b"..a\r\nb\r\n.c\r\n", b".a\r\nb\r\nc\r\n"),
        (b"a.\r\n...\r\n", b"a.\r\n..\r\n"),
    ],
)
def test_unstuffing_takes_one_leading_dot_a_line(content: bytes, plain: bytes) -> None:
    assert _unstuffed(content) == plain


async def long_line(pieces: list[bytes]) -> tuple[object, int, bytes]:
    """What a command read gives for ``pieces`` (a line over the limit, then ``NOOP``), the
    most the reader's buffer held, and the next line read."""
    reader = _StrictReader(limit=1024)
    task = asyncio.ensure_future(reader.readuntil())
    most = 0
    for piece in pieces:
        reader.feed_data(piece)
        most = max(most, len(reader._buffer))
        await asyncio.sleep(0)
    reader.feed_eof()
    try:
        outcome: object = await task
    except asyncio.LimitOverrunError as error:
        outcome = ("overrun", error.consumed)
    except _BareNewline as bare:
        return ("bare", bare.char), most, b""
    assert await reader.read(0) == b""
    rest = await reader.readuntil()
    return outcome, most, await reader.readuntil() if rest == b"\r\n" else rest


@pytest.mark.parametrize("size", [62, 300, 1024, 4096])  # 62: a piece ends with the CR
@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\rx\r\n"])
def test_a_line_over_the_limit_is_dropped_a_piece_at_a_time(size: int, ending: bytes) -> None:
    """A line over the limit is never held whole: dropped as it comes, its CRLF left for the
    next read (which aiosmtpd's command loop makes before its 500); the next line intact. A CR
    at the end of a piece may be the line's end."""
    stream = b"NOOP " + b"x" * 100_000 + ending + b"NOOP\r\n"
    pieces = [stream[start : start + size] for start in range(0, len(stream), size)]
    outcome, most, following = asyncio.run(long_line(pieces))
    if ending == b"\r\n":
        assert (outcome, following) == (("overrun", 0), b"NOOP\r\n")
    else:
        assert outcome == ("bare", "LF" if ending == b"\n" else "CR")
    assert most <= 1024 + 2 * size


async def read_lines(stream: bytes) -> list[object]:
    reader = _StrictReader(limit=1024)
    reader.feed_data(stream)
    reader.feed_eof()
    lines: list[object] = []
    for _ in range(3):
        try:
            lines.append(await reader.readline())
        except ValueError:
            lines.append(ValueError)
    return lines


def test_readline_drops_a_line_over_the_limit_and_keeps_what_follows() -> None:
    """aiosmtpd reads AUTH's answers with readline: asyncio's ValueError for a long line."""
    stream = b"x" * 5000 + b"\r\nNOOP\r\n"
    assert asyncio.run(read_lines(stream)) == [ValueError, b"NOOP\r\n", b""]


async def dot_lines(pieces: list[bytes]) -> tuple[bytes, bool]:
    reader = _StrictReader(limit=1001)
    task = asyncio.ensure_future(reader.read_message(10_000))
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)
    content = await task
    assert content is not None
    return bytes(content), reader.dot_lines


@given(
    st.lists(
        st.sampled_from([b"a", b"..", b".", b"\r\n", b"xyz", b"\r\n.a", b"\r\n.."]), max_size=30
    ),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_the_reader_tells_whether_a_line_begins_with_a_dot(
    parts: list[bytes], points: list[int]
) -> None:
    """Only then is the content unstuffed (a copy of it, a MiB for a MiB's message)."""
    stream = b"".join(parts)
    if not stream.endswith(b"\r\n"):
        stream += b"\r\n"
    if stream.startswith(b".\r\n") or b"\r\n.\r\n" in b"\r\n" + stream:
        return  # a lone dot would end it sooner
    stream += b".\r\nQUIT\r\n"
    content, dotted = asyncio.run(dot_lines(cut(stream, points)))
    lines = content.split(b"\r\n")[:-1]
    assert dotted == any(line.startswith(b".") for line in lines)
    assert (_unstuffed(content) if dotted else content) == _unstuffed(content)
