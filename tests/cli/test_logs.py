"""The command's log format: lines as ``logging.Formatter`` writes them, the time's text made
once a second."""

from __future__ import annotations

import logging
import sys
import time

import pytest

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
