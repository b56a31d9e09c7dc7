"""The command's log format: lines as ``logging.Formatter`` writes them, the time's text made
once a second; a tick's summary only with -v."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from spoolmail import Report
from spoolmail._cli import daemon
from spoolmail._cli.logs import _FORMAT, _Formatter


def record(created: float, message: str = "hello %s", exc: bool = False) -> logging.LogRecord:
    made = logging.LogRecord("spoolmail.mail", logging.INFO, __file__, 1, message, ("x",), None)
    if exc:
        try:
            int("boom")
        except ValueError:
            made.exc_info = sys.exc_info()
    made.created = created
    made.msecs = int((created - int(created)) * 1000) + 0.0
    return made


@pytest.mark.parametrize("fmt", [_FORMAT, "%(asctime)s %(levelname)s [worker 1] %(message)s"])
def test_lines_are_logging_s_own(fmt: str) -> None:
    ours, theirs = _Formatter(fmt), logging.Formatter(fmt)
    base = 1_796_000_000.0
    for created in (base + 0.001, base + 0.999, base + 1.0, base + 1.5, base - 3600.25, base):
        assert ours.format(record(created)) == theirs.format(record(created))
    assert ours.format(record(base, exc=True)) == theirs.format(record(base, exc=True))


def test_a_date_format_or_another_clock_is_logging_s_too() -> None:
    ours = _Formatter(_FORMAT)
    ours.converter = time.gmtime  # type: ignore[method-assign]
    theirs = logging.Formatter(_FORMAT)
    theirs.converter = time.gmtime  # type: ignore[method-assign]
    made = record(1_796_000_000.25)
    assert ours.format(made) == theirs.format(made)
    assert ours.formatTime(made, "%H") == theirs.formatTime(made, "%H")


def test_a_tick_s_summary_is_logged_with_v_and_not_even_made_without(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = Report(picked_up=("ID1",), delivered=(("ID1", "bob@example.com"),))
    with caplog.at_level(logging.DEBUG, logger="spoolmail"):
        daemon._log_report(report)
    assert [r.getMessage() for r in caplog.records] == [
        "ID1: queued from Pickup",
        "ID1: delivered to bob@example.com",
    ]
    caplog.clear()

    def unwanted(_report: Report) -> list[str]:
        raise AssertionError("the summary's lines were made without -v")

    monkeypatch.setattr(daemon, "_report_lines", unwanted)
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        daemon._log_report(report)
    assert caplog.records == []
