"""The listener's reading of MAIL and RCPT paths gives aiosmtpd's answers, faster.

No socket: ``SmtpSession._getaddr`` is compared with aiosmtpd's own on the same text.
"""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._listen.session import SmtpSession


def readers(limit: int = 0) -> tuple[SmtpSession, SMTP]:
    ours, theirs = SmtpSession.__new__(SmtpSession), SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    return ours, theirs


@pytest.mark.parametrize(
    "text",
    [
        "<a@b.c>",
        "<a@b.c> SIZE=10",
        "<a@b.c>  SIZE=10 BODY=8BITMIME",
        "<a@b.c>\tX",
        "<a@b.c>X",
        "<a@b.c>(comment) X",
        "<a@b.c> (comment) X",
        "<>",
        "<> SIZE=5",
        " <a@b.c>",
        "a@b.c SIZE=1",
        '<"x y"@c>',
        "<a@[192.0.2.1]>",
        "<@relay.test:a@b.c>",
        "<a@b.c",
        "<a..b@c>",
        "<a@b..c>",
        "<a@b.c.>",
        "<zoë@b.c>",
        "<first.last+tag@sub.example.com> ORCPT=rfc822;x@y",
    ],
)
def test_paths_are_read_as_aiosmtpd_reads_them(text: str) -> None:
    ours, theirs = readers()
    assert ours._getaddr(text) == theirs._getaddr(text)


def test_the_local_part_limit_still_applies() -> None:
    ours, theirs = readers(limit=3)
    for text in ("<abcd@x.test>", "<abc@x.test>"):
        assert ours._getaddr(text) == theirs._getaddr(text)
    assert ours._getaddr("<abcd@x.test>") == (None, None)


def outcome(reader: SMTP, text: str) -> object:
    try:
        return reader._getaddr(text)
    except Exception as exc:  # noqa: BLE001 (the email parser raises IndexError on some input)
        return type(exc)


@given(st.text(alphabet='<>@.a-+"( )[]:\tzë=', max_size=24))
def test_any_text_is_read_as_aiosmtpd_reads_it(text: str) -> None:
    """The same answer; where aiosmtpd's parser raises, ours says "malformed" (553 5.1.3)."""
    ours, theirs = readers()
    expected = outcome(theirs, text)
    assert outcome(ours, text) == ((None, None) if isinstance(expected, type) else expected)
