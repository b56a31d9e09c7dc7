"""Transcript stamps: lines stamped with time.time_ns() (the delivery's, with the real clock)
read as the clock's own datetimes would; any other clock stamps its own datetimes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.transcript import Transcript, _format, _moment
from spoolmail._store.clock import system_clock

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))
def test_a_stamp_is_its_microsecond_rounded_down(nanoseconds: int) -> None:
    assert _moment(nanoseconds) == EPOCH + timedelta(microseconds=nanoseconds // 1000)
    assert _moment(nanoseconds).tzinfo is UTC
    for mark in ("---", ">", "*"):
        assert _format(nanoseconds, mark, "x") == _format(_moment(nanoseconds), mark, "x")


def test_the_real_clock_s_lines_read_as_its_datetimes_would() -> None:
    before = system_clock()
    transcript = Transcript(system_clock, stamp=time.time_ns)
    transcript.begin("attempt 1: [127.0.0.1]:25")
    transcript.sent("MAIL FROM:<a@example.org>")
    transcript.received("250 2.1.0 Ok")
    transcript.note("message data sent")
    after = system_clock()
    first, *rest = transcript.lines
    stamp, _, title = first.removeprefix("--- ").partition(" ")
    assert (
        before.replace(microsecond=before.microsecond // 1000 * 1000)
        <= datetime.fromisoformat(stamp)
        <= after
    )
    assert title == "attempt 1: [127.0.0.1]:25"
    assert [line.split(" ", 1)[1] for line in rest] == [
        "> MAIL FROM:<a@example.org>",
        "< 250 2.1.0 Ok",
        "* message data sent",
    ]


def test_another_clock_stamps_its_own_times_and_both_kinds_mix() -> None:
    fixed = datetime(2026, 12, 6, 4, 30, 5, 250_999, tzinfo=UTC)
    theirs = Transcript(lambda: fixed)
    theirs.note("from a set clock")
    ours = Transcript(system_clock, stamp=time.time_ns)
    ours.note("from the real one")
    ours.extend(theirs)
    assert ours.lines[1] == "04:30:05.250 * from a set clock"
    assert ours.lines[0].endswith(" * from the real one")
    assert ours.text == "".join(f"{line}\n" for line in ours.lines)


def test_how_the_times_are_taken_is_not_part_of_equality() -> None:
    assert Transcript(system_clock) == Transcript(system_clock, stamp=time.time_ns)
