"""Streaming Pickup bodies: the same bytes whatever the chunking, a NUL named by its line."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.pickup import BodyRejected, PickupBody, pickup_head_end


def reference(body: bytes, *, dot_stuffed: bool) -> bytes:
    """The whole-body answer: every line (CRLF, CR or LF ended) with CRLF, dots un-stuffed."""
    lines = body.splitlines()
    if dot_stuffed:
        lines = [line[1:] if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in lines)


def stream(body: bytes, cuts: list[int], *, dot_stuffed: bool, first_line: int = 1) -> bytes:
    streamer = PickupBody(first_line=first_line, dot_stuffed=dot_stuffed)
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    out = [streamer.feed(body[a:b]) for a, b in itertools.pairwise(edges)]
    return b"".join(out) + streamer.finish()


BODY = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"x")) | st.lists(
    st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"x.y", b" "]), max_size=60
).map(b"".join)


@given(BODY, st.lists(st.integers(min_value=0, max_value=400), max_size=12), st.booleans())
def test_any_chunking_gives_the_whole_body_answer(body: bytes, cuts: list[int], dots: bool) -> None:
    assert stream(body, cuts, dot_stuffed=dots) == reference(body, dot_stuffed=dots)


@given(BODY, st.lists(st.integers(min_value=0, max_value=400), max_size=12), st.booleans())
def test_dot_lines_says_whether_a_stored_line_starts_with_a_dot(
    body: bytes, cuts: list[int], dots: bool
) -> None:
    streamer = PickupBody(first_line=1, dot_stuffed=dots)
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    for a, b in itertools.pairwise(edges):
        streamer.feed(body[a:b])
    streamer.finish()
    stored = reference(body, dot_stuffed=dots)
    assert streamer.dot_lines == any(line.startswith(b".") for line in stored.split(b"\r\n"))


def test_a_crlf_chunk_is_stored_as_it_is() -> None:
    # The common case takes no copy: CRLF lines, no dot to remove.
    chunk = b"Hello.\r\n.A dot line stays.\r\n" * 100
    assert PickupBody(first_line=1, dot_stuffed=False).feed(chunk) is chunk


@pytest.mark.parametrize(
    ("body", "chunks", "expected"),
    [
        (b"a\r\nb", [b"a\r", b"\nb"], b"a\r\nb\r\n"),  # a CRLF split between chunks is one line end
        (b"..x\n.\n", [b".", b".x\n.", b"\n"], b".x\r\n\r\n"),  # one dot removed per line
        (b"a\rb\r", [b"a\rb\r"], b"a\r\nb\r\n"),  # old Mac line ends
    ],
)
def test_examples(body: bytes, chunks: list[bytes], expected: bytes) -> None:
    streamer = PickupBody(first_line=1, dot_stuffed=True)
    got = b"".join(streamer.feed(c) for c in chunks) + streamer.finish()
    assert got == expected == reference(body, dot_stuffed=True)


@pytest.mark.parametrize("first", [b"one\r\ntwo\r\n", b"one\ntwo\n", b"one\rtwo\r"])
def test_a_nul_is_named_by_its_line_whatever_the_line_ends(first: bytes) -> None:
    streamer = PickupBody(first_line=1, dot_stuffed=False)
    streamer.feed(first)
    with pytest.raises(BodyRejected, match="line 4 contains a NUL byte"):
        streamer.feed(b"three\r\nf\0our\r\n")


def test_a_nul_is_named_by_its_line_in_the_file() -> None:
    streamer = PickupBody(first_line=6, dot_stuffed=False)
    streamer.feed(b"one\r\ntwo\r")
    with pytest.raises(BodyRejected, match="line 8 contains a NUL byte") as info:
        streamer.feed(b"\nthr\0ee\r\n")
    assert info.value.status == "5.6.0"


@pytest.mark.parametrize(
    ("buffer", "complete", "end"),
    [
        (b"A: b\r\n\r\nbody", False, 8),
        (b"A: b\n\nbody", False, 6),
        (b"A: b\r\rbody", False, 6),
        (b"A: b\r\n", True, None),  # headers only
        (b"A: b\r\n\r", False, None),  # the CR may be half a CRLF: read more
        (b"A: b\r\n\r", True, 7),
        (b"\r\nbody", False, 2),  # an empty first line: no headers (the parser says so)
    ],
)
def test_where_the_body_begins(buffer: bytes, complete: bool, end: int | None) -> None:
    assert pickup_head_end(buffer, complete=complete) == end


def test_body_lines_over_998_octets_pass_unchanged() -> None:
    # Only header lines are folded at intake (docs/design.md#pickup-intake): a body line is the
    # writer's,
    # and refolding it would change the text (and any DKIM body hash).
    line = b"x" * 5000
    body = line + b"\n" + line
    assert stream(body, [1000, 2500, 7000], dot_stuffed=False) == line + b"\r\n" + line + b"\r\n"


def _head_end_by_lines(buffer: bytes, *, complete: bool) -> int | None:
    """pickup_head_end's definition, line end by line end."""
    start = 0
    for match in re.finditer(rb"\r\n|\r|\n", buffer):
        if match.group() == b"\r" and match.end() == len(buffer) and not complete:
            return None
        if match.start() == start:
            return match.end()
        start = match.end()
    return None


@given(
    st.lists(
        st.sampled_from([b"A: b", b"", b"x", b"\r", b"\n", b"\r\n", b"\r\n\r\n"]), max_size=12
    ),
    st.booleans(),
)
def test_the_body_begins_where_the_lines_say(pieces: list[bytes], complete: bool) -> None:
    buffer = b"".join(pieces)
    assert pickup_head_end(buffer, complete=complete) == _head_end_by_lines(
        buffer, complete=complete
    )
