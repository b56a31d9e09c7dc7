"""Drop files in IIS's exact shape, checked against real IIS headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spoolmail._core.drop import filetime, original_arrival_time, render_drop_head
from spoolmail._core.headers import split_head


@pytest.mark.parametrize(
    ("when", "header"),
    [
        # Real X-OriginalArrivalTime values written by IIS (docs: iis-smtp notes, sections 3, 6).
        (
            datetime(2018, 5, 5, 17, 46, 55, 692000, tzinfo=UTC),
            "05 May 2018 17:46:55.0692 (UTC) FILETIME=[0F03E8C0:01D3E499]",
        ),
        (
            datetime(2020, 11, 16, 16, 13, 46, 385000, tzinfo=UTC),
            "16 Nov 2020 16:13:46.0385 (UTC) FILETIME=[760BD810:01D6BC33]",
        ),
        (
            datetime(2010, 2, 10, 16, 18, 27, 773000, tzinfo=UTC),
            "10 Feb 2010 16:18:27.0773 (UTC) FILETIME=[AD833ED0:01CAAA6C]",
        ),
    ],
)
def test_original_arrival_time_matches_iis_to_the_bit(when: datetime, header: str) -> None:
    assert original_arrival_time(when) == header


def test_sub_millisecond_time_is_truncated_like_iis() -> None:
    when = datetime(2018, 5, 5, 17, 46, 55, 692999, tzinfo=UTC)
    assert original_arrival_time(when).endswith("FILETIME=[0F03E8C0:01D3E499]")


def test_filetime_epoch() -> None:
    assert filetime(datetime(1601, 1, 1, tzinfo=UTC)) == 0
    assert filetime(datetime(1970, 1, 1, tzinfo=UTC)) == 116_444_736_000_000_000


MESSAGE = (
    b"Received: from mail pickup service by mail.example.com with spoolmail;\r\n"
    b"\t Sat, 28 Nov 2026 10:15:02 +0000\r\n"
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.com, carol@example.com\r\n"
    b"Return-Path: <stale@example.org>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"body\r\n"
)


def test_drop_head_layout() -> None:
    head, body = split_head(MESSAGE)
    out = render_drop_head(
        head,
        sender="alice@example.net",
        recipients=["bob@example.com", "carol@example.com"],
        arrival=datetime(2026, 11, 28, 10, 15, 2, 12300, tzinfo=UTC),
    )
    assert out == (
        b"x-sender: alice@example.net\r\n"
        b"x-receiver: bob@example.com\r\n"
        b"x-receiver: carol@example.com\r\n"
        b"Received: from mail pickup service by mail.example.com with spoolmail;\r\n"
        b"\t Sat, 28 Nov 2026 10:15:02 +0000\r\n"
        b"From: Alice <alice@example.net>\r\n"
        b"To: bob@example.com, carol@example.com\r\n"
        b"Subject: hello\r\n"
        b"Return-Path: <alice@example.net>\r\n"
        b"X-OriginalArrivalTime: 28 Nov 2026 10:15:02.0012 (UTC) FILETIME=[548C6BC0:01DD7F21]\r\n"
        b"\r\n"
    )
    assert body == b"body\r\n"


def test_null_sender_is_written_as_angle_brackets() -> None:
    head, _ = split_head(MESSAGE)
    out = render_drop_head(
        head, sender="", recipients=["bob@example.com"], arrival=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert out.startswith(b"x-sender: <>\r\nx-receiver: bob@example.com\r\n")
    assert b"Return-Path: <>\r\n" in out
