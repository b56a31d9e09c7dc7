"""Writing a complete file into Pickup with no more than the right to create files there.

The way in for programs that are not the service: ``Spool.submit`` on a folder, the Django
backend and the ``sendmail`` command. IIS gave applications the Pickup folder and nothing else,
and docs/running-as-a-service.md does the same (MailRoot ``0710``, SortTemp ``0700``, Pickup
writable by the applications' group), so nothing here lists the MailRoot, creates a folder or
touches SortTemp: the file is written under a hidden name in Pickup itself
(``.ID.spoolmail.tmp``, which intake never takes: docs/formats.md), flushed and fsync'd, renamed
to ``ID.eml`` (a new queue id, which the Queue keeps) and the folder fsync'd. Readers of Pickup
see the whole file or nothing.

A writer killed mid-file leaves its hidden temporary file; the service's sweep removes those
older than a day (``is_stale_temp``), and no other hidden file in Pickup: they belong to other
writers. Works on OS paths only (an in-memory MailRoot has no other process to write into it).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from spoolmail._core.ids import QueueIds
from spoolmail.exceptions import ConfigurationError, MessageError, StorageError

__all__ = ["PickupWriter", "TooLarge", "is_stale_temp"]

_TEMP = re.compile(r"^\.([0-9a-f]{11}-[0-9a-f]{16})\.spoolmail\.tmp$")
# A writer does not take a day over one file; one that did was killed.
STALE_AFTER = 24 * 3600.0


class TooLarge(MessageError):
    """The message grew past the limit while written; nothing was left in Pickup."""


def is_stale_temp(name: str, mtime: float, now: float) -> bool:
    """Whether ``name`` in Pickup is a :class:`PickupWriter` temporary file left over a day ago."""
    return bool(_TEMP.match(name)) and now - mtime > STALE_AFTER


def _copy(chunks: Iterable[bytes], handle: BinaryIO, limit: int | None) -> None:
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if limit is not None and written > limit:
            raise TooLarge(f"the message is larger than the limit of {limit} bytes", status="5.3.4")
        handle.write(chunk)


def _pickup_folder(root: Path) -> Path:
    """``root/Pickup``, found without listing ``root`` (the writer may not have that right):
    the exact name first, then IIS's and the usual other spellings."""
    for name in ("Pickup", "PickUp", "pickup", "PICKUP"):
        folder = root / name
        if folder.is_dir():
            return folder
    raise ConfigurationError(
        f"{root} has no Pickup folder (create the MailRoot with `spoolmail init`, and check "
        "that this user may enter it)"
    )


class PickupWriter:
    """Writes messages into ``root``'s Pickup folder, each under a new queue id.

    ``PickupWriter("MailRoot").write([b"x-sender: ...", ...])`` returns the queue id the message
    will have in the Queue. ``fsync=False`` skips the two fsyncs (tests, benchmarks).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        ids: QueueIds | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.folder = _pickup_folder(Path(root))
        self.fsync = fsync
        self._ids = ids or QueueIds()
        self._clock = clock

    def write(self, chunks: Iterable[bytes], *, limit: int | None = None) -> str:
        """Write ``chunks`` as one Pickup file; its queue id. At most ``limit`` bytes: past it,
        :class:`TooLarge` and nothing left. A disk error is a temporary ``StorageError``."""
        queue_id = self._ids.new(self._clock())
        temp = self.folder / f".{queue_id}.spoolmail.tmp"
        try:
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            raise StorageError(f"cannot create a file in {self.folder}: {exc}") from exc
        try:
            with os.fdopen(descriptor, "wb") as handle:
                _copy(chunks, handle, limit)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.rename(temp, self.folder / f"{queue_id}.eml")
        except BaseException as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write into {self.folder}: {exc}") from exc
            raise
        if self.fsync:
            self._sync_folder()
        return queue_id

    def _sync_folder(self) -> None:
        try:
            descriptor = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return  # Windows opens no folders; its renames are durable by themselves
        try:
            os.fsync(descriptor)
        except OSError as exc:
            raise StorageError(f"cannot make {self.folder} durable: {exc}") from exc
        finally:
            os.close(descriptor)
