"""The suppression list in the MailRoot: ``Suppression/suppressed.jsonl``.

One JSON object a line (``_core.suppression``: address, time, reply, queue id), readable and
greppable by an operator. A new entry is appended (on an OS filesystem one ``write`` to a
descriptor opened with ``O_APPEND``, as the mail log does, so several processes append whole
lines); a removal, and the dropping of expired entries, rewrite the file whole: a temporary file in
the same folder, fsync'd, renamed over it. A later line for the same address wins; a damaged line
is skipped (one cut short by a crash is ended before the next entry is appended; one longer than
:data:`LONGEST_ENTRY` is passed over unread; one whose values are out of range, a reply code of
1e400 or a time whose expiry is past the year 9999, is damaged too). The folder is made at the
first entry. Readers keep the parsed list and read the file again only when its size or time
changed, so consulting it per recipient costs one ``stat``. Two processes that rewrite at the same
instant can lose each other's newest line (one service per MailRoot writes; an operator's removal
is the other writer), which only means a hard bounce is met once more. Reads and writes
``Suppression/`` only.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO

from spoolmail._core.reply import Reply
from spoolmail._core.suppression import (
    Suppressed,
    decode_suppressed,
    encode_suppressed,
    suppression_key,
)
from spoolmail._store import pyfs
from spoolmail._store.entries import UnsafeEntry, open_regular
from spoolmail._store.lines import end_cut_line, read_lines
from spoolmail._store.spool import Spool
from spoolmail.exceptions import ConfigurationError, StorageError

__all__ = ["SUPPRESSION", "SuppressionList"]

log = logging.getLogger("spoolmail")

SUPPRESSION = "Suppression"
_FILE = "suppressed.jsonl"
# Read and write: the last byte is looked at before an entry is appended (end_cut_line).
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
# Not a link followed out of the MailRoot, nor a FIFO waited on (no reader: ENXIO); anything
# but a regular file is refused once open.
_FLAGS |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
#: The longest line read. An entry is an address and a reply whose text is cut to 2,048
#: characters (its cause's too): a few KiB. A longer line is damaged (a crash that left zeros, a
#: planted file without line ends) and is passed over unread, never held whole.
LONGEST_ENTRY = 1 << 20
# How far ahead of the clock an entry may be dated (two machines' clocks, a DST mistake).
_AHEAD = timedelta(days=1)


def _one_address(address: object) -> None:
    """A list or a tuple given where one address goes is a ``TypeError`` saying so, not the
    ``AttributeError`` of a missing ``casefold``."""
    if not isinstance(address, str):
        raise TypeError(f"address is one address as a string, not {type(address).__name__}")


class SuppressionList:
    """Recipients that hard-bounced, in the MailRoot of ``spool``; entries kept ``days`` days.

    ``SuppressionList(spool).entries()`` lists them, ``remove("bob@example.net")`` forgets one
    (what ``spoolmail suppress list/remove`` do); a :class:`~spoolmail.MailService` adds them
    and consults the list before sending. Thread-safe.
    """

    def __init__(self, spool: Spool, *, days: int = 30) -> None:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ConfigurationError(f"suppression days must be 1 or more, not {days!r}")
        self.days = days
        self._fs = spool._store.fs
        self._clock: Callable[[], datetime] = spool.clock
        self._root = self._fs.getsyspath("/") if self._fs.hassyspath("/") else None
        # Looked at before every remote delivery: the path is made once.
        self._path = None if self._root is None else os.path.join(self._root, SUPPRESSION, _FILE)
        self._lock = threading.Lock()
        self._signature: tuple[float, ...] | None = None
        self._entries: dict[str, Suppressed] = {}

    @property
    def keep(self) -> timedelta:
        """How long an entry is kept (``days``)."""
        return timedelta(days=self.days)

    # -- reading -------------------------------------------------------------------------------

    def entries(self) -> list[Suppressed]:
        """The entries in force now, oldest first."""
        now = self._clock()
        with self._lock:
            self._load()
            live = [e for e in self._entries.values() if now < e.until(self.keep)]
        return sorted(live, key=lambda e: (e.time, e.address))

    def get(self, address: str) -> Suppressed | None:
        """The entry in force for ``address``, or ``None``."""
        _one_address(address)
        with self._lock:
            self._load()
            entry = self._entries.get(suppression_key(address)) if self._entries else None
        if entry is None or self._clock() >= entry.until(self.keep):
            return None
        return entry

    def _stat(self) -> tuple[float, ...] | None:
        path = f"{SUPPRESSION}/{_FILE}"
        try:
            if self._path is not None:
                # Nearly always absent: asked without the FileNotFoundError os.stat raises,
                # whose making cost more than the rest of the look.
                if not os.access(self._path, os.F_OK):
                    return None
                st = os.stat(self._path)
                return (st.st_ino, st.st_mtime_ns, st.st_size)
            info = self._fs.getinfo(path, namespaces=["details"])
        except (FileNotFoundError, pyfs.errors.ResourceNotFound):
            return None
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot look at {path}: {exc}") from exc
        modified = info.modified.timestamp() if info.modified else 0.0
        return (modified, info.size)

    def _load(self) -> None:
        """Read the file again if it changed (under the lock)."""
        signature = self._stat()
        if signature == self._signature and signature is not None:
            return
        entries: dict[str, Suppressed] = {}
        if signature is not None:
            try:
                entries = self._read()
            except (pyfs.errors.ResourceNotFound, FileNotFoundError):
                pass
            except UnsafeEntry as exc:  # planted: waiting will not make it the list
                raise StorageError(
                    f"cannot read {SUPPRESSION}/{_FILE}: it is {exc}", temporary=False
                ) from exc
            except OSError as exc:
                raise StorageError(f"cannot read {SUPPRESSION}/{_FILE}: {exc}") from exc
            except pyfs.errors.FSError as exc:
                raise StorageError(f"cannot read {SUPPRESSION}/{_FILE}: {exc}") from exc
        self._entries = entries
        self._signature = signature

    def _read(self) -> dict[str, Suppressed]:
        """The file's entries by key, read line by line as Pickup files are opened
        (``open_regular``): a link planted in its place is not followed, a FIFO not waited on."""
        if self._path is None:
            handle: IO[bytes] = self._fs.openbin(f"{SUPPRESSION}/{_FILE}", "r")
        else:
            handle = os.fdopen(open_regular(self._path, single_link=False), "rb")
        entries: dict[str, Suppressed] = {}
        with handle:
            for raw in read_lines(handle, LONGEST_ENTRY):
                entry = self._decode(raw.decode("utf-8", "replace"))
                if entry is not None:
                    entries[suppression_key(entry.address)] = entry
        return entries

    def _decode(self, line: str) -> Suppressed | None:
        """The entry on ``line``; ``None`` for a damaged line, numbers out of range included,
        and an entry dated more than a day ahead of the clock: a hand edit's typo (2062 for
        2026) or a clock that was wrong would suppress its recipient for decades."""
        try:
            entry = decode_suppressed(line)
            if entry is not None:
                entry.until(self.keep)  # past the year 9999: no entry spoolmail wrote
        except ArithmeticError:  # OverflowError: a reply code of 1e400, a date past 9999
            return None
        if entry is not None and entry.time > self._clock() + _AHEAD:
            log.warning(
                "%s/%s: the entry for %a is dated %s, ahead of the clock: not in force",
                SUPPRESSION,
                _FILE,
                entry.address,
                entry.time.isoformat(timespec="seconds"),
            )
            return None
        return entry

    # -- writing -------------------------------------------------------------------------------

    def add(
        self, address: str, reply: Reply, *, queue_id: str, time: datetime | None = None
    ) -> None:
        """Record that ``address`` hard-bounced with ``reply`` (message ``queue_id``)."""
        _one_address(address)
        entry = Suppressed(address, time or self._clock(), reply, queue_id)
        line = (encode_suppressed(entry) + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            try:
                if self._root is not None:
                    folder = os.path.join(self._root, SUPPRESSION)
                    os.makedirs(folder, mode=0o750, exist_ok=True)
                    fd = os.open(os.path.join(folder, _FILE), _FLAGS, 0o640)
                    try:
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            raise OSError(errno.EINVAL, "not a regular file")
                        end_cut_line(fd)
                        os.write(fd, line)
                    finally:
                        os.close(fd)
                else:
                    self._fs.makedirs(SUPPRESSION, recreate=True)
                    self._fs.appendbytes(f"{SUPPRESSION}/{_FILE}", line)
            except (OSError, pyfs.errors.FSError) as exc:
                raise StorageError(f"cannot write {SUPPRESSION}/{_FILE}: {exc}") from exc
            self._entries[suppression_key(address)] = entry
            self._signature = self._stat()

    def remove(self, address: str) -> bool:
        """Forget ``address``; whether it was on the list (expired entries count as gone)."""
        _one_address(address)
        key = suppression_key(address)
        now = self._clock()
        with self._lock:
            self._load()
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._rewrite(now)
        return now < entry.until(self.keep)

    def prune(self) -> int:
        """Drop the expired entries from the file; how many went."""
        now = self._clock()
        with self._lock:
            self._load()
            gone = [k for k, e in self._entries.items() if now >= e.until(self.keep)]
            if not gone:
                return 0
            for key in gone:
                del self._entries[key]
            self._rewrite(now)
        return len(gone)

    def _rewrite(self, now: datetime) -> None:
        """Write the live entries as the whole file (under the lock), atomically."""
        live = sorted(
            (e for e in self._entries.values() if now < e.until(self.keep)),
            key=lambda e: (e.time, e.address),
        )
        data = "".join(encode_suppressed(e) + "\n" for e in live).encode("utf-8", "surrogateescape")
        temp = f".{secrets.token_hex(8)}.tmp"
        try:
            if self._root is not None:
                folder = os.path.join(self._root, SUPPRESSION)
                os.makedirs(folder, mode=0o750, exist_ok=True)
                path = os.path.join(folder, temp)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.replace(path, os.path.join(folder, _FILE))
                except BaseException:
                    os.unlink(path)
                    raise
            else:
                self._fs.makedirs(SUPPRESSION, recreate=True)
                self._fs.writebytes(f"{SUPPRESSION}/{temp}", data)
                self._fs.move(f"{SUPPRESSION}/{temp}", f"{SUPPRESSION}/{_FILE}", overwrite=True)
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot rewrite {SUPPRESSION}/{_FILE}: {exc}") from exc
        self._signature = self._stat()
