"""Pickup entries: what each one really is, and whether its writer has finished with it.

Pickup is writable by other programs, so every entry in it is hostile until checked
(docs/design.md, "Pickup intake"). This module answers two questions for the store, without ever
following a link or opening anything but a regular file:

1. **What is it?** :func:`inspect_os` takes ``lstat`` facts (never ``stat``): a regular file with
   one link is a message candidate; a symbolic link, FIFO, socket, device or a file with more
   than one link is refused and described (:meth:`EntryFacts.describe`); a directory is left
   alone. :func:`open_regular` opens a regular file as Postfix's ``safe_open`` does:
   ``O_NOFOLLOW | O_NONBLOCK``, then ``fstat`` of the descriptor must show the same regular,
   single-link file, and every later read goes through that descriptor (:class:`CappedReader`
   stops one byte past the size limit, whatever ``st_size`` said).
2. **Is it complete?** Real writers (.NET's ``SmtpClient``, Mono, nodemailer's pickup
   transport, a shell's ``>``) create their file in Pickup and write it in place, so a file is
   taken only once no process has it open for writing (:class:`Readiness`), from the best
   evidence the platform gives:

   - Linux, where the service owns the file or has ``CAP_LEASE``: a read lease
     (``fcntl(F_SETLEASE, F_RDLCK)``) is refused with ``EAGAIN`` while any process has the file
     open for writing. It is taken and dropped at once: a probe, never held.
   - Linux otherwise: inotify (:class:`CloseWatcher`): a file created while the service watches
     is complete after ``IN_CLOSE_WRITE``, or at once when it was renamed in (``IN_MOVED_TO``).
   - Windows: an open that shares reading only, as IIS's own, fails while a writer has the file
     open (:func:`share_probe`; not exercised by the test suite, which runs on Linux).
   - Everywhere else, and for files that were there before the watch began: a settle time
     (size and modification time unchanged for ``settle``, default 2 s).

   A name the store itself renamed into Pickup complete (``Spool.submit``, a BadMail requeue)
   is taken at once on every backend.

Touches only Pickup, through the paths the store hands in; imports no mail code.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import select
import signal
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

import attrs

if sys.platform != "win32":
    # Imported now, not when first used: once the service has dropped root, a Python installed
    # where only root may read (under /root) can import nothing more.
    import fcntl
    import pwd

__all__ = [
    "CappedReader",
    "CloseWatcher",
    "EntryFacts",
    "EntryKind",
    "Readiness",
    "facts_from_stat",
    "lease_probe",
    "open_regular",
    "open_sized",
    "share_probe",
]

log = logging.getLogger("spoolmail")


class EntryKind(enum.Enum):
    """What a directory entry is, by ``lstat``: never by following a link."""

    FILE = "regular file"
    LINKED_FILE = "regular file with more than one hard link"
    SYMLINK = "symbolic link"
    FIFO = "FIFO (named pipe)"
    SOCKET = "socket"
    CHAR_DEVICE = "character device"
    BLOCK_DEVICE = "block device"
    DIRECTORY = "directory"
    OTHER = "special file"

    @property
    def refused(self) -> bool:
        """Whether an entry of this kind is never read (moved aside with a report instead)."""
        return self not in (EntryKind.FILE, EntryKind.DIRECTORY)


@attrs.frozen
class EntryFacts:
    """What ``lstat`` (or a backend's info) says about one entry; enough to judge and report it."""

    kind: EntryKind
    size: int
    mtime: float
    inode: int = 0
    device: int = 0
    links: int = 1
    owner: int | None = None
    target: str | None = None
    """The text of a symbolic link (read with ``readlink``, never followed)."""

    def describe(self) -> str:
        """One line for a BadMail report: type, link text, owner, size."""
        parts = [f"a {self.kind.value}"]
        if self.target is not None:
            parts.append(f"pointing to {self.target!r}")
        if self.kind is EntryKind.LINKED_FILE:
            parts[0] += f" ({self.links} links)"
        if self.owner is not None:
            parts.append(f"owned by {_owner_name(self.owner)}")
        parts.append(f"{self.size} bytes")
        return ", ".join(parts)

    def same_file(self, other: os.stat_result) -> bool:
        return (other.st_ino, other.st_dev) == (self.inode, self.device)


def _owner_name(uid: int) -> str:
    if sys.platform == "win32":
        return f"uid {uid}"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def facts_from_stat(result: os.stat_result, *, target: str | None = None) -> EntryFacts:
    """Classify an ``lstat`` result."""
    mode = result.st_mode
    if stat.S_ISREG(mode):
        kind = EntryKind.FILE if result.st_nlink <= 1 else EntryKind.LINKED_FILE
    elif stat.S_ISLNK(mode):
        kind = EntryKind.SYMLINK
    elif stat.S_ISDIR(mode):
        kind = EntryKind.DIRECTORY
    elif stat.S_ISFIFO(mode):
        kind = EntryKind.FIFO
    elif stat.S_ISSOCK(mode):
        kind = EntryKind.SOCKET
    elif stat.S_ISCHR(mode):
        kind = EntryKind.CHAR_DEVICE
    elif stat.S_ISBLK(mode):
        kind = EntryKind.BLOCK_DEVICE
    else:
        kind = EntryKind.OTHER
    return EntryFacts(
        kind=kind,
        size=result.st_size,
        mtime=result.st_mtime,
        inode=result.st_ino,
        device=result.st_dev,
        links=result.st_nlink,
        owner=getattr(result, "st_uid", None) if os.name == "posix" else None,
        target=target,
    )


def inspect_os(path: str) -> EntryFacts:
    """``lstat`` an OS path; ``FileNotFoundError`` if it is gone."""
    result = os.lstat(path)
    target = None
    if stat.S_ISLNK(result.st_mode):
        try:
            target = os.readlink(path)  # the link's text; the target is never touched
        except OSError:
            target = "?"
    return facts_from_stat(result, target=target)


# O_NOFOLLOW: a symbolic link is refused (ELOOP) instead of followed. O_NONBLOCK: a FIFO swapped
# in opens at once instead of waiting for a writer. O_NOCTTY: a terminal never becomes ours.
_SAFE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class UnsafeEntry(Exception):
    """The entry was not the regular, single-link file it was taken for; what it was instead."""

    def __init__(self, facts: EntryFacts) -> None:
        super().__init__(facts.describe())
        self.facts = facts


def open_regular(path: str, expected: EntryFacts | None = None, *, single_link: bool = True) -> int:
    """See :func:`open_sized`: the descriptor alone."""
    return open_sized(path, expected, single_link=single_link)[0]


def open_sized(
    path: str, expected: EntryFacts | None = None, *, single_link: bool = True
) -> tuple[int, int]:
    """Open a regular file with one link for reading, as Postfix's ``safe_open`` does.

    ``single_link=False`` accepts more links (Drop files a consumer linked elsewhere); links,
    FIFOs and devices are refused all the same.

    Returns the descriptor and the size the open file had. Raises :class:`UnsafeEntry`
    (nothing left open) when the open descriptor is anything else, or not the file
    ``expected`` described (swapped meanwhile); ``FileNotFoundError`` when it is gone.
    """
    try:
        fd = os.open(path, _SAFE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise UnsafeEntry(inspect_os(path)) from None
        raise
    try:
        result = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if (
        expected is None
        and stat.S_ISREG(result.st_mode)
        and (result.st_nlink <= 1 or not single_link)
    ):
        # The common case (every queued file the service reads): no EntryFacts to build.
        return fd, result.st_size
    facts = facts_from_stat(result)
    allowed = (EntryKind.FILE,) if single_link else (EntryKind.FILE, EntryKind.LINKED_FILE)
    if facts.kind not in allowed or (expected is not None and not expected.same_file(result)):
        os.close(fd)
        raise UnsafeEntry(facts)
    # O_NONBLOCK stays set: it changes nothing for a regular file, whose reads never wait.
    return fd, result.st_size


class CappedReader:
    """Reads a descriptor to its end or one byte past ``limit``, whichever comes first.

    ``/proc`` files report size 0 and never end, a file may grow while it is read: only the bytes
    actually read count. :attr:`over` tells whether the limit was passed.
    """

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self._handle = handle
        self._left = limit + 1
        self.read_bytes = 0

    @property
    def over(self) -> bool:
        return self._left <= 0

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(want)
        self._left -= len(data)
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> CappedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- completeness ---------------------------------------------------------------------------------


def lease_probe(path: str, expected: EntryFacts) -> bool | None:
    """Whether no process has ``path`` open for writing, by a Linux read lease.

    ``True``: nobody writes it (the lease was granted, and dropped at once). ``False``: a writer
    has it open (``EAGAIN``). ``None``: no lease to be had here (not Linux, not the file's owner
    without ``CAP_LEASE``, leases disabled, or the entry changed meanwhile), so other evidence
    must decide.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = open_regular(path, expected)
    except (OSError, UnsafeEntry):
        return None
    try:
        # A lease whose break is signalled would send SIGIO, whose default action ends the
        # process; SIGURG's default is to ignore it. The lease is dropped before anyone could
        # break it, but the signal is chosen so that even then nothing happens.
        fcntl.fcntl(fd, fcntl.F_SETSIG, _QUIET_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return False
        return None  # EACCES/EPERM: neither owner nor CAP_LEASE; EINVAL: no lease support
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


if sys.platform == "win32":
    import _winapi

    def share_probe(path: str) -> bool | None:
        """Whether no process has ``path`` open for writing, on Windows, as IIS itself knew it:
        an open that shares reading only fails with a sharing violation while a writer has it.

        ``None`` when the open fails for another reason (other evidence decides).
        """
        generic_read, share_read, open_existing = 0x80000000, 0x1, 3
        open_reparse_point = 0x00200000  # the link itself, never its target
        sharing_violation = 32
        try:
            handle = _winapi.CreateFile(
                path, generic_read, share_read, 0, open_existing, open_reparse_point, 0
            )
        except OSError as exc:
            return False if getattr(exc, "winerror", None) == sharing_violation else None
        _winapi.CloseHandle(handle)
        return True

else:

    def share_probe(path: str) -> bool | None:
        """Windows only: elsewhere there is no share mode to ask (``None``)."""
        return None


# SIGURG's default disposition is to ignore it (signal(7)).
_QUIET_SIGNAL = getattr(signal, "SIGURG", 0)

# inotify(7) event bits.
_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_WATCHED = (
    _IN_MODIFY
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")
# Names the watcher remembers at most: a writer creating millions of files cannot grow memory
# without bound; past this, what is forgotten falls back to the settle time.
_MAX_TRACKED = 100_000


class WriteState(enum.Enum):
    OPEN = "open"
    """Created (or written again) while watched, not yet closed after writing."""
    CLOSED = "closed"
    """Closed after writing, or renamed in: complete."""


def is_candidate(name: str) -> bool:
    """Whether a Pickup name may be a message: writers hide work in progress under a name
    starting with ``.`` or ending in ``.tmp`` (docs/formats.md), which is never taken."""
    return not name.startswith(".") and not name.lower().endswith(".tmp")


class CloseWatcher:
    """inotify on one folder, read without blocking whenever :meth:`state` is asked.

    No thread: the events queue in the kernel between two ticks and are drained at the next.
    A queue overflow forgets everything (those files fall back to the settle time).
    """

    def __init__(self, fd: int, watch: int) -> None:
        self._fd = fd
        self._watch = watch
        self._states: dict[str, WriteState] = {}
        self._events = 0
        self.alive = True

    @classmethod
    def start(cls, folder: str) -> CloseWatcher | None:
        """Watch ``folder``; ``None`` where inotify is not to be had (not Linux, limits)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            # libc is among the process's own symbols: no search for it (ldconfig).
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return None
            watch = libc.inotify_add_watch(fd, os.fsencode(folder), _WATCHED)
        except (OSError, AttributeError):
            return None
        if watch < 0:
            os.close(fd)
            return None
        return cls(fd, watch)

    def state(self, name: str) -> WriteState | None:
        """What the events say of ``name``; ``None`` if it was not seen being created."""
        self._drain()
        return self._states.get(name)

    def events(self) -> int:
        """How many events the folder has had since the watch began (those the kernel holds
        now included): while it stays the same, no entry came, went, or was written."""
        self._drain()
        return self._events

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._states.pop(name, None)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.alive = False

    def wait(self, timeout: float, *, wake: int | None = None) -> bool:
        """Block up to ``timeout`` seconds for a file in the folder to be complete: closed after
        writing or renamed in (or ``wake`` to be readable). Whether that happened.

        Creations and writes alone do not end the wait (a writer's thousand ``write`` calls are
        not a thousand ticks); what they say is kept for :meth:`state` as usual.
        """
        deadline = time.monotonic() + timeout
        while self._fd >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            watched = [self._fd] if wake is None else [self._fd, wake]
            try:
                readable, _, _ = select.select(watched, [], [], left)
            except (OSError, ValueError):
                return False  # closed under us: the caller polls instead
            if wake is not None and wake in readable:
                return True
            if readable and self._drain():
                return True
        return False

    def _drain(self) -> bool:
        """Apply the events waiting in the kernel; whether any file became complete."""
        complete = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                break
            complete |= self._apply(data)
        return complete

    def _apply(self, data: bytes) -> bool:
        complete = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            self._events += 1
            raw = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            name = os.fsdecode(raw)
            if mask & _IN_Q_OVERFLOW:
                self._states.clear()
                complete = True  # something happened; the listing will tell what
            elif mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
                self._states.clear()
                self.close()
                return True
            elif not name:
                continue
            elif mask & (_IN_DELETE | _IN_MOVED_FROM):
                self._states.pop(name, None)
            elif mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO):
                self._set(name, WriteState.CLOSED)
                complete = complete or is_candidate(name)
            elif mask & (_IN_CREATE | _IN_MODIFY):
                self._set(name, WriteState.OPEN)
        return complete

    def _set(self, name: str, value: WriteState) -> None:
        if name not in self._states and len(self._states) >= _MAX_TRACKED:
            return
        self._states[name] = value


@attrs.define
class _Seen:
    facts: EntryFacts
    since: float
    busy_since: float | None = None
    warned: bool = False


@attrs.define
class Readiness:
    """Decides, tick by tick, which regular Pickup files are complete (see the module's text).

    ``settle``: seconds a file's size and modification time must stay unchanged where nothing
    better tells. ``open_warning``: a file still being written after this long is logged, once.
    ``now``: a monotonic clock in seconds (real time: writers and file times are real).
    """

    settle: float = 2.0
    open_warning: float = 3600.0
    now: Callable[[], float] = time.monotonic
    watcher: CloseWatcher | None = None
    _seen: dict[str, _Seen] = attrs.Factory(dict)
    _complete: set[str] = attrs.Factory(set)

    def written_complete(self, name: str) -> None:
        """The store renamed ``name`` into Pickup itself, complete: take it at once."""
        self._complete.add(name)

    def ready(self, name: str, facts: EntryFacts, *, path: str | None) -> bool:
        """Whether ``name`` (a regular, single-link file) may be claimed now."""
        if name in self._complete:
            return True
        verdict = None
        if path is not None:
            verdict = lease_probe(path, facts)
            if verdict is None:
                verdict = share_probe(path)
        if verdict is None and self.watcher is not None and self.watcher.alive:
            state = self.watcher.state(name)
            verdict = None if state is None else state is WriteState.CLOSED
        if verdict is None:
            verdict = self._settled(name, facts)
        if not verdict:
            self._note_busy(name, facts)
        return verdict

    def linked_long_enough(self, name: str, facts: EntryFacts) -> bool:
        """Whether a file with more than one link has kept them for ``settle`` seconds (by our
        own watch, not the file's time): only then is it refused.

        Writers that link a finished file in and then unlink their own name (the maildir idiom)
        pass through two links for a moment; refusing then would unlink the one name the message
        is about to have left.
        """
        now = self.now()
        seen = self._seen.get(name)
        if seen is None or not _unchanged(seen.facts, facts):
            self._seen[name] = _Seen(facts, now)
            return self.settle <= 0
        return now - seen.since >= self.settle

    def _settled(self, name: str, facts: EntryFacts) -> bool:
        now = self.now()
        seen = self._seen.get(name)
        if seen is None or not _unchanged(seen.facts, facts):
            seen = self._seen[name] = _Seen(facts, now, seen.busy_since if seen else None)
        # Unchanged for ``settle`` by our watch, or last written ``settle`` ago by the file's own
        # time (so that files found at start-up, long finished, are taken at once).
        return now - seen.since >= self.settle or time.time() - facts.mtime >= self.settle

    def _note_busy(self, name: str, facts: EntryFacts) -> None:
        now = self.now()
        seen = self._seen.setdefault(name, _Seen(facts, now))
        if seen.busy_since is None:
            seen.busy_since = now
        elif not seen.warned and now - seen.busy_since >= self.open_warning:
            seen.warned = True
            log.warning(
                "Pickup/%s has been open for writing for %d minutes; it is left until its writer "
                "closes it",
                name,
                (now - seen.busy_since) // 60,
            )

    def claimed(self, name: str) -> None:
        self._seen.pop(name, None)
        self._complete.discard(name)
        if self.watcher is not None:
            self.watcher.forget([name])

    def prune(self, present: set[str]) -> None:
        """Forget names no longer in Pickup (memory stays bounded by the folder's size)."""
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
        self._complete &= present

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


def _unchanged(before: EntryFacts, after: EntryFacts) -> bool:
    return (before.size, before.mtime, before.inode, before.links) == (
        after.size,
        after.mtime,
        after.inode,
        after.links,
    )
