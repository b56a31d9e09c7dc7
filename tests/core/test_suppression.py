"""The suppression list's rules: what is a hard bounce, the line format, the reply (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.reply import Reply
from spoolmail._core.suppression import (
    Suppressed,
    decode_suppressed,
    encode_suppressed,
    is_hard_bounce,
    suppressed_reply,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
BOUNCE = Reply(550, "5.1.1", "no such user", host="mx.example.net")


@pytest.mark.parametrize(
    ("reply", "hard"),
    [
        (BOUNCE, True),
        (Reply(550, "5.1.2", "bad system", host="mx.example.net"), True),
        (Reply(556, "5.1.10", "null MX", host="mx.example.net"), True),
        (Reply(550, "5.7.1", "policy", host="mx.example.net"), False),
        (Reply(550, "5.7.515", "authentication", host="mx.example.net"), False),
        (Reply(450, "4.1.1", "try later", host="mx.example.net"), False),
        (Reply(550, "5.1.2", "domain does not exist (DNS NXDOMAIN)"), False),  # our own verdict
        (Reply(550, None, "no such user", host="mx.example.net"), False),
    ],
)
def test_hard_bounces(reply: Reply, *, hard: bool) -> None:
    assert is_hard_bounce(reply) is hard


def test_a_line_reads_back() -> None:
    entry = Suppressed("Bob@Example.net", NOW, BOUNCE, "1a2b")
    line = encode_suppressed(entry)
    assert "\n" not in line
    assert line.startswith('{"address": "Bob@Example.net", "time": "2026-11-28T10:00:00+00:00"')
    assert decode_suppressed(line) == entry


@given(st.text(max_size=200))
def test_damaged_lines_are_skipped(line: str) -> None:
    assert decode_suppressed(line) is None or isinstance(decode_suppressed(line), Suppressed)


def test_the_reply_to_a_suppressed_recipient() -> None:
    reply = suppressed_reply(Suppressed("bob@example.net", NOW, BOUNCE, "1a2b"))
    assert (reply.code, reply.status, reply.host) == (550, "5.1.1", None)
    assert reply.text.startswith("recipient suppressed after a hard bounce on 2026-11-28")
    assert reply.remote is None  # no server was asked this time
    assert str(BOUNCE) in reply.text
    assert not is_hard_bounce(reply)
