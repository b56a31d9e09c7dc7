"""Tests for spoolmail._core.badmail: one report text for every way into BadMail.

The golden files in ``tests/core/golden/badmail-*.txt`` pin the exact bytes of each kind of
report, as ``dsn-*.eml`` pin the DSNs. After an intended change, regenerate them with

    SPOOLMAIL_REGENERATE_GOLDEN=1 python -m pytest tests/core/test_badmail.py

and read the diff.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spoolmail._core.badmail import (
    BadMailReport,
    damaged_report,
    orphan_report,
    refused_report,
    rejected_report,
    render_badmail_report,
    requeue_note,
    undeliverable_report,
)
from spoolmail._core.envelope import Recipient, RecipientState
from spoolmail._core.reply import Reply

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("SPOOLMAIL_REGENERATE_GOLDEN") == "1"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
TRANSCRIPT = (
    "--- 2026-11-28T10:00:00.000+00:00 attempt 1: smart host relay.test:2525\n"
    "10:00:00.010 > RCPT TO:<no@remote.test>\n"
    "10:00:00.020 < 550 5.1.1 no such user\n"
)


def failed(address: str, reply: Reply | None) -> Recipient:
    return Recipient(address, RecipientState.FAILED, reply, updated=T0)


REPORTS = {
    "badmail-rejected.txt": rejected_report(
        name="order 17.eml",
        kept_as="19ac9b2f1c0-000000000001.BAD",
        status="5.6.0",
        reason="no recipient: the file has no x-receiver line and no To:, Cc: or Bcc: header",
    ),
    "badmail-rejected-internal-error.txt": rejected_report(
        name="crash.eml",
        kept_as="19ac9b2f1c0-000000000002.BAD",
        status="4.3.0",
        reason="internal error while reading the file: ValueError('x')\nTraceback (most recent"
        ' call last):\n  File "pickup.py", line 1\nValueError: x\n',
    ),
    "badmail-refused.txt": refused_report(
        name="leak.eml", what="a symbolic link to '/etc/shadow', owned by uid 0, 0 bytes"
    ),
    "badmail-undeliverable.txt": undeliverable_report(
        recipients=[
            failed("no@remote.test", Reply(550, "5.1.1", "no such user", host="relay.test")),
            Recipient("ok@remote.test", RecipientState.DELIVERED),
        ],
        about="failed notice for 19ac9b2f1c0-000000000003 from <alice@example.com>: "
        "<bob@remote.test>: 550 5.1.1 no such user (from relay.test)",
        transcript=TRANSCRIPT,
    ),
    "badmail-damaged.txt": damaged_report(
        reason="the envelope file cannot be read: not JSON", envelope=b'{"format": "spoolm'
    ),
    "badmail-orphan.txt": orphan_report(),
}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_report_matches_golden(name: str) -> None:
    data = render_badmail_report(REPORTS[name])
    path = GOLDEN / name
    if REGENERATE:
        path.write_bytes(data)
        return
    assert data.decode().splitlines() == path.read_text().splitlines(), (
        f"{name} differs; SPOOLMAIL_REGENERATE_GOLDEN=1 rewrites it"
    )
    assert data == path.read_bytes()


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_opens_with_status_and_one_line_reason(name: str) -> None:
    report = REPORTS[name]
    first = render_badmail_report(report).decode().split("\n", 1)[0]
    assert first == f"{report.status} {report.reason.splitlines()[0]}"
    assert first.split(" ", 1)[0].count(".") == 2  # an RFC 3463 enhanced status code


def test_reason_details_go_below_the_first_line() -> None:
    text = render_badmail_report(REPORTS["badmail-rejected-internal-error.txt"]).decode()
    first, rest = text.split("\n", 1)
    assert "Traceback" not in first
    assert "Traceback (most recent call last):" in rest


def test_undeliverable_names_both_failures_and_keeps_the_transcript() -> None:
    text = render_badmail_report(REPORTS["badmail-undeliverable.txt"]).decode()
    assert text.startswith("5.1.1 This message has a null sender")
    assert "<no@remote.test>: 550 5.1.1 no such user (from relay.test)" in text
    assert "ok@remote.test" not in text  # delivered: not a failure
    assert "It was the failed notice for 19ac9b2f1c0-000000000003" in text
    assert text.endswith("Transcript:\n" + TRANSCRIPT)


def test_undeliverable_without_a_reply_says_5_0_0() -> None:
    report = undeliverable_report(recipients=[failed("x@y.test", None)], about="", transcript="")
    assert render_badmail_report(report).startswith(b"5.0.0 ")


def test_an_attachment_always_ends_in_a_line_end() -> None:
    report = BadMailReport(status="4.3.0", reason="x", attachment=("As found", "no newline"))
    assert render_badmail_report(report) == b"4.3.0 x\n\nAs found:\nno newline\n"


def test_non_utf8_text_is_replaced_not_an_error() -> None:
    report = damaged_report(reason="bad", envelope=b"\xff\xfe{")
    assert "\ufffd" in render_badmail_report(report).decode()


def test_requeue_note_lists_addresses_sorted() -> None:
    assert requeue_note("19ac9b2f1c0-000000000009", ["b@x", "a@x"]) == (
        b"\nRequeued as 19ac9b2f1c0-000000000009 for: a@x, b@x\n"
    )
