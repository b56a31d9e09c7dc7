"""Writing a complete file into Pickup with no more than the right to create files there.

The way in for programs that are not the service: :class:`spoolmail.Pickup`, the Django backend
and the ``sendmail`` command. IIS gave applications the Pickup folder and nothing else, and
docs/running-as-a-service.md does the same (MailRoot ``0710``, SortTemp ``0700``, Pickup ``3730``:
the senders' group may create files but not list them), so nothing here lists the MailRoot,
creates a folder or touches SortTemp. A :class:`PickupFile` is made under a hidden name in
Pickup itself (``.ID.spoolmail.tmp``, never taken by intake: docs/formats.md) with ``O_EXCL``,
mode 0640 whatever the umask (the service reads it through the setgid Pickup's group), written,
fsync'd, renamed to ``ID.eml`` (a new queue id, which the Queue keeps) and the rename made
durable: the folder fsync'd, or where this user may not open the folder (write-only Pickup),
the filesystem synced. Readers of Pickup see the whole file or nothing; a failure before the
commit leaves nothing; a failed sync after the rename takes the file back out unless the
service has it already, so a failure means nothing was sent.

A writer killed mid-file leaves its hidden file; the service's sweep removes those older than a
day (:func:`is_stale_temp`), and no other hidden file in Pickup: they belong to other writers.
OS paths only (an in-memory MailRoot has no other process to write into it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from spoolmail._core.ids import QueueIds
from spoolmail._store.folders import PICKUP
from spoolmail._store.syncing import sync_file_system
from spoolmail.exceptions import ConfigurationError, MessageError, StorageError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["STALE_AFTER", "PickupFile", "PickupWriter", "TooLarge", "is_stale_temp"]

_TEMP = re.compile(r"^\.([0-9a-f]{11}-[0-9a-f]{16})\.spoolmail\.tmp\Z")
# A writer does not take a day over one file; one that did was killed.
STALE_AFTER = 24 * 3600.0


class TooLarge(MessageError):
    """The message grew past the limit while written; nothing was left in Pickup."""


def is_stale_temp(name: str, mtime: float, now: float) -> bool:
    """Whether ``name`` in Pickup is a :class:`PickupFile` temporary file left over a day ago."""
    return bool(_TEMP.match(name)) and now - mtime > STALE_AFTER


def pickup_folder(root: str | os.PathLike[str]) -> Path:
    """``root/Pickup``, found without listing ``root`` (the writer may not have that right):
    the exact name first, then IIS's and the usual other spellings."""
    # Imported here: PickupFile's user spoolmail-sendmail, started once a message, has no
    # need of pathlib (pathlib and the urllib.parse it imports are ~2 ms of its start-up).
    from pathlib import Path  # noqa: PLC0415

    base = Path(root)
    for name in (PICKUP, "PickUp", "pickup", "PICKUP"):
        folder = base / name
        if folder.is_dir():
            return folder
    raise ConfigurationError(
        f"{base} has no Pickup folder (create the MailRoot with `spoolmail init` as the "
        "service's user, and check that this user may enter it)"
    )


def _failed(exc: OSError, doing: str) -> StorageError:
    """A ``StorageError`` saying what failed; temporary for a full disk (try again later)."""
    error = StorageError(f"{doing}: {exc.strerror or exc}")
    error.temporary = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return error


class PickupFile:
    """One message file made in Pickup, whole or not at all (see the module's text).

    ``with PickupFile(folder, queue_id) as file: file.write(...); file.commit()``; leaving the
    block without :meth:`commit` removes the file. :meth:`write` raises :class:`TooLarge` past
    ``limit`` bytes; every OS error is a :class:`~spoolmail.exceptions.StorageError` whose
    ``__cause__`` is the ``OSError`` (its ``errno`` tells a full disk from a refusal).
    """

    def __init__(self, folder: str | os.PathLike[str], queue_id: str, *, limit: int) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, f"{queue_id}.eml")
        self.temp = os.path.join(self.folder, f".{queue_id}.spoolmail.tmp")
        self.limit = limit
        self.size = 0
        self.committed = False
        self._fd = -1

    def __enter__(self) -> Self:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.temp, flags, 0o640)
        except OSError as exc:
            raise _failed(exc, f"cannot create a file in {self.folder}") from exc
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(self._fd, 0o640)  # whatever the umask: the service reads by group
        except OSError as exc:
            self._discard()
            raise _failed(exc, f"cannot set the mode of {self.temp}") from exc
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.committed:
            os.close(self._fd)
        else:
            self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.temp)

    def write(self, data: bytes) -> None:
        """Append ``data``; :class:`TooLarge` once the file would pass ``limit`` bytes."""
        if self.size + len(data) > self.limit:
            raise TooLarge(f"the message is larger than {self.limit} bytes", status="5.3.4")
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise _failed(exc, f"cannot write {self.temp}") from exc
            view = view[written:]
        self.size += len(data)

    def commit(self, *, sync: bool = True) -> None:
        """Flush the file, rename it into place and make the rename durable (``sync=False``:
        the rename alone, for tests and benchmarks).

        The name is a fresh queue id (the ``O_EXCL`` temp file of that id shows no other writer
        has it), so the rename replaces nothing. Should the sync after it fail, the file is
        taken back out if the service has not taken it yet.
        """
        try:
            if sync:
                os.fsync(self._fd)
            os.rename(self.temp, self.path)
        except OSError as exc:
            raise _failed(exc, f"cannot write {self.temp}") from exc
        self.committed = True
        if not sync:
            return
        try:
            _sync_folder(self.folder, self._fd)
        except OSError as exc:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return  # the service has it already: it is on its way
            except OSError:
                error = _failed(exc, f"cannot sync {self.folder}; {self.path} may or may not last")
                raise error from exc
            raise _failed(exc, f"cannot sync {self.folder}") from exc


def _sync_folder(folder: str, fd: int) -> None:
    """Make a rename in ``folder`` durable: fsync the folder, or, where this user may not open
    it (a write-only Pickup), sync the filesystem of ``fd``."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder cannot be opened to be flushed; NTFS journals the rename
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        sync_file_system(fd)
        return
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


class PickupWriter:
    """Writes whole messages into ``root``'s Pickup folder, each under a new queue id.

    ``PickupWriter("MailRoot").write([b"x-sender: ...", ...])`` returns the queue id the message
    will have in the Queue. ``fsync=False`` skips the syncs (tests, benchmarks).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        ids: QueueIds | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.folder = pickup_folder(root)
        self.fsync = fsync
        self._ids = ids or QueueIds()
        self._clock = clock

    def new_id(self) -> str:
        return self._ids.new(self._clock())

    def write(self, chunks: Iterable[bytes], *, limit: int | None = None) -> str:
        """Write ``chunks`` as one Pickup file; its queue id. At most ``limit`` bytes: past it,
        :class:`TooLarge` and nothing left. A disk error is a ``StorageError``."""
        queue_id = self.new_id()
        with PickupFile(self.folder, queue_id, limit=limit or sys.maxsize) as file:
            for chunk in chunks:
                file.write(chunk)
            file.commit(sync=self.fsync)
        return queue_id
