"""Where the ``spoolmail`` command's log goes: stderr, a file (``--log-file``), syslog.

The ``spoolmail`` logger (and its children: ``spoolmail.mail``, one record per outcome per
recipient; ``spoolmail.smtp``, the SMTP dialogue at DEBUG, shown with ``-v``) writes to stderr
by default. With a log file or syslog the log goes there instead and stderr shows errors
alone, so that a service under systemd does not log everything twice. The file is opened for
appending and reopened when it was moved or removed (logrotate without ``copytruncate``) and on
:meth:`Logs.reopen` (SIGHUP); syslog gets facility ``mail`` and the ident ``spoolmail[PID]``,
as Postfix's programs log. Opens the log file and the syslog socket; reads nothing.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from spoolmail._service.observers import write_lines_with
from spoolmail.exceptions import ConfigurationError

__all__ = ["DEFAULT_SYSLOG", "Logs"]

DEFAULT_SYSLOG = "/dev/log"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_root = logging.getLogger("spoolmail")


class _Formatter(logging.Formatter):
    """``logging.Formatter``, with the text of the time (to the second) made once a second: a
    running service writes many lines a second, and each made it anew. The same lines."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        if datefmt is not None or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        return self._stamp(int(record.created), record.msecs)

    def _stamp(self, second: int, msecs: float) -> str:
        cached, text = self._second  # one tuple: threads see a pair that belongs together
        if cached != second:
            text = time.strftime(self.default_time_format, time.localtime(second))
            self._second = (second, text)
        return self.default_msec_format % (text, msecs) if self.default_msec_format else text

    def line(self, created_ns: int, level: int, text: str) -> str | None:
        """The line :meth:`format` makes of a record of ``text`` at ``level``, made at
        ``created_ns`` (``time.time_ns``), without an exception or a stack; ``None`` when this
        formatter has a date format, another clock or fields a record alone has."""
        if self.datefmt is not None or self.converter is not time.localtime:
            return None
        fmt = self._fmt
        if fmt is None:
            return None
        # The second and the milliseconds from the integer: a float of the time would round up
        # to the next second within a few hundred nanoseconds of it.
        second, rest = divmod(created_ns, 1_000_000_000)
        stamp = self._stamp(second, rest // 1_000_000 + 0.0)
        try:
            return fmt % {  # what PercentStyle does with the record's fields
                "asctime": stamp,
                "levelname": logging.getLevelName(level),
                "message": text,
            }
        except (KeyError, TypeError, ValueError):
            return None


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, not the one there was at the start."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:  # noqa: BLE001 (logging must never break the command)
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A formatted line, as :meth:`emit` writes it (the caller holds the handler's lock)."""
        sys.stderr.write(line + "\n")

    def write_lines(self, lines: Sequence[str]) -> None:
        """Formatted lines, as :meth:`write_line` writes each, in one write."""
        sys.stderr.write("\n".join(lines) + "\n")


class _LogFile(logging.handlers.WatchedFileHandler):
    """Appends; reopens when the file was moved away (WatchedFileHandler) or when told."""

    def write_lines(self, lines: Sequence[str]) -> None:
        """Formatted lines, each as ``emit`` writes a record's (WatchedFileHandler's reopening,
        FileHandler's opening, StreamHandler's write and flush), in one write; the caller holds
        the lock."""
        self.reopenIfNeeded()
        if self.stream is None and (self.mode != "w" or not getattr(self, "_closed", False)):
            self.stream = self._open()
        if self.stream:
            end = self.terminator
            self.stream.write(end.join(lines) + end)
            self.flush()

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
                self.stream = None
            self.stream = self._open()
            self._statstream()
        finally:
            self.release()


def _formatted(
    handler: logging.Handler, created_ns: int, lines: Sequence[tuple[int, str]]
) -> list[str] | None:
    """The lines ``handler`` writes of ``lines`` (those at its level or above), formatted as its
    records' would be; ``None`` if its formatter cannot make them without a record."""
    formatter = handler.formatter
    if not isinstance(formatter, _Formatter):
        return None
    made: list[str] = []
    for level, text in lines:
        if level >= handler.level:
            line = formatter.line(created_ns, level, text)
            if line is None:
                return None
            made.append(line)
    return made


def _stderr_handler() -> _StderrHandler:
    """The one stderr handler, set up once however often ``main`` runs."""
    for handler in _root.handlers:
        if isinstance(handler, _StderrHandler):
            return handler
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(_FORMAT))
    _root.addHandler(handler)
    return handler


def _syslog_address(address: str | bool) -> str | tuple[str, int]:
    if address is True:
        return DEFAULT_SYSLOG
    text = str(address)
    if text.startswith(("/", ".")) or os.sep in text:
        return text
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit():
        return (host.strip("[]") or "127.0.0.1", int(port))
    return text


class Logs:
    """The command's log handlers for one run of ``main``; :meth:`close` removes them.

    While it is open, the lines written once or more a message (``spoolmail.mail``'s, and the
    listener's "queued": ``_service.observers.log_line``) go straight to these handlers when
    nothing else would hear their records: no other handler on the way up, no filter on their
    logger or on a handler, no syslog (which formats its own way), the formatters plain. The
    lines are those the records would make; anyone who adds a handler or a filter (a test's
    ``caplog``, an embedder's configuration) gets the records again, fields and all.
    """

    def __init__(self, *, level: int) -> None:
        self._stderr = _stderr_handler()
        self._stderr.setLevel(logging.NOTSET)
        self._added: list[logging.Handler] = []
        self._file: _LogFile | None = None
        self.set_level(level)
        write_lines_with(self._write_lines)

    def _write_lines(self, logger: logging.Logger, lines: Sequence[tuple[int, str]]) -> bool:
        """``lines`` (each a level and a text) written by the handlers they concern, each
        handler's in one write, if ``logger``'s records would reach no one else (see the class
        docstring); whether they were (all of them, or none)."""
        handlers = _root.handlers
        if not handlers or logger.filters or (_root.propagate and logging.root.handlers):
            return False
        on_the_way: logging.Logger | None = logger
        while on_the_way is not _root:  # the loggers between it and spoolmail's: no handler
            if on_the_way is None or on_the_way.handlers or not on_the_way.propagate:
                return False
            on_the_way = on_the_way.parent
        created = time.time_ns()
        writes: list[tuple[_StderrHandler | _LogFile, list[str]]] = []
        for handler in handlers:
            if not isinstance(handler, _StderrHandler | _LogFile) or handler.filters:
                return False
            made = _formatted(handler, created, lines)
            if made is None:
                return False
            if made:
                writes.append((handler, made))
        for handler, made in writes:
            handler.acquire()
            try:
                handler.write_lines(made)
            except Exception:  # noqa: BLE001 (logging must never break the command)
                said = "\n".join(text for _, text in lines)
                handler.handleError(
                    logging.makeLogRecord(
                        {"name": logger.name, "levelno": lines[0][0], "msg": said, "args": None}
                    )
                )
            finally:
                handler.release()
        return True

    def set_level(self, level: int) -> None:
        _root.setLevel(level)
        # aiosmtpd logs every command a client sends at INFO on "mail.log" (addresses
        # included): the listener's own records say what matters; its dialogue is for -v.
        logging.getLogger("mail.log").setLevel(
            logging.DEBUG if level <= logging.DEBUG else logging.WARNING
        )

    def to_file(self, path: str) -> None:
        """Append the log to ``path`` from now on."""
        try:
            handler = _LogFile(Path(path), encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"log_file: cannot open {path}: {exc}") from None
        handler.setFormatter(_Formatter(_FORMAT))
        self._file = handler
        self._add(handler)

    def to_syslog(self, address: str | bool) -> None:
        """Send the log to syslog (facility mail) at ``address``: True for /dev/log, a socket
        path, or HOST:PORT for UDP."""
        where = _syslog_address(address)
        if isinstance(where, str) and not os.path.exists(where):
            # SysLogHandler says nothing of a socket it cannot reach (as openlog(3) does not),
            # but a wrong path here is a typo to report, not a syslog daemon down for a while.
            raise ConfigurationError(f"syslog: cannot reach {where}: no such socket")
        try:
            handler = logging.handlers.SysLogHandler(
                address=where, facility=logging.handlers.SysLogHandler.LOG_MAIL
            )
        except OSError as exc:
            raise ConfigurationError(f"syslog: cannot reach {address}: {exc}") from None
        handler.ident = f"spoolmail[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._add(handler)

    def as_worker(self, index: int) -> None:
        """In a worker process (``run --workers``): its records say which worker wrote them,
        and syslog's ident carries its own process id, not its parent's."""
        label = f"%(asctime)s %(levelname)s [worker {index}] %(message)s"
        for handler in [self._stderr, *self._added]:
            if isinstance(handler, logging.handlers.SysLogHandler):
                handler.ident = f"spoolmail[{os.getpid()}]: "
            else:
                handler.setFormatter(_Formatter(label))

    def _add(self, handler: logging.Handler) -> None:
        _root.addHandler(handler)
        self._added.append(handler)
        # The log has a home now: stderr keeps the errors, for whoever started the command.
        self._stderr.setLevel(logging.ERROR)

    def reopen(self) -> None:
        """Reopen the log file (SIGHUP, after logrotate moved it)."""
        if self._file is not None:
            try:
                self._file.reopen()
            except OSError as exc:
                _root.error("cannot reopen the log file %s: %s", self._file.baseFilename, exc)

    def close(self) -> None:
        write_lines_with(None)
        for handler in self._added:
            _root.removeHandler(handler)
            handler.close()
        self._added = []
        self._file = None
        self._stderr.setLevel(logging.NOTSET)
