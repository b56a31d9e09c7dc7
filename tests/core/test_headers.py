"""Header blocks read as lines, kept byte for byte."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.headers import (
    count_received,
    crlf_lines,
    fields,
    has_long_line,
    split_head,
    without_fields,
)

HEAD = (
    b"Received: from a by b;\r\n\t Sat, 28 Nov 2026 10:15:02 +0000\r\n"
    b"received: from c by d; Sat, 28 Nov 2026 10:15:01 +0000\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= and a\r\n very long line\r\n"
    b"X-Note: caf\xc3\xa9\r\n"
)


def test_fields_keep_continuations() -> None:
    found = list(fields(HEAD))
    assert [f.name for f in found] == ["Received", "received", "Subject", "X-Note"]
    assert found[2].raw == b"Subject: =?utf-8?q?caf=C3=A9?= and a\r\n very long line\r\n"
    assert found[2].value == "=?utf-8?q?caf=C3=A9?= and a very long line"
    assert found[3].value == "café"


def test_count_received_any_case() -> None:
    assert count_received(HEAD) == 2


@given(
    st.lists(
        st.sampled_from(
            [
                b"Received: x",
                b" received:y",
                b"\tReceived: z",
                b"RECEIVED :",
                b"Receive: d",
                b"no colon",
                b"",
                b"X-Received: e",
                b"Re\xc3\xa9ceived: f",
                b" ",
                b"\x1cReceived: g",
            ]
        ),
        max_size=12,
    ),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_count_received_counts_the_fields_that_fields_finds(lines: list[bytes], end: bytes) -> None:
    head = b"".join(line + end for line in lines)
    assert count_received(head) == sum(1 for f in fields(head) if f.key == "received")


def test_without_fields_removes_whole_folded_fields() -> None:
    assert without_fields(HEAD, ["subject", "RECEIVED"]) == b"X-Note: caf\xc3\xa9\r\n"


def test_split_head() -> None:
    assert split_head(b"A: b\r\n\r\nbody\r\n\r\nmore") == (b"A: b\r\n", b"body\r\n\r\nmore")
    assert split_head(b"A: b\r\n") == (b"A: b\r\n", b"")


@given(st.lists(st.sampled_from([b"A: 1\r\n", b" cont\r\n", b"Received: x\r\n", b"junk\r\n"])))
def test_without_nothing_keeps_every_field_line(lines: list[bytes]) -> None:
    head = b"".join(lines)
    kept = without_fields(head, [])
    assert kept == b"".join(f.raw for f in fields(head))
    assert kept in head or not kept or head.endswith(kept) or len(kept) <= len(head)


# -- crlf_lines: intake's and DATA's test for "every line ends CRLF" -----------------------------

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b"a", b".", b"\r\r\n"])).map(b"".join)
)
def test_crlf_lines_is_none_exactly_for_a_bare_cr_or_lf(block: bytes) -> None:
    expected = None if _BARE.search(block) else block.count(b"\r\n")
    assert crlf_lines(block) == expected


@pytest.mark.parametrize(
    ("block", "lines"),
    [
        (b"", 0),
        (b"no line end", 0),
        (b"a\r\nb\r\n", 2),
        (b"a\rb\nc", None),  # a CR and an LF apart: they alternate, yet neither is a CRLF
        (b"a\nb\rc", None),
        (b"a\r\n\rb\nc\r\n", None),
        (b"\r\n" * (128 * 1024 + 3), 128 * 1024 + 3),  # past the prepared pattern
        (b"x\r\n" * (128 * 1024 + 1) + b"y\n", None),
    ],
)
def test_crlf_lines_examples(block: bytes, lines: int | None) -> None:
    assert crlf_lines(block) == lines


# -- has_long_line: DATA's and the DSN's test for "no line over 998 octets" -------------------


@given(
    st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"a", b"ab", b"abcdefg", b"x" * 40])).map(
        b"".join
    ),
    st.integers(min_value=0, max_value=60),
)
def test_has_long_line_is_the_longest_crlf_line_over_the_limit(data: bytes, limit: int) -> None:
    expected = max(map(len, data.split(b"\r\n")), default=0) > limit
    assert has_long_line(data, limit) == expected


@pytest.mark.parametrize(
    ("data", "long"),
    [
        (b"", False),
        (b"x" * 998, False),
        (b"x" * 999, True),
        (b"x" * 998 + b"\r\n" + b"y" * 998, False),
        (b"a\r\n" * 5000 + b"x" * 999 + b"\r\n" + b"b\r\n" * 5000, True),  # one among many
        (b"a\r\n" * 5000 + b"x" * 999, True),  # the last line, without a CRLF
        (b"x" * 500 + b"\n" + b"y" * 500, True),  # a bare LF ends no line
        (b"x" * 997 + b"\r\r\n", False),  # the CR before the CRLF is the 998th octet
    ],
)
def test_has_long_line_examples(data: bytes, long: bool) -> None:
    assert has_long_line(data, 998) is long
