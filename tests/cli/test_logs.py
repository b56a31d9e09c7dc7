"""The command's log format: lines as ``logging.Formatter`` writes them, the time's text made
once a second; a tick's summary only with -v; the mail lines written straight to the command's
own handlers when nothing else listens, the same lines the records make."""

from __future__ import annotations

import io
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spoolmail import Reply, Report
from spoolmail._cli import daemon
from spoolmail._cli.logs import _FORMAT, Logs, _Formatter, _stderr_handler, _StderrHandler
from spoolmail._core.events import describe
from spoolmail._service import observers
from spoolmail._service.observers import LogObserver, log_event, log_events
from spoolmail.events import Deferred, Delivered, Failed, Removed


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


# The mail lines of the command's log: straight to its own handlers when nothing else listens.

WHEN = datetime(2026, 12, 6, 4, 30, 5, 250_000, tzinfo=UTC)
EVENTS = (
    Delivered(
        queue_id="q1",
        time=WHEN,
        recipient="bob@remote.test",
        reply=Reply(250, "2.0.0", "Ok", host="mx.remote.test"),
        relay="mx.remote.test[192.0.2.1]:25",
        delay=timedelta(seconds=5.1),
    ),
    Deferred(
        queue_id="q2",
        time=WHEN,
        recipient="later@remote.test",
        reply=Reply(451, "4.4.1", "no answer"),
        next_attempt=WHEN + timedelta(minutes=15),
    ),
    Failed(queue_id="q3", time=WHEN, recipient="no@remote.test", reply=Reply(550, "5.1.1", "no")),
    Removed(queue_id="q1", time=WHEN),
)
STAMP = len("2026-12-06 04:30:05,250")


@pytest.fixture
def logs() -> Iterator[Logs]:
    """The command's handlers, at INFO; the stderr handler's format as it was, after."""
    made = Logs(level=logging.INFO)
    yield made
    made.close()
    _stderr_handler().setFormatter(_Formatter(_FORMAT))


def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing on the root logger for the rest of the test: pytest's own handlers, added for
    each phase of a test, taken away."""
    monkeypatch.setattr(logging.root, "handlers", [])


def written(text: str) -> list[str]:
    """The lines, each without its time (the moment a line was written differs)."""
    return [line[STAMP:] for line in text.splitlines()]


def log_twice(capsys: pytest.CaptureFixture[str], read: Callable[[], str]) -> tuple[str, str]:
    """What the events make straight, then as records (the straight path turned off)."""
    for event in EVENTS:
        log_event(event)
    straight = read()
    writer = observers._line_writer
    observers.write_lines_with(None)
    try:
        for event in EVENTS:
            log_event(event)
    finally:
        observers.write_lines_with(writer)
    return straight, read()


def no_records(monkeypatch: pytest.MonkeyPatch) -> None:
    def made(*_args: object, **_kwargs: object) -> logging.LogRecord:
        raise AssertionError("a record was made for a line that had nobody else to hear it")

    monkeypatch.setattr(observers.mail_log, "makeRecord", made)


def test_mail_lines_on_stderr_are_the_records_lines_made_without_a_record(
    logs: Logs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    capsys.readouterr()
    for event in EVENTS:
        log_event(event)
    straight = capsys.readouterr().err
    observers.write_lines_with(None)
    for event in EVENTS:
        log_event(event)
    observers.write_lines_with(logs._write_lines)
    recorded = capsys.readouterr().err
    assert written(straight) == written(recorded)
    assert written(straight) == [
        " INFO q1: to=<bob@remote.test>, relay=mx.remote.test[192.0.2.1]:25, delay=5.1, "
        "dsn=2.0.0, status=sent (250 2.0.0 Ok)",
        f" INFO {describe(EVENTS[1])}",
        f" WARNING {describe(EVENTS[2])}",
        " INFO q1: removed",
    ]
    # The time is the moment of writing, in logging's own format.
    stamp = straight.splitlines()[0][:STAMP]
    assert time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")
    assert stamp[-4] == ","
    assert stamp[-3:].isdigit()
    no_records(monkeypatch)
    log_event(EVENTS[0])
    assert written(capsys.readouterr().err) == written(straight)[:1]


def test_a_worker_s_lines_and_a_log_file_s_are_the_records_lines_too(
    logs: Logs, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    path = tmp_path / "spoolmail.log"
    logs.to_file(str(path))
    logs.as_worker(3)
    capsys.readouterr()
    straight, recorded = log_twice(capsys, path.read_text)
    lines = written(straight)
    assert lines == written(recorded)[len(lines) :]
    assert lines[0].startswith(" INFO [worker 3] q1: to=<bob@remote.test>")
    assert capsys.readouterr().err == ""  # stderr keeps the errors alone once a file is the log
    no_records(monkeypatch)
    # Moved away (logrotate): the next line goes to a new file at the same path, as a record's.
    path.rename(tmp_path / "spoolmail.log.1")
    log_event(EVENTS[3])
    assert written(path.read_text()) == [" INFO [worker 3] q1: removed"]


def test_anyone_else_who_listens_gets_the_records_and_the_line_is_written_once(
    logs: Logs, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        log_event(EVENTS[0])
    [record] = [r for r in caplog.records if r.name == "spoolmail.mail"]
    assert record.recipient == "bob@remote.test"  # type: ignore[attr-defined]
    assert written(capsys.readouterr().err) == [f" INFO {describe(EVENTS[0])}"]


class _Writes(io.StringIO):
    """A stream that counts the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_events_fired_together_are_one_write_of_the_lines_their_records_make(
    logs: Logs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    recorded = _Writes()
    monkeypatch.setattr(sys, "stderr", recorded)
    observers.write_lines_with(None)
    for event in EVENTS:
        log_event(event)
    observers.write_lines_with(logs._write_lines)
    straight = _Writes()
    monkeypatch.setattr(sys, "stderr", straight)
    no_records(monkeypatch)
    LogObserver().observe_all(EVENTS)  # as the event bus tells a commit's events
    assert straight.writes == 1
    assert written(straight.getvalue()) == written(recorded.getvalue())
    assert len(written(straight.getvalue())) == len(EVENTS)
    # A log file: one write of the same lines.
    path = tmp_path / "spoolmail.log"
    logs.to_file(str(path))
    log_events(EVENTS)
    assert written(path.read_text()) == written(recorded.getvalue())


def test_events_fired_together_that_another_handler_hears_are_records_in_order(
    logs: Logs, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        log_events(EVENTS)
    heard = [r for r in caplog.records if r.name == "spoolmail.mail"]
    assert [r.getMessage() for r in heard] == [describe(event) for event in EVENTS]
    assert heard[0].recipient == "bob@remote.test"  # type: ignore[attr-defined]
    assert written(capsys.readouterr().err) == [
        f" {r.levelname} {describe(event)}" for r, event in zip(heard, EVENTS, strict=True)
    ]


@pytest.mark.parametrize("where", ["mail handler", "mail filter", "handler filter", "root handler"])
def test_a_handler_or_a_filter_anywhere_on_the_way_gets_records(
    logs: Logs, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    heard: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record)

    def keep(record: logging.LogRecord) -> bool:
        heard.append(record)
        return True

    mail = logging.getLogger("spoolmail.mail")
    add, remove = {
        "mail handler": (lambda: mail.addHandler(Keep()), mail.handlers.clear),
        "mail filter": (lambda: mail.addFilter(keep), lambda: mail.removeFilter(keep)),
        "handler filter": (
            lambda: _stderr_handler().addFilter(keep),
            lambda: _stderr_handler().removeFilter(keep),
        ),
        "root handler": (
            lambda: logging.root.addHandler(Keep()),
            logging.root.handlers.clear,
        ),
    }[where]
    add()
    try:
        assert logs._write_lines(observers.mail_log, [(logging.INFO, "q1: removed")]) is False
        log_event(EVENTS[3])
    finally:
        remove()
    assert [r.getMessage() for r in heard] == ["q1: removed"]


def test_syslog_formats_its_own_way_so_it_gets_records(
    logs: Logs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        logs.to_syslog(address)
        assert logs._write_lines(observers.mail_log, [(logging.INFO, "q1: removed")]) is False
        log_event(EVENTS[3])
        server.settimeout(5)
        datagram = server.recv(4096)
    # Facility mail (2), severity info (6): <22>; then the ident, then the line.
    assert datagram.startswith(b"<22>spoolmail[")
    assert datagram.rstrip(b"\0").endswith(b"]: q1: removed")


def test_a_line_that_cannot_be_written_is_reported_as_logging_does_and_nothing_breaks(
    logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)

    class Broken:
        def write(self, _text: str) -> int:
            raise OSError(5, "Input/output error")

    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(sys, "stderr", Broken())
    monkeypatch.setattr(_StderrHandler, "handleError", lambda _self, r: reported.append(r))
    log_event(EVENTS[0])
    assert [(r.levelno, r.getMessage()) for r in reported] == [(logging.INFO, describe(EVENTS[0]))]


def test_closed_logs_leave_the_records_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.root, "handlers", [])
    made = Logs(level=logging.INFO)
    assert observers._line_writer is not None
    made.close()
    assert observers._line_writer is None


def test_a_plain_formatter_s_line_is_its_format_of_a_record() -> None:
    formatter = _Formatter(_FORMAT)
    created_ns = 1_796_000_000_123_456_789
    made = record(created_ns / 1e9, message="%s")
    made.msecs = 123.0
    made.args = ("text",)
    assert formatter.line(created_ns, logging.INFO, "text") == formatter.format(made)
    # Within a few hundred nanoseconds of the next second: still this second, 999 ms.
    edge = record(1_796_000_000.5, message="%s")
    edge.args, edge.msecs = ("text",), 999.0
    assert formatter.line(1_796_000_000_999_999_950, logging.INFO, "text") == formatter.format(edge)
    other = _Formatter("%(asctime)s %(threadName)s %(message)s")
    assert other.line(created_ns, logging.INFO, "text") is None  # a field only records have
    dated = _Formatter(_FORMAT)
    dated.datefmt = "%H"
    assert dated.line(created_ns, logging.INFO, "text") is None


def test_another_spoolmail_logger_s_line_goes_straight_too_and_reads_as_its_record(
    logs: Logs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    listener = logging.getLogger("spoolmail.listener")
    text = "q9: queued from client.test[127.0.0.1] sender=<a@example.org> recipients=1 size=9"
    capsys.readouterr()
    with monkeypatch.context() as patched:

        def made(*_args: object, **_kwargs: object) -> logging.LogRecord:
            raise AssertionError("a record was made for a line that had nobody else to hear it")

        patched.setattr(listener, "makeRecord", made)
        observers.log_line(listener, logging.INFO, text)
    straight = capsys.readouterr().err
    observers.write_lines_with(None)
    try:
        observers.log_line(listener, logging.INFO, text)
    finally:
        observers.write_lines_with(logs._write_lines)
    assert written(straight) == written(capsys.readouterr().err) == [f" INFO {text}"]


def test_a_handler_below_spoolmail_or_a_disabled_logger_is_respected(
    logs: Logs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alone(monkeypatch)
    inner = logging.getLogger("spoolmail.listener.inner")
    heard: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    keep = Keep()
    listener = logging.getLogger("spoolmail.listener")
    listener.addHandler(keep)
    try:
        assert logs._write_lines(inner, [(logging.INFO, "line")]) is False
        observers.log_line(inner, logging.INFO, "line")
    finally:
        listener.removeHandler(keep)
    assert heard == ["line"]
    capsys.readouterr()
    monkeypatch.setattr(inner, "disabled", True)
    observers.log_line(inner, logging.INFO, "not written")
    assert capsys.readouterr().err == ""


def test_a_line_s_record_names_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        observers.log_line(logging.getLogger("spoolmail.listener"), logging.INFO, "said")
    [record] = caplog.records
    assert (record.getMessage(), record.funcName) == (
        "said",
        "test_a_line_s_record_names_the_caller",
    )
