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
