"""The mail log: every event of every message, kept in ``Log/`` after the message is gone.

``Log/spoolmail-YYYY-MM-DD.jsonl``, one file a UTC day (the event's time), one JSON object a
line (``_core.events.encode_event``). :class:`MailLog` is an observer of a spool's events: it
appends each as one line, and once a day (at the first line of a new day) removes the files older
than ``days``. The queue is the durable record and this log is for people (docs/design.md
section 10 of the shared design): lines are appended without an fsync each. On an OS filesystem
every line is written whole by one ``write`` to a descriptor opened with ``O_APPEND`` (the lines
of events fired together, :meth:`MailLog.append_all`, by one ``write`` before it returns), so
several threads (under one lock) and several processes append whole lines without a lock between
them; elsewhere (MemoryFS, other backends, one process each) through PyFilesystem2 under the
lock. A line cut short by a crash is skipped when read, and ended (on an OS filesystem) before
the next is appended, so that it costs no more than itself; a line longer than
:data:`LONGEST_LINE` is passed over unread. The folder is made at the first line,
so a MailRoot nobody logs into keeps its five folders only. :meth:`MailLog.read` gives back
what happened to one message; the queue id is only compared with what the lines say, never put
into a path. Reads and writes ``Log/`` only.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, timedelta
from typing import IO, cast

from spoolmail._core.events import DsnQueued, MailEvent, Requeued, decode_event, encode_event
from spoolmail._store import pyfs
from spoolmail._store.entries import UnsafeEntry, open_regular
from spoolmail._store.folders import LOG
from spoolmail._store.lines import end_cut_line, read_lines
from spoolmail._store.store import MailStore

__all__ = ["LONGEST_LINE", "MailLog", "log_file_name"]

log = logging.getLogger("spoolmail")

_NAME = re.compile(r"^spoolmail-([0-9]{4}-[0-9]{2}-[0-9]{2})\.jsonl\Z")
# Read and write: the last byte is looked at before the first line is appended (end_cut_line).
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
# A link planted under today's name is not followed; a FIFO does not block the open (no reader:
# ENXIO), and is refused once open (below), as anything else that is no regular file.
_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

#: The longest mail log line read. Ten thousand recipients (Pickup's limit) of 256 octets each
#: make a line of under 3 MiB; a longer one (hundreds of megabytes of a damaged or planted file,
#: no line end at all) is passed over in pieces of this size, never held whole.
LONGEST_LINE = 8 << 20


def log_file_name(day: date) -> str:
    """The mail log file of ``day`` (UTC), inside ``Log/``."""
    return f"spoolmail-{day.isoformat()}.jsonl"


def _lines_about(
    handle: IO[bytes], needle: bytes, queue_id: str, damaged: Callable[[str], None] | None
) -> Iterator[tuple[str, MailEvent]]:
    """The lines of one log file about ``queue_id``, with their events; damaged ones skipped
    (and told to ``damaged``, if given)."""
    for raw in read_lines(handle, LONGEST_LINE):
        if needle not in raw:
            continue
        line = raw.decode("utf-8", "replace").rstrip("\n")
        try:
            event = decode_event(line)
        # Cut short, not JSON, nested too deep, a value not of its type (decode_event).
        except (ValueError, RecursionError, ArithmeticError):
            if damaged is not None:
                damaged(line)
            continue
        if _about(event, queue_id):
            yield line, event


def _about(event: MailEvent, queue_id: str) -> bool:
    """Whether ``event`` belongs to the story of ``queue_id``: its own, or the one that made it
    (the parent's DSN line names the DSN; a requeue names the new id)."""
    if event.queue_id == queue_id:
        return True
    if isinstance(event, DsnQueued):
        return event.dsn_id == queue_id
    return isinstance(event, Requeued) and event.new_id == queue_id


class MailLog:
    """Appends events to ``Log/`` and reads them back (see the module docstring).

    ``days`` (at least 1) is how many daily files are kept, today's included.
    """

    def __init__(self, store: MailStore, *, days: int = 30) -> None:
        if days < 1:
            raise ValueError(f"a mail log keeps at least one day, not {days!r}")
        self.days = days
        self._fs = store.fs
        self._root = self._fs.getsyspath("/") if self._fs.hassyspath("/") else None
        self._lock = threading.Lock()
        self._day: date | None = None
        self._fd: int | None = None
        self._failing = False

    # -- writing -------------------------------------------------------------------------------

    def __call__(self, event: MailEvent) -> None:
        self.append(event)

    def observe_all(self, events: Sequence[MailEvent]) -> None:
        """Events fired together (:meth:`EventBus.emit_all`): :meth:`append_all`."""
        self.append_all(events)

    def append(self, event: MailEvent) -> None:
        """Append ``event`` as one line; a file that cannot be written is logged once, not
        raised: the mail log must never stop delivery."""
        self.append_all((event,))

    def append_all(self, events: Sequence[MailEvent]) -> None:
        """Append ``events`` as one line each, in order, the lines of one day in one ``write``
        (whole lines, as :meth:`append`; written before this returns, never kept back)."""
        runs: list[tuple[date, list[bytes]]] = []
        for event in events:
            line = (encode_event(event) + "\n").encode("utf-8", "surrogateescape")
            day = event.time.astimezone(UTC).date()
            if runs and runs[-1][0] == day:
                runs[-1][1].append(line)
            else:
                runs.append((day, [line]))
        with self._lock:
            for day, lines in runs:
                self._append_run(day, b"".join(lines))

    def _append_run(self, day: date, data: bytes) -> None:
        """Write the lines of one day (under the lock)."""
        try:
            if day != self._day:
                self._start_day(day)
            self._write(day, data)
        except (OSError, pyfs.errors.FSError) as exc:
            self._close_fd()
            self._day = None  # opened again, and pruned, at the next line
            if not self._failing:
                log.warning("cannot write the mail log in %s/: %s", LOG, exc)
            self._failing = True
            return
        if self._failing:
            log.info("writing the mail log in %s/ again", LOG)
            self._failing = False

    def _start_day(self, day: date) -> None:
        self._close_fd()
        self._day = day
        if self._root is not None:
            os.makedirs(os.path.join(self._root, LOG), mode=0o750, exist_ok=True)
            path = os.path.join(self._root, LOG, log_file_name(day))
            fd = os.open(path, _FLAGS, 0o640)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, f"{path} is no regular file")
            self._fd = fd
            end_cut_line(fd)
        else:
            self._fs.makedirs(LOG, recreate=True)
        self._prune(day)

    def _write(self, day: date, line: bytes) -> None:
        if self._fd is None:
            self._fs.appendbytes(f"{LOG}/{log_file_name(day)}", line)
            return
        view = memoryview(line)
        while view:  # one write for whole lines; the loop is for a disk that fills up
            written = os.write(self._fd, view)
            view = view[written:]

    def _prune(self, today: date) -> None:
        """Remove the daily files older than ``days`` (only files named as this module names
        them: nothing else in ``Log/`` is touched)."""
        oldest = today - timedelta(days=self.days - 1)
        for name, day in self._files():
            if day < oldest:
                try:
                    self._fs.remove(f"{LOG}/{name}")
                except pyfs.errors.ResourceNotFound:
                    continue  # another process pruned it first
                except pyfs.errors.FSError as exc:
                    # A folder under a log file's name, a file not ours to remove: it stays,
                    # and the day's lines are written all the same.
                    log.warning("cannot remove %s/%s: %s", LOG, name, exc)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close_fd()
            self._day = None

    # -- reading -------------------------------------------------------------------------------

    def _files(self) -> list[tuple[str, date]]:
        """The daily files, oldest first."""
        try:
            names = self._fs.listdir(LOG)
        except pyfs.errors.ResourceNotFound:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if match is None:
                continue
            try:
                found.append((name, date.fromisoformat(match.group(1))))
            except ValueError:
                continue
        return sorted(found, key=lambda item: item[1])

    def read(
        self, queue_id: str, *, damaged: Callable[[str], None] | None = None
    ) -> Iterator[tuple[str, MailEvent]]:
        """Every line about ``queue_id`` (and the line that made it, for a DSN or a requeued
        message), oldest first, with its event. Damaged lines that hold the id (cut short by a
        crash, edited by hand) are skipped, and told to ``damaged`` if given."""
        needle = queue_id.encode("utf-8", "surrogateescape")
        for name, _ in self._files():
            try:
                handle = self._open(name)
            except (pyfs.errors.ResourceNotFound, FileNotFoundError):
                continue  # pruned meanwhile
            except UnsafeEntry:
                continue  # no log file of ours: a link (not followed out), a FIFO, a device
            except (OSError, pyfs.errors.FSError) as exc:  # unreadable, a folder (MemoryFS)
                log.warning("cannot read %s/%s: %s", LOG, name, exc)
                continue
            with handle:
                try:
                    yield from _lines_about(handle, needle, queue_id, damaged)
                except (OSError, pyfs.errors.FSError) as exc:
                    # A failing disk in the middle of a file: what was read stands, and the
                    # days after it are read all the same.
                    log.warning("cannot read %s/%s: %s", LOG, name, exc)

    def _open(self, name: str) -> IO[bytes]:
        """A log file to read, opened as Pickup files are (``open_regular``: no link followed, a
        FIFO never waited on); a linked one (a copy kept by hard link) is read all the same."""
        if self._root is None:
            return cast("IO[bytes]", self._fs.open(f"{LOG}/{name}", "rb"))
        fd = open_regular(os.path.join(self._root, LOG, name), single_link=False)
        return os.fdopen(fd, "rb")

    def days_kept(self) -> list[date]:
        """The days the mail log has files for, oldest first."""
        return [day for _, day in self._files()]
