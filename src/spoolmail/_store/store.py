"""The MailRoot store: folders as states, and every change as one atomic commit on them.

This package is the only code that builds MailRoot paths or touches the filesystem (through
PyFilesystem2, imported only via ``pyfs``); this module holds the file protocols. It knows files,
names and renames, not mail: which commit a transition makes is the state table's
(``_core.states``), performed by ``transitions``; ``recovery`` completes what a crash cut short;
``backend`` says what the filesystem guarantees. A folder is a state: :data:`STATE_FOLDERS` and
:func:`message_file` are the one mapping from state to place.

Rules (docs/design.md#crash-safety):

1. Every file is written in ``SortTemp/`` under a unique name, flushed and fsync'd, renamed into
   place, and then its directory is fsync'd (:meth:`MailStore.write`). On filesystems without OS
   paths (MemoryFS, plugins) there is nothing to fsync; the rename is still the commit.
   Intake's batches (``commit_queued(sync=False)``, then :meth:`MailStore.sync_queued`) are
   written first, made durable with one syncfs where Linux has it, then renamed.
2. The envelope is committed last: ``Queue/ID.eml`` first, then ``Queue/ID.env``. An ``.eml``
   without an envelope is an interrupted commit, never a queued message.
3. Claims are renames, so exactly one process wins: a Pickup file is claimed by renaming it into
   ``SortTemp/ID.OWNER.NAME.pickup``; a queued message by renaming ``Queue/ID.env`` to
   ``Queue/ID.OWNER.env``. A claim names its owner; an owner announces itself in
   ``SortTemp/OWNER.owner`` (host, process id, lease). Claims of a dead owner (its process gone
   from this host, or its lease expired) are taken over by renaming them to the new owner, again
   a rename that only one process wins.
4. Nothing is deleted that is not done: a finished message loses its ``.eml`` and transcripts
   first and its envelope last, so an envelope without a message is a finish that a crash cut short.

File names: ``Queue/ID.eml`` (message), ``Queue/ID.env`` (envelope), ``Queue/ID.OWNER.env``
(envelope being delivered), ``Queue/ID.RTR`` / ``ID.LTR`` (transcripts), ``BadMail/ID.BAD`` /
``.BDR`` / ``.BDP``, ``Drop/ID.eml``; ``SortTemp/OWNER.TOKEN.tmp`` (files being written).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import io
import json
import logging
import os
import platform
import re
import select
import shutil
import stat
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import attrs

from spoolmail._core.choices import member_named
from spoolmail._core.ids import QueueIds, is_made_id, is_queue_id
from spoolmail._core.shares import WHOLE, Share
from spoolmail._core.states import State
from spoolmail._store import pyfs
from spoolmail._store.backend import Guarantee, backend_of, single_process_rule
from spoolmail._store.entries import (
    CappedReader,
    CloseWatcher,
    EntryFacts,
    EntryKind,
    Readiness,
    UnsafeEntry,
    inspect_os,
    is_candidate,
    open_regular,
    open_sized,
)
from spoolmail._store.folders import BADMAIL, DROP, FOLDERS, PICKUP, QUEUE, SORTTEMP
from spoolmail._store.orders import FLUSH_TRIGGER, TRIGGER_SUFFIX, flush_order
from spoolmail._store.pickup_writer import is_stale_temp
from spoolmail._store.syncing import syncfs
from spoolmail.exceptions import ConfigurationError, LayoutError, StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: held() takes the store's lock instead
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import socket

    from _typeshed import WriteableBuffer

__all__ = [
    "STATE_FOLDERS",
    "Durability",
    "EntryFacts",
    "EntryKind",
    "FlushOrder",
    "MailStore",
    "PickupClaim",
    "QueueFiles",
    "TriggerWatch",
    "Triggers",
    "durability_of",
    "envelope_file",
    "message_file",
    "report_file",
    "trigger_event",
]

log = logging.getLogger("spoolmail")

#: A folder is a state: the one mapping from message state to folder.
STATE_FOLDERS = {
    State.PICKUP: PICKUP,
    State.QUEUED: QUEUE,
    State.DELIVERING: QUEUE,
    State.BADMAIL: BADMAIL,
}

#: What a message file is called in each folder that holds one (IIS's names: ``.BAD`` in BadMail).
_MESSAGE_KINDS = {PICKUP: "eml", QUEUE: "eml", BADMAIL: "BAD"}
#: ... and its envelope (``.BDP`` in BadMail: ours is the same format as ``.env``).
_ENVELOPE_KINDS = {QUEUE: "env", BADMAIL: "BDP"}


def message_file(state: State, queue_id: str) -> tuple[str, str]:
    """Where the message of ``queue_id`` is while in ``state``: (folder, name)."""
    folder = STATE_FOLDERS[state]
    return folder, f"{queue_id}.{_MESSAGE_KINDS[folder]}"


def envelope_file(state: State, queue_id: str) -> tuple[str, str]:
    """Where the envelope of ``queue_id`` is while in ``state`` (QUEUED or BADMAIL)."""
    folder = STATE_FOLDERS[state]
    return folder, f"{queue_id}.{_ENVELOPE_KINDS[folder]}"


def report_file(queue_id: str) -> tuple[str, str]:
    """Where the BadMail report of ``queue_id`` is (``.BDR``)."""
    return BADMAIL, f"{queue_id}.BDR"


CHUNK = 128 * 1024
# Where a queue id is in use: a Pickup file named after one must not take it over.
_ID_USES = ((QUEUE, "eml"), (QUEUE, "env"), (BADMAIL, "BAD"), (BADMAIL, "BDR"), (DROP, "eml"))
# PyFilesystem2's ResourceType values (fs.enums) as entry kinds.
_BACKEND_KINDS = {
    1: EntryKind.DIRECTORY,
    2: EntryKind.FILE,
    3: EntryKind.CHAR_DEVICE,
    4: EntryKind.BLOCK_DEVICE,
    5: EntryKind.FIFO,
    6: EntryKind.SOCKET,
    7: EntryKind.SYMLINK,
}
_CLAIM_SUFFIX = ".pickup"
# How long a wait woken by other renames into SortTemp leaves SortTemp unread (wait_for_pickup).
_QUIET = 0.05
# How a temp file is opened to be written: created (never an existing name), or a spare.
_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
_REWRITE = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_REWRITE |= getattr(os, "O_NOFOLLOW", 0)  # a spare is ours: never a link followed out
# Chunks smaller than this are gathered into one write (a buffered file's 8 KiB would split a
# Queue file's message into more writes than the chunks it is handed).
_WRITE_BUFFER = 64 * 1024
_ADDRESSED = re.compile(r"w([0-9]{1,4})of([0-9]{1,4})")  # a trigger for one worker
# inotify, for the trigger watch (as entries.CloseWatcher uses it for Pickup).
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
_EVENTS_READ = 64 * 1024
_TRIGGER_NAME = TRIGGER_SUFFIX.encode()
_TRIGGER_NAME_END = _TRIGGER_NAME + b"\0"
_OWNER_SUFFIX = ".owner"
# How far ahead of this host's clock another host's owner record may be dated (owner_alive).
_OWNER_CLOCK_AHEAD = timedelta(days=1)
_TMP_SUFFIX = ".tmp"
# The temporary file of a first owner record is named after its writer (OWNER.announce.HOST.PID
# .tmp): a process killed before its record is in place has no record, and only the name can
# tell the next sweep that its writer is gone.
_ANNOUNCE = "announce"
# Finished Queue files kept in SortTemp to be written over as the next temp files (see recycle).
_SPARES = 64
# How many of the oldest spares are looked at for one no longer than what is to be written.
_SPARES_LOOKED_AT = 16
# A spare's name as another process passes it (exchange_spares): a temp file's, nothing more.
_PASSED_SPARE = re.compile(r"[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}\.tmp")
_SPARE_SIZE = 256 * 1024
# The longest trigger read: an order of two million ids. A longer one (planted) is a damaged
# order, read as "look at the whole Queue", never held in memory.
_MAX_TRIGGER = 64 * 1024 * 1024
# The largest envelope read. Ten thousand recipients (Pickup's limit), each with a reply kept
# to 2,048 characters, make some 26 MiB; a larger file was planted or damaged, and is not read
# into memory (a permanent StorageError: the attempt moves the message to BadMail).
MAX_ENVELOPE = 128 * 1024 * 1024
# A claim's file name must stay under common 255-byte name limits.
_MAX_QUOTED_NAME = 180


class Durability(enum.Enum):
    """How hard a commit is pushed to the disk."""

    FSYNC = "fsync"
    """Flush and fsync every file and directory change (OS filesystems): survives power loss."""
    NONE = "none"
    """Renames only: survives a crashed process, not a crashed machine. For tests and benchmarks."""


def durability_of(value: object) -> Durability:
    """``value`` as a :class:`Durability`: the member, or its name (``"fsync"``); anything else
    a ConfigurationError. A string kept as it is would compare unequal to ``Durability.FSYNC``
    everywhere, and nothing would be fsync'd (see ``_core.choices``)."""
    return member_named(Durability, value, "durability")


@attrs.frozen
class PickupClaim:
    """A Pickup file renamed into SortTemp by ``owner`` under queue id ``id``."""

    id: str
    owner: str
    name: str

    @property
    def file(self) -> str:
        quoted = urllib.parse.quote(self.name, safe="")
        if len(quoted) > _MAX_QUOTED_NAME:
            cut = quoted[:_MAX_QUOTED_NAME]
            cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut
            quoted = cut + "~"
        return f"{self.id}.{self.owner}.{quoted}{_CLAIM_SUFFIX}"

    @classmethod
    def from_file(cls, file: str) -> PickupClaim | None:
        if not file.endswith(_CLAIM_SUFFIX):
            return None
        parts = file[: -len(_CLAIM_SUFFIX)].split(".", 2)
        if len(parts) != 3 or not is_queue_id(parts[0]):
            return None
        return cls(parts[0], parts[1], urllib.parse.unquote(parts[2]))


@attrs.frozen
class QueueFiles:
    """What the Queue folder holds for one id."""

    id: str
    message: bool = False
    envelope: bool = False
    claims: tuple[str, ...] = ()
    transcripts: tuple[str, ...] = ()


@attrs.frozen
class FlushOrder:
    """A flush asked of a service in memory (``MailStore.write_flush_trigger``): the waiting
    messages from ``sender`` with a pending recipient at ``domain`` (``None``: any), or only
    ``ids`` when given."""

    sender: str | None = None
    domain: str | None = None
    ids: frozenset[str] | None = None
    # When the order was written (its file's mtime, time.time_ns()'s scale); None where there
    # is no OS file to look at. Not part of what the order asks.
    issued: int | None = attrs.field(default=None, eq=False)

    @classmethod
    def of(cls, data: object, *, issued: int | None = None) -> FlushOrder:
        if not isinstance(data, dict):
            return cls(issued=issued)  # unreadable: flushing everything is the harmless reading
        sender, domain, ids = data.get("sender"), data.get("domain"), data.get("ids")
        return cls(
            sender if isinstance(sender, str) else None,
            domain if isinstance(domain, str) else None,
            frozenset(i for i in ids if isinstance(i, str) and is_queue_id(i))
            if isinstance(ids, list)
            else None,
            issued=issued,
        )

    @property
    def everything(self) -> bool:
        return self.sender is None and self.domain is None and self.ids is None


@attrs.frozen
class Triggers:
    """What the triggers asked: ids to look at again (``None``: the whole Queue), flushes."""

    ids: set[str] | None
    flushes: tuple[FlushOrder, ...] = ()


class TriggerWatch:
    """inotify on SortTemp for names renamed in, joined with the service's wake socket in one
    epoll descriptor that the Pickup watcher's wait can take as its ``wake``.

    Claims and recycled files are renamed into SortTemp too: :meth:`arrived` reads the names
    and says whether a trigger was among them. ``pending`` stays true from then until
    :meth:`MailStore.take_triggers` lists SortTemp: while it is false, no trigger came since the
    last listing, and a tick need not list SortTemp (a hundred names: spares and claims)."""

    def __init__(self, fd: int, poll: select.epoll) -> None:
        self._fd = fd
        self._poll = poll
        self._wake: int | None = None
        # True at first: what was renamed in before the watch began is found by a listing.
        self.pending = True

    @classmethod
    def start(cls, folder: str) -> TriggerWatch | None:
        if not sys.platform.startswith("linux") or not hasattr(select, "epoll"):
            return None
        try:
            # libc is among the process's own symbols: no search for it (ldconfig).
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_MOVED_TO) < 0:
                os.close(fd)
                return None
            poll = select.epoll()
            poll.register(fd, select.EPOLLIN)
        except (OSError, AttributeError):
            return None
        return cls(fd, poll)

    def fileno(self) -> int:
        return self._poll.fileno()

    def listen(self, wake: int) -> None:
        """Let ``wake`` (the service's socket) end a wait on :meth:`fileno` too. Registered
        again at every wait: a closed socket leaves the epoll set, and a new one may get the
        same number."""
        if self._wake is not None and wake != self._wake:
            with contextlib.suppress(OSError, ValueError):
                self._poll.unregister(self._wake)
        self._wake = wake
        with contextlib.suppress(FileExistsError):
            self._poll.register(wake, select.EPOLLIN)

    def ready(self) -> bool:
        """Whether the inotify descriptor or the wake socket is readable now."""
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return False

    def arrived(self) -> bool:
        """Drain the events; whether a trigger was renamed in (or events were lost)."""
        found = False
        exact = False
        while True:
            try:
                data = os.read(self._fd, _EVENTS_READ)
            except BlockingIOError:
                self.pending |= found
                return found
            except OSError:
                self.pending = True
                return True
            # Events were lost only with the kernel's queue full (16,384 events by default),
            # so a read that fills the buffer, and every one after it, is read event by event.
            exact = exact or len(data) > _EVENTS_READ - _EVENT.size - 256
            found |= trigger_event(data, exact=exact)

    def close(self) -> None:
        self._poll.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def trigger_event(data: bytes, *, exact: bool) -> bool:
    """Whether inotify ``data`` (whole events) names a trigger, or says events were lost.

    Spares and claims are renamed into SortTemp several times a message and every worker
    watches it: the usual look is one search of the bytes for a name that ends in the
    trigger suffix (a name is followed by at least one NUL), not a loop over the events. A
    match in an event's binary header only costs a look at SortTemp. ``exact`` reads event by
    event, which also finds the overflow event (no name)."""
    if not exact:
        return _TRIGGER_NAME_END in data
    offset = 0
    while offset + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        if mask & _IN_Q_OVERFLOW or name.endswith(_TRIGGER_NAME):
            return True
    return False


def _trigger_address(name: str) -> Share | None:
    """The worker a trigger is addressed to (``OWNER.TOKEN.wINDEXofCOUNT.trigger``), if any."""
    parts = name.split(".")
    found = _ADDRESSED.fullmatch(parts[2]) if len(parts) == 4 else None
    if found is None or int(found[1]) >= int(found[2]):
        return None
    return Share(int(found[1]), int(found[2]))


class MailStore:
    """The MailRoot on one PyFilesystem2 filesystem, with atomic commits and owner-named claims."""

    def __init__(
        self,
        filesystem: pyfs.FS,
        *,
        durability: Durability,
        clock: Callable[[], datetime],
        ids: QueueIds,
        lease: timedelta = timedelta(minutes=10),
    ) -> None:
        self.fs = filesystem
        self.durability = durability_of(durability)
        self.clock = clock
        self.ids = ids
        self.lease = lease
        self.owner = ids.token()
        # The part of the mail this process takes (a worker of several on the MailRoot, see
        # _core.shares): its Pickup files, and the ids it makes. A service sets it.
        self.share: Share = WHOLE
        self._ids_lock = threading.Lock()
        # Each spare's name and size, oldest first. A write takes the oldest that is no longer
        # than what it writes, among the oldest few (_take_spare), else the oldest: files freed
        # in pairs (a message, its envelope) are written over in pairs of the same kinds, and a
        # spare no longer than what goes into it needs no truncation.
        self._spares: collections.deque[tuple[str, int]] = collections.deque()
        # Spares passed between processes (_service.handoff, set by exchange_spares): a worker
        # that delivers what others accepted passes its surplus on to those, which write them.
        self._pass_spare: Callable[[str], bool] | None = None
        self._spare_inbox: socket.socket | None = None
        self._debris: set[str] = set()  # temp files a failing disk would not let us delete
        self.disk_free: Callable[[str], int] = _disk_free  # see free_space; tests replace it
        self._spares_lock = threading.Lock()
        self._held_lock = threading.Lock()  # held() where there is no flock
        # Admissions written for sync_queued, per thread (intake stages and commits a batch).
        self._staged = threading.local()
        self._announced: datetime | None = None
        self._host = platform.node()
        self._names = self._find_folders()
        try:
            for folder in FOLDERS:
                self.fs.makedirs(self._names[folder], recreate=True)
        except pyfs.errors.FSError as exc:
            raise StorageError(f"cannot create the MailRoot folders: {exc}") from exc
        self._os_root = self._sys_root()
        self._syncfs = syncfs() if self._os_root is not None else None
        self._folders = (
            {folder: os.path.join(self._os_root, self._names[folder]) for folder in FOLDERS}
            if self._os_root is not None
            else {}
        )
        self._check_layout()
        #: What the filesystem guarantees (``_store.backend``): the rule the store runs under.
        self.backend = backend_of(self.fs, os_paths=self._os_root is not None)
        self._said_links = False
        if Guarantee.ATOMIC_RENAME not in self.backend.guarantees:
            log.warning(
                "the MailRoot is on %s, which has no atomic rename: spoolmail runs it under the "
                "single-process rule and refuses to claim while another process works on it",
                self.backend,
            )
        # The inotify watch starts with the first look at Pickup for intake (a service), not
        # for every command that only lists or reads the spool.
        self.readiness = Readiness()
        self._reported_dirs: set[str] = set()
        # The Pickup watcher's event count when a look found nothing of this share in Pickup:
        # until another event, the next look need not list it (pickup_ready_in_turn).
        self._pickup_empty_at: int | None = None
        # A running service's watch on SortTemp for triggers (see wait_for_pickup).
        self._trigger_watch: TriggerWatch | None = None
        self._no_trigger_watch = False
        self._planted_triggers: set[str] = set()  # said once each (see _planted_trigger)

    # -- paths and low-level operations -------------------------------------------------------

    def _find_folders(self) -> dict[str, str]:
        """The name each MailRoot folder has on this filesystem, found whatever its case.

        IIS created ``Badmail`` (and Windows ignores case): a MailRoot copied from Windows keeps
        its names, and a second ``BadMail`` beside an existing ``Badmail`` would split it in two.
        Where two spellings exist (a case-sensitive filesystem), the exact one wins.
        """
        try:
            existing = [name for name in self.fs.listdir("/") if self.fs.isdir(name)]
        except pyfs.errors.FSError as exc:
            raise StorageError(f"cannot list the MailRoot: {exc}") from exc
        names = {}
        for folder in FOLDERS:
            spellings = sorted(n for n in existing if n.casefold() == folder.casefold())
            names[folder] = folder if folder in spellings or not spellings else spellings[0]
            if len(spellings) > 1:
                log.warning(
                    "the MailRoot has %s; spoolmail uses %s and leaves the others alone",
                    " and ".join(spellings),
                    names[folder],
                )
        return names

    def _path(self, folder: str, name: str = "") -> str:
        """The PyFilesystem2 path of a folder or a file in it."""
        return f"{self._names[folder]}/{name}" if name else self._names[folder]

    def _sys_root(self) -> str | None:
        if not self.fs.hassyspath(self._path(QUEUE)):
            return None
        return os.path.dirname(self.fs.getsyspath(self._path(QUEUE)).rstrip(os.sep))

    def _sys(self, folder: str, name: str = "") -> str:
        """The OS path of a folder or a file in it (only on OS filesystems; the hot path)."""
        return f"{self._folders[folder]}{os.sep}{name}" if name else self._folders[folder]

    def _check_layout(self) -> None:
        """Refuse folders on different devices: a rename between them would be a silent copy."""
        if self._os_root is None:
            return
        devices = {folder: os.stat(self._sys(folder)).st_dev for folder in FOLDERS}
        if len(set(devices.values())) > 1:
            detail = ", ".join(f"{folder} on device {dev}" for folder, dev in devices.items())
            raise LayoutError(
                "the MailRoot folders must be on one filesystem so that moving a message is an "
                f"atomic rename ({detail})"
            )

    def free_space(self) -> int | None:
        """Bytes free for unprivileged writers on the MailRoot's filesystem, or ``None`` where
        there is no such figure (filesystems without OS paths: MemoryFS, plugins) or it cannot
        be had. What Postfix compares with ``queue_minfree`` (``statvfs``'s ``f_bavail``)."""
        if self._os_root is None:
            return None
        try:
            return self.disk_free(self._os_root)
        except OSError as exc:
            log.debug("cannot measure the free space of %s: %s", self._os_root, exc)
            return None

    def listdir(self, folder: str) -> list[str]:
        try:
            if self._os_root is not None:
                return os.listdir(self._sys(folder))
            return list(self.fs.listdir(self._path(folder)))
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot list {folder}: {exc}") from exc

    def exists(self, folder: str, name: str) -> bool:
        if self._os_root is not None:
            return os.path.lexists(self._sys(folder, name))
        return bool(self.fs.exists(self._path(folder, name)))

    @contextlib.contextmanager
    def held(self, folder: str, name: str) -> Iterator[None]:
        """Hold ``folder/name`` for this process alone while the block runs, for a change
        that reads it and then writes elsewhere (a BadMail entry queued again).

        On OS paths, an exclusive ``flock`` on the open file: the kernel drops it when the
        process ends, however it ends, so nothing is ever left to recover. A
        :class:`StorageError` (temporary) when another process holds it now;
        ``FileNotFoundError`` when it is not there, or is no longer there once held (another
        process finished with it first). Elsewhere (and where there is no ``flock``) a lock
        of this store's, which serves the single process such filesystems allow.
        """
        if self._os_root is None or fcntl is None:
            with self._held_lock:
                if not self.exists(folder, name):
                    raise FileNotFoundError(f"{folder}/{name}")
                yield
            return
        path = self._sys(folder, name)
        try:
            fd = open_regular(path, single_link=False)
        except UnsafeEntry as exc:
            raise _unsafe(folder, name, exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(
                    f"{folder}/{name} is being changed by another process; try again in a moment"
                ) from None
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise FileNotFoundError(f"{folder}/{name}")
            yield
        finally:
            os.close(fd)

    def isfile(self, folder: str, name: str) -> bool:
        """Whether ``name`` is a regular file (a link to one is not: links are never followed)."""
        if self._os_root is not None:
            try:
                return stat.S_ISREG(os.lstat(self._sys(folder, name)).st_mode)
            except OSError:
                return False
        return bool(self.fs.isfile(self._path(folder, name)))

    def size(self, folder: str, name: str) -> int:
        """A file's size (a link's own); ``FileNotFoundError`` if it is not there, as
        :meth:`open` says it."""
        try:
            if self._os_root is not None:
                return os.lstat(self._sys(folder, name)).st_size
            return int(self.fs.getsize(self._path(folder, name)))
        except FileNotFoundError:
            raise
        except pyfs.errors.ResourceNotFound as exc:
            raise FileNotFoundError(f"{folder}/{name}") from exc
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot stat {folder}/{name}: {exc}") from exc

    def open(self, folder: str, name: str, *, single_link: bool = False) -> BinaryIO:
        """Open a regular file for reading; ``FileNotFoundError`` if it is not there.

        In every folder, a symbolic link is never followed and a FIFO or device never opened
        (a :class:`StorageError` says what it is instead): the MailRoot may hold what someone
        put there behind spoolmail's back, and reading must not leave it or block.
        ``single_link`` refuses a file with more links too, as Pickup's are refused.
        """
        try:
            if self._os_root is not None:
                # Unbuffered: every reader asks for whole chunks, and a buffered file would
                # cost an isatty ioctl and an lseek at each open (twice a delivered message).
                fd, size = open_sized(self._sys(folder, name), single_link=single_link)
                stored = _StoredFile(fd, size)
                return cast("BinaryIO", stored)
            return self.fs.openbin(self._path(folder, name), "r")
        except pyfs.errors.ResourceNotFound as exc:
            raise FileNotFoundError(f"{folder}/{name}") from exc
        except FileNotFoundError:
            raise
        except UnsafeEntry as exc:
            raise _unsafe(folder, name, exc) from None
        except pyfs.errors.FileExpected:
            # Permanent, as on OS paths (_unsafe): trying again will not make it a file.
            raise StorageError(
                f"{folder}/{name} is a directory; spoolmail reads only regular files",
                temporary=False,
            ) from None
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot open {folder}/{name}: {exc}") from exc

    def read(self, folder: str, name: str, *, limit: int | None = None) -> bytes:
        """A file's bytes; over ``limit`` (when given) a permanent :class:`StorageError`,
        without reading it."""
        if self._os_root is None:
            if limit is None:
                with self.open(folder, name) as handle:
                    return b"".join(chunks(handle))
            data, longer = self.read_start(folder, name, limit)
            if longer:
                raise _too_long(folder, name, limit)
            return data
        fd, size = self._open_sized(folder, name)
        if limit is not None and size > limit:
            os.close(fd)
            raise _too_long(folder, name, limit)
        try:
            return _read_whole(fd, size)
        except OSError as exc:
            raise StorageError(f"cannot read {folder}/{name}: {exc}") from exc
        finally:
            os.close(fd)

    def _open_sized(self, folder: str, name: str) -> tuple[int, int]:
        """A regular file of an OS MailRoot open for reading, and its size, as :meth:`open`
        refuses what is none (``FileNotFoundError`` if it is not there)."""
        try:
            return open_sized(self._sys(folder, name), single_link=False)
        except FileNotFoundError:
            raise
        except UnsafeEntry as exc:
            raise _unsafe(folder, name, exc) from None
        except OSError as exc:
            raise StorageError(f"cannot open {folder}/{name}: {exc}") from exc

    def read_start(
        self, folder: str, name: str, limit: int, *, single_link: bool = False
    ) -> tuple[bytes, bool]:
        """The first ``limit`` bytes of a file at most, and whether it was longer: for a file
        only its beginning is wanted from (a BadMail report, an envelope), held in bounded
        memory whatever size was planted. Refuses what :meth:`open` refuses."""
        parts: list[bytes] = []
        size = 0
        with self.open(folder, name, single_link=single_link) as handle:
            while size <= limit and (chunk := handle.read(min(CHUNK, limit + 1 - size))):
                parts.append(chunk)
                size += len(chunk)
        return b"".join(parts)[:limit], size > limit

    def read_tail(self, folder: str, name: str, limit: int) -> tuple[bytes, bool]:
        """The last ``limit`` bytes of a file at most, and whether it was longer: for a file
        that grows with every attempt (a transcript), held in bounded memory however long
        it grew. Refuses what :meth:`open` refuses."""
        if self._os_root is None:
            with self.open(folder, name) as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - limit))
                return handle.read(limit), size > limit
        fd, size = self._open_sized(folder, name)
        try:
            if size > limit:
                os.lseek(fd, size - limit, os.SEEK_SET)
            return _read_whole(fd, min(size, limit)), size > limit
        except OSError as exc:
            raise StorageError(f"cannot read {folder}/{name}: {exc}") from exc
        finally:
            os.close(fd)

    def remove(self, folder: str, name: str) -> bool:
        """Delete a file; ``False`` if it was already gone."""
        try:
            if self._os_root is not None:
                os.unlink(self._sys(folder, name))
            else:
                self.fs.remove(self._path(folder, name))
        except (FileNotFoundError, pyfs.errors.ResourceNotFound):
            return False
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot delete {folder}/{name}: {exc}") from exc
        return True

    def rename(
        self,
        src: tuple[str, str],
        dst: tuple[str, str],
        *,
        sync_source: bool = True,
        sync_target: bool = True,
    ) -> bool:
        """Atomically rename ``src`` to ``dst`` (replacing it); ``False`` if ``src`` is gone.

        A lost race (another process renamed it first) is the ``False``; only one caller wins.
        Both directories are fsync'd; the source's only when the file's leaving it must last
        (not for a temporary file: one that reappears after a power cut is swept up).
        """
        if src == dst:
            # MemoryFS.move(p, p) deletes the file (fs 2.4.16, docs/design.md#dependencies).
            raise ValueError(f"cannot rename {src} onto itself")
        if dst[0] == PICKUP:
            self.readiness.written_complete(dst[1])  # renamed in whole: take it at once
        try:
            if self._os_root is not None:
                os.replace(self._sys(*src), self._sys(*dst))
                synced = {src[0]} if sync_source else set()
                self._sync_dirs(synced | {dst[0]} if sync_target else synced)
            else:
                self.fs.move(self._path(*src), self._path(*dst), overwrite=True)
        except (FileNotFoundError, pyfs.errors.ResourceNotFound):
            return False
        except (OSError, pyfs.errors.FSError) as exc:
            raise StorageError(f"cannot rename {'/'.join(src)} to {'/'.join(dst)}: {exc}") from exc
        return True

    def sync(self, *folders: str) -> None:
        """Make the renames into and out of ``folders`` durable (one fsync each)."""
        try:
            self._sync_dirs(folders)
        except OSError as exc:
            raise StorageError(f"cannot sync {', '.join(folders)}: {exc}") from exc

    def _sync_dirs(self, folders: Iterable[str]) -> None:
        if self.durability is not Durability.FSYNC or self._os_root is None or os.name == "nt":
            return
        for folder in folders:
            fd = os.open(self._sys(folder), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def new_id(self, within: Callable[[str], bool] | None = None) -> str:
        """A new queue id (intake, the delivery threads and the application may ask at once),
        in this process's share: what a worker takes in, it delivers (about ``count`` draws).
        ``within`` chooses other shares (a listening worker's for those it hands off to)."""
        wanted = within or self.share.owns_id
        with self._ids_lock:
            while True:
                queue_id = self.ids.new(self.clock())
                if wanted(queue_id):
                    return queue_id

    def _temp_name(self) -> str:
        return f"{self.owner}.{self.ids.token(12)}{_TMP_SUFFIX}"

    def _open_temp(self, temp: str, length: int = -1) -> tuple[int, str, int]:
        """A temp file to write ``length`` bytes into (-1: not known), as a descriptor: a spare,
        its name and its size (see :meth:`recycle`) if there is one, else ``temp`` created,
        ``""`` and 0. A bare descriptor: a file object would cost an fstat, an isatty ioctl and
        an lseek at each open (three a file written)."""
        while True:
            spare, size = self._take_spare(length)
            if not spare and self._spare_inbox is not None:
                spare = self._passed_spare()  # its size unknown (-1): looked at once open
            if not spare:
                return os.open(self._sys(SORTTEMP, temp), _CREATE, 0o666), "", 0
            try:
                fd = os.open(self._sys(SORTTEMP, spare), _REWRITE)
            except FileNotFoundError:
                continue
            except OSError:
                # Out of the pool now: deleted, or it would stay in SortTemp until a restart.
                self._discard_temp(spare)
                raise
            if size < 0:
                try:
                    size = os.fstat(fd).st_size
                except OSError:
                    os.close(fd)
                    self._discard_temp(spare)
                    raise
            return fd, spare, size

    def _take_spare(self, length: int) -> tuple[str, int]:
        """The oldest spare no longer than ``length`` among the oldest few, else the oldest;
        ``("", -1)`` if there is none. A spare no longer than what goes into it needs no
        truncation (see :meth:`_write_temp`); the delivery threads finish messages side by side,
        so a message's and an envelope's files come back in no fixed order."""
        with self._spares_lock:
            spares = self._spares
            if not spares:
                return "", -1
            for index in range(min(len(spares), _SPARES_LOOKED_AT)):
                if spares[index][1] <= length:
                    found = spares[index]
                    del spares[index]
                    return found
            return spares.popleft()

    def exchange_spares(
        self,
        *,
        give: Callable[[str], bool] | None = None,
        inbox: socket.socket | None = None,
    ) -> None:
        """Pass spares between the processes of a worker group (``_service.handoff``): the
        surplus a full pool would delete goes to ``give`` (a spare's name in SortTemp; ``False``
        if it was not taken), and an empty pool draws on what arrives in ``inbox``. ``None``
        for both ends the exchange."""
        self._pass_spare, self._spare_inbox = give, inbox

    def _passed_spare(self) -> str:
        """A spare another process passed (see :meth:`exchange_spares`), renamed to a temp name
        of this process, or ``""`` if none waits. The names are checked as outside input: a
        plain temp-file name in SortTemp, else passed over; one that is gone (its owner died
        and a sweep took it) too."""
        inbox = self._spare_inbox
        assert inbox is not None  # noqa: S101 (the caller looked)
        while True:
            try:
                data = inbox.recv(256)
            except OSError:  # BlockingIOError: none waiting
                return ""
            name = data.decode("ascii", "replace")
            if not _PASSED_SPARE.fullmatch(name):
                continue
            mine = self._temp_name()
            try:
                os.rename(self._sys(SORTTEMP, name), self._sys(SORTTEMP, mine))
            except OSError:
                continue
            return mine

    @property
    def spares(self) -> tuple[str, ...]:
        """The names in SortTemp of this process's spare files (see :meth:`recycle`)."""
        with self._spares_lock:
            return tuple(name for name, _ in self._spares)

    def recycle(self, folder: str, name: str) -> bool:
        """Delete a file, or rather keep it in SortTemp as a spare temp file to be written over.

        Creating a file costs far more than writing over one on some filesystems (a few hundred
        microseconds on ext4 here, against ten); a finished message's files become the next
        message's. At most 64 spares of at most 256 KiB each are kept; other files are deleted.
        A spare is an ordinary temp file of this process: :meth:`close` deletes them, and if the
        process dies, the sweep of SortTemp does. Where spares are passed on
        (:meth:`exchange_spares`), each goes first to the processes that write what this one
        deletes, and only what they do not take (their inbox is full) is kept here or deleted:
        a pool kept first held back files that those processes then had to create. Returns
        ``False`` if the file was already gone.
        Only on OS filesystems; elsewhere this is :meth:`remove`.
        """
        passing = self._pass_spare
        if self._os_root is None or (len(self._spares) >= _SPARES and passing is None):
            return self.remove(folder, name)
        spare = self._temp_name()
        try:
            # Written over later: only a regular file of one link, never what a link planted in
            # the folder points at (outside the MailRoot) nor a file that has another name.
            found = os.lstat(self._sys(folder, name))
            if (
                found.st_size > _SPARE_SIZE
                or not stat.S_ISREG(found.st_mode)
                or found.st_nlink != 1
            ):
                return self.remove(folder, name)
            size = found.st_size
            os.rename(self._sys(folder, name), self._sys(SORTTEMP, spare))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete {folder}/{name}: {exc}") from exc
        if passing is not None and passing(spare):
            return True
        with self._spares_lock:
            keep = len(self._spares) < _SPARES
            if keep:
                self._spares.append((spare, size))
        if not keep:
            self._discard_temp(spare)  # the file has left its folder: that much is done
        return True

    def write(
        self,
        folder: str,
        name: str,
        data: bytes | Iterable[bytes],
        *,
        durability: Durability | None = None,
        sync_folder: bool = True,
        temp: str | None = None,
        mtime_ns: int | None = None,
    ) -> int:
        """Write a whole file atomically: SortTemp, flush, fsync, rename, fsync the directory.

        Replaces an existing file of that name. Returns the number of bytes written.
        ``durability`` overrides the store's for files that need not outlive a power cut;
        ``sync_folder=False`` leaves the directory's fsync to the caller, who makes several
        renames into one folder durable with one :meth:`sync`. ``temp`` names the temporary file
        (when no spare is at hand) instead of a fresh ``OWNER.TOKEN.tmp``. ``mtime_ns`` stamps
        the file with that time before it is renamed in (OS filesystems; a copy of a trigger
        keeps its original's).
        """
        durability = durability or self.durability
        temp, written = self._write_temp(
            folder, name, data, fsync=durability is Durability.FSYNC, temp=temp, mtime_ns=mtime_ns
        )
        try:
            renamed = self.rename(
                (SORTTEMP, temp),
                (folder, name),
                sync_source=False,
                sync_target=sync_folder and durability is Durability.FSYNC,
            )
        except BaseException:
            # A failed rename (EIO, EACCES) must not leave the temporary file behind; if the
            # rename went through and only the fsync after it failed, there is nothing to drop.
            self._discard_temp(temp)
            raise
        if not renamed:
            raise StorageError(f"{SORTTEMP}/{temp} vanished before it could become {folder}/{name}")
        return written

    def _write_temp(
        self,
        folder: str,
        name: str,
        data: bytes | Iterable[bytes],
        *,
        fsync: bool,
        temp: str | None = None,
        mtime_ns: int | None = None,
    ) -> tuple[str, int]:
        """Write ``data`` into a temporary file in SortTemp (fsync'd with ``fsync``): its name and
        the number of bytes written. On an error the file is gone; the error names
        ``folder/name``, the file it was to become."""
        temp = temp or self._temp_name()
        chunks = [data] if isinstance(data, bytes) else data
        written = 0
        try:
            if self._os_root is not None:
                fd, spare, size = self._open_temp(
                    temp, len(data) if isinstance(data, bytes) else -1
                )
                temp = spare or temp
                try:
                    written = _write_chunks(fd, chunks)
                    if size > written:
                        # A spare that was longer. One as long or shorter is left as it is: a
                        # truncation is a call that changes the inode even to its own length
                        # (bench/README.md, "Fifteenth round" and "Sixteenth round").
                        os.ftruncate(fd, written)
                    if mtime_ns is not None:
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                with self.fs.openbin(self._path(SORTTEMP, temp), "x") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                        written += len(chunk)
        except BaseException as exc:
            self._discard_temp(temp)
            if isinstance(exc, OSError | pyfs.errors.FSError):
                raise StorageError(f"cannot write {folder}/{name}: {exc}") from exc
            raise
        return temp, written

    def _discard_temp(self, temp: str) -> None:
        """Remove a temporary file after a failed write, best effort: the error that made it
        fail is the one to report. One that cannot be deleted either (the disk is failing) is
        remembered, and :meth:`sweep_temp` tries again: the owner is alive, so no other sweep
        would take it before this process ends."""
        try:
            self.remove(SORTTEMP, temp)
        except StorageError:
            with self._spares_lock:
                self._debris.add(temp)

    # -- owners ---------------------------------------------------------------------------------

    def announce(self) -> None:
        """Write or renew this process's owner record; cheap when the lease is fresh."""
        now = self.clock()
        if self._announced is not None and now - self._announced < self.lease / 4:
            return
        record = {"host": self._host, "pid": os.getpid(), "renewed": now.isoformat()}
        # No fsync: after a power cut every owner on this host is dead anyway; the rename is
        # what keeps the record whole for readers.
        self.write(
            SORTTEMP,
            f"{self.owner}{_OWNER_SUFFIX}",
            json.dumps(record).encode(),
            durability=Durability.NONE,
            temp=self._announce_temp(),
        )
        self._announced = now
        if Guarantee.ATOMIC_RENAME not in self.backend.guarantees:
            self._single_process()

    def _single_process(self) -> None:
        """The single-process rule (``_store.backend``): with no atomic rename, two processes
        claiming could both win; refuse while another live owner has announced itself."""
        others = []
        for owner in self.live_owners():
            if owner == self.owner:
                continue
            try:
                record = json.loads(self.read(SORTTEMP, f"{owner}{_OWNER_SUFFIX}"))
                others.append(f"process {record['pid']} on {record['host']} (owner {owner})")
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                others.append(f"owner {owner}")
        if others:
            # The process that came second stands back: its record goes (the one at work keeps
            # working), and its next announce writes it again and looks once more.
            self._announced = None
            self.remove(SORTTEMP, f"{self.owner}{_OWNER_SUFFIX}")
            raise ConfigurationError(single_process_rule(self.backend, others))

    def live_owners(self) -> list[str]:
        """Owners whose record says they may still be working (this process's included)."""
        owners = {
            name[: -len(_OWNER_SUFFIX)]
            for name in self.listdir(SORTTEMP)
            if name.endswith(_OWNER_SUFFIX)
        }
        return sorted(owner for owner in owners if self.owner_alive(owner))

    def _announce_temp(self) -> str:
        host = urllib.parse.quote(self._host, safe="")
        return f"{self.owner}.{_ANNOUNCE}.{host}.{os.getpid()}{_TMP_SUFFIX}"

    def _died_announcing(self, name: str) -> bool:
        """Whether ``name`` is an owner record's temporary file left by a process of this host
        that is gone: it died announcing itself (see :meth:`announce`)."""
        parts = name[: -len(_TMP_SUFFIX)].split(".", 2)
        if len(parts) != 3 or parts[1] != _ANNOUNCE or not name.endswith(_TMP_SUFFIX):
            return False
        host, _, pid = parts[2].rpartition(".")
        if urllib.parse.unquote(host) != self._host or not pid.isdigit():
            return False
        return not _process_runs(int(pid))

    def owner_alive(self, owner: str) -> bool:
        """Whether ``owner`` may still be working: its record exists, is fresh, its process runs."""
        if owner == self.owner:
            return True
        try:
            record = json.loads(self.read(SORTTEMP, f"{owner}{_OWNER_SUFFIX}"))
            renewed = datetime.fromisoformat(record["renewed"])
            host, pid = record["host"], int(record["pid"])
            age = self.clock() - renewed  # TypeError for a time without its zone
        except StorageError as exc:
            if exc.temporary:
                raise  # a failing disk: the owner may be alive, and its claims wait
            return False  # a link, FIFO or directory in its place vouches for no one
        except (FileNotFoundError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
            # Records are replaced by rename, never seen half-written: a missing or damaged
            # one cannot vouch for its owner.
            return False
        if age > self.lease:
            return False
        if age < -_OWNER_CLOCK_AHEAD and host != self._host:
            # A record renewed by another host's clock more than a day ahead of ours would
            # vouch for its claims until ours caught up (a hand edit's 2062 for 2026: for
            # decades); no two hosts sharing a MailRoot are a day apart. Within that, a host
            # whose clock is ahead keeps its claims for the skew and a lease, as it should.
            return False
        return host != self._host or (pid > 0 and _process_runs(pid))

    def dead_owners(self) -> list[str]:
        """Owners whose record says they are gone."""
        owners = {
            name[: -len(_OWNER_SUFFIX)]
            for name in self.listdir(SORTTEMP)
            if name.endswith(_OWNER_SUFFIX)
        }
        return sorted(owner for owner in owners if not self.owner_alive(owner))

    # -- Pickup ---------------------------------------------------------------------------------
    # Pickup is written by other programs: every entry is hostile until checked (entries.py).

    def _candidates(self) -> list[str]:
        """Names in Pickup that may be messages: not starting with '.' nor ending in '.tmp'."""
        return [name for name in self.listdir(PICKUP) if is_candidate(name)]

    def inspect(self, folder: str, name: str) -> EntryFacts:
        """What an entry is, without following a link; ``FileNotFoundError`` if it is gone.

        On filesystems without OS paths the backend's own info decides; a backend that cannot
        tell a link from a file (none of PyFilesystem2's built-in ones has links) reports a file.
        """
        if self._os_root is not None:
            return inspect_os(self._sys(folder, name))
        try:
            info = self.fs.getinfo(self._path(folder, name), namespaces=["details", "link"])
        except pyfs.errors.ResourceNotFound as exc:
            raise FileNotFoundError(f"{folder}/{name}") from exc
        except pyfs.errors.FSError as exc:
            raise StorageError(f"cannot inspect {folder}/{name}: {exc}") from exc
        kind = _BACKEND_KINDS.get(int(info.type), EntryKind.OTHER)
        target = None
        if info.has_namespace("link") and info.is_link:
            kind, target = EntryKind.SYMLINK, info.target
        elif not info.has_namespace("link") and Guarantee.LINKS not in self.backend.guarantees:
            self._say_links_unknown()
        modified = info.modified.timestamp() if info.modified else time.time()
        return EntryFacts(kind=kind, size=info.size or 0, mtime=modified, target=target)

    def _say_links_unknown(self) -> None:
        if not self._said_links:
            self._said_links = True
            log.warning(
                "%s cannot tell a symbolic link from a file: Pickup entries on it are taken as "
                "the files they appear to be",
                self.backend,
            )

    def pickup_names(self) -> list[str]:
        """Every entry in Pickup that is not a directory, sorted: files waiting, being written,
        or to be refused."""
        names = []
        for name in self._candidates():
            try:
                if self.inspect(PICKUP, name).kind is not EntryKind.DIRECTORY:
                    names.append(name)
            except FileNotFoundError:
                continue
        return sorted(names)

    def pickup_ready(self) -> list[str]:
        """The Pickup entries to claim now, sorted.

        A regular file with one link is ready once its writer is done with it (see
        :class:`~spoolmail._store.entries.Readiness`); one still open for writing is left where
        it is, with nothing held for it. A link, FIFO, socket or device is ready at once, a file
        with more than one link once it kept them for the settle time (a writer may be between
        linking it in and unlinking its own name): claiming renames the name itself (never what
        it points to) into SortTemp, where intake refuses it with a report. A directory is left
        and reported once.
        """
        return [name for name, _ in self.pickup_ready_in_turn()]

    def look_everywhere(self) -> None:
        """Make the next looks list Pickup and SortTemp whatever the watches said (a rescan:
        the safety net for what no event told)."""
        self._pickup_empty_at = None
        if self._trigger_watch is not None:
            self._trigger_watch.pending = True

    def pickup_ready_in_turn(self) -> Iterator[tuple[str, int]]:
        """:meth:`pickup_ready`, each name as soon as it is found ready, in the same order,
        with its size as its entry said: intake can claim the first few before the others are
        looked at (a drain of thousands of files then starts delivering after a few, not after
        a look at every one), and make its batches no larger than it wants them."""
        watcher = self.readiness.watcher
        if self._os_root is not None and (watcher is None or not watcher.alive):
            watcher = self.readiness.watcher = CloseWatcher.start(self._sys(PICKUP))
            self._pickup_empty_at = None
        events = None
        if watcher is not None and watcher.alive:
            events = watcher.events()  # counted before the listing: one during it counts again
            if events == self._pickup_empty_at:
                return  # nothing of this share at the last look, and no event since
        share = self.share
        # Every name in this process's share, whatever it is: what the notes are kept for.
        present = {name for name in self._candidates() if share.owns_name(name)}
        self._pickup_empty_at = None if present else events
        self.readiness.prune(present)
        self._reported_dirs &= present
        for name in sorted(present):
            try:
                facts = self.inspect(PICKUP, name)
            except FileNotFoundError:
                continue
            if facts.kind is EntryKind.DIRECTORY:
                if name not in self._reported_dirs:
                    self._reported_dirs.add(name)
                    log.warning("Pickup/%s is a directory; spoolmail leaves it alone", name)
                continue
            path = self._sys(PICKUP, name) if self._os_root is not None else None
            if facts.kind is EntryKind.LINKED_FILE:
                if self.readiness.linked_long_enough(name, facts):
                    yield name, facts.size
            elif facts.kind.refused or self.readiness.ready(name, facts, path=path):
                yield name, facts.size

    def wait_for_pickup(self, timeout: float, *, wake: int) -> None:
        """Wait up to ``timeout`` seconds, less when a Pickup file becomes complete (inotify,
        where :meth:`pickup_ready` started a watcher), a trigger is renamed into SortTemp
        (another process's flush: inotify too) or ``wake`` (a socket) becomes readable.

        Where nothing watches the folders (other platforms, non-OS backends, network
        filesystems without events) only ``wake`` ends the wait early: Pickup and the triggers
        are then polled.

        Claims and spares are renamed into SortTemp too, several a message and in every worker.
        Woken by those alone, the wait looks at SortTemp again only after :data:`_QUIET`: the
        events meanwhile are read at once, not each with a wake-up of this process (which had
        cost a busy group of workers 12% of its CPU). A trigger may wait that long.
        """
        if self._trigger_watch is None and not self._no_trigger_watch:
            self._trigger_watch = self.trigger_watch()
            self._no_trigger_watch = self._trigger_watch is None
        triggers = self._trigger_watch
        deadline = time.monotonic() + max(0.0, timeout)
        if triggers is not None:
            triggers.listen(wake)
        quiet_until = 0.0
        while True:
            now = time.monotonic()
            quiet = now < quiet_until
            left = max(0.0, min(deadline, quiet_until if quiet else deadline) - now)
            woken = self._wait_on(left, wake if triggers is None or quiet else triggers.fileno())
            if triggers is None:
                return  # a Pickup file, the wake socket, or the time is up
            if quiet:
                if woken or time.monotonic() >= deadline:
                    return  # a Pickup file or the wake socket (triggers: at the next wait)
                if time.monotonic() < quiet_until:
                    continue
                if not triggers.ready():
                    quiet_until = 0.0  # nothing came meanwhile: wake for the next one
                    continue
                if triggers.arrived():
                    return
                quiet_until = time.monotonic() + _QUIET  # more came, and more may: quiet on
                continue
            if not triggers.ready():
                return  # a Pickup file, the time is up, or the watcher closed: the caller polls
            if triggers.arrived() or _readable(wake) or time.monotonic() >= deadline:
                return
            # Only claims or spares renamed into SortTemp: quiet for a while.
            quiet_until = time.monotonic() + _QUIET

    def _wait_on(self, seconds: float, fd: int) -> bool:
        """Wait up to ``seconds`` for a complete Pickup file (where a watcher runs) or for
        ``fd`` to become readable; whether either came."""
        watcher = self.readiness.watcher
        if watcher is not None and watcher.alive:
            return watcher.wait(seconds, wake=fd)
        with contextlib.suppress(OSError, ValueError):
            select.select([fd], [], [], seconds)
        return _readable(fd)

    def pickup_id(self, name: str) -> str:
        """The queue id a Pickup file gets: its own when named ``<queue id>.eml`` with an id in
        use nowhere in the MailRoot (as ``Spool.submit`` names its files, so that it can tell
        the id in advance), else a new one."""
        stem, dot, extension = name.rpartition(".")
        if (
            dot
            and extension == "eml"
            and is_made_id(stem)
            and not any(self.exists(folder, f"{stem}.{kind}") for folder, kind in _ID_USES)
        ):
            return stem
        return self.new_id()

    def claim_pickup(self, name: str) -> PickupClaim | None:
        """Rename ``Pickup/name`` into SortTemp under a new queue id; ``None`` if another won."""
        claims = self.claim_pickups([name])
        return claims[0] if claims else None

    def claim_pickups(self, names: Iterable[str]) -> list[PickupClaim]:
        """Claim several Pickup files (those another process won are left out), then make the
        claims durable with one fsync of Pickup and SortTemp, before anything is queued: a claim
        lost to a power cut would bring the file back into Pickup beside its queued copy.

        The claim renames whatever the name is at that moment; what it is, is judged after,
        in SortTemp, where no other program writes (:meth:`inspect`, :meth:`open_claim`)."""
        self.announce()
        claims = []
        for name in names:
            claim = PickupClaim(self.pickup_id(name), self.owner, name)
            if self.rename(
                (PICKUP, name), (SORTTEMP, claim.file), sync_source=False, sync_target=False
            ):
                claims.append(claim)
            self.readiness.claimed(name)
        if claims:
            self.sync(PICKUP, SORTTEMP)
        return claims

    def open_claim(self, claim: PickupClaim, facts: EntryFacts, *, limit: int) -> CappedReader:
        """Open a claimed regular file for reading through one descriptor, at most ``limit + 1``
        bytes; :class:`~spoolmail._store.entries.UnsafeEntry` if it is not the regular,
        single-link file ``facts`` described."""
        try:
            if self._os_root is not None:
                fd = open_regular(self._sys(SORTTEMP, claim.file), facts)
                # Unbuffered (the reader asks for whole chunks): no fstat, isatty ioctl and
                # lseek of a file object; it ends at the file's end, whatever fstat said.
                return CappedReader(cast("BinaryIO", _StoredFile(fd, limit + 1)), limit)
            return CappedReader(self.open(SORTTEMP, claim.file), limit)
        except (UnsafeEntry, FileNotFoundError):
            raise
        except OSError as exc:
            raise StorageError(f"cannot open {SORTTEMP}/{claim.file}: {exc}") from exc

    def pickup_claims(self) -> list[PickupClaim]:
        claims = (PickupClaim.from_file(name) for name in self.listdir(SORTTEMP))
        return sorted((c for c in claims if c is not None), key=lambda c: c.id)

    def take_over(self, claim: PickupClaim) -> PickupClaim | None:
        """Make a dead owner's claim ours (one rename; only one process wins)."""
        self.announce()
        mine = attrs.evolve(claim, owner=self.owner)
        return mine if self.rename((SORTTEMP, claim.file), (SORTTEMP, mine.file)) else None

    def finish_claim(self, claim: PickupClaim) -> None:
        self.remove(SORTTEMP, claim.file)

    # -- Queue ------------------------------------------------------------------------------------

    @staticmethod
    def claimed_name(queue_id: str, owner: str) -> str:
        return f"{queue_id}.{owner}.env"

    def queue_files(self, owns: Callable[[str], bool] | None = None) -> dict[str, QueueFiles]:
        """Every id with files in the Queue folder (only those ``owns`` says yes to, when given:
        a worker's share), and which files it has.

        One pass over the listing; an id is checked once, however many files it has.
        """
        found: dict[str, tuple[list[str], list[str], list[str]]] = {}
        rejected: set[str] = set()
        for name in self.listdir(QUEUE):
            queue_id, dot, rest = name.partition(".")
            if not dot or queue_id in rejected:
                continue
            entry = found.get(queue_id)
            if entry is None:
                if not is_queue_id(queue_id) or (owns is not None and not owns(queue_id)):
                    rejected.add(queue_id)
                    continue
                entry = found[queue_id] = ([], [], [])
            kinds, claims, transcripts = entry
            if rest in ("eml", "env"):
                kinds.append(rest)
            elif rest in ("RTR", "LTR"):
                transcripts.append(rest)
            elif rest.endswith(".env") and rest.count(".") == 1:
                claims.append(rest[:-4])
        return {
            queue_id: QueueFiles(
                queue_id,
                message="eml" in kinds,
                envelope="env" in kinds,
                claims=tuple(claims),
                transcripts=tuple(transcripts),
            )
            for queue_id, (kinds, claims, transcripts) in found.items()
        }

    def commit_queued(
        self,
        queue_id: str,
        message: bytes | Iterable[bytes],
        envelope: bytes | Callable[[int], bytes],
        *,
        sync: bool = True,
    ) -> int:
        """Queue a message: its bytes first, its envelope last (the commit); the message's size.

        ``envelope`` may be a function of the size, called once the message is written (intake
        learns the size by writing it). Both files are fsync'd, the Queue folder once for both
        renames (``sync=False``: the caller's :meth:`sync` does it once for a batch): until that
        fsync returns, the source of the message (a Pickup claim, a parent's attempt) still
        exists and recovery writes both again, so the order in which the two renames reach the
        disk does not matter. The transition that uses it is ``Transitions.admit``.
        """
        if not sync and self._syncfs is not None and self.durability is Durability.FSYNC:
            return self._stage_queued(queue_id, message, envelope)
        size = self.write(QUEUE, f"{queue_id}.eml", message, sync_folder=False)
        data = envelope(size) if callable(envelope) else envelope
        self.write(QUEUE, f"{queue_id}.env", data, sync_folder=False)
        if sync:
            self.sync(QUEUE)
        return size

    def _stage_queued(
        self,
        queue_id: str,
        message: bytes | Iterable[bytes],
        envelope: bytes | Callable[[int], bytes],
    ) -> int:
        """:meth:`commit_queued` of a batch (``sync=False``) where the filesystem can be synced
        at once (syncfs): both files written into SortTemp, not fsync'd, not renamed; kept for
        :meth:`sync_queued`, which makes the whole batch durable with one syncfs, renames the
        files into the Queue (message, then envelope), and fsyncs the Queue."""
        message_temp, size = self._write_temp(QUEUE, f"{queue_id}.eml", message, fsync=False)
        try:
            data = envelope(size) if callable(envelope) else envelope
            envelope_temp, _ = self._write_temp(QUEUE, f"{queue_id}.env", data, fsync=False)
        except BaseException:
            self._discard_temp(message_temp)
            raise
        staged = self._staged.__dict__.setdefault("queued", [])
        staged.append((queue_id, message_temp, envelope_temp))
        return size

    def sync_queued(self) -> None:
        """Make what this thread queued with ``sync=False`` durable, then fsync the Queue.

        With syncfs (:meth:`_stage_queued`): one syncfs puts every staged file's bytes on disk,
        and only then is each renamed into the Queue, so a rename never reaches the disk
        before the bytes it names; without it the files were fsync'd and renamed as written.
        On an error the files not yet renamed are deleted; the caller's sources (Pickup
        claims) stay, and recovery takes them in again.
        """
        staged: list[tuple[str, str, str]] = self._staged.__dict__.pop("queued", [])
        done = 0
        try:
            if staged and self.durability is Durability.FSYNC:
                self._sync_file_system()
            for queue_id, message_temp, envelope_temp in staged:
                self._place(message_temp, f"{queue_id}.eml")
                self._place(envelope_temp, f"{queue_id}.env")
                done += 1
        except BaseException:
            self._discard_staged(staged[done:])
            raise
        self.sync(QUEUE)

    def _sync_file_system(self) -> None:
        """One syncfs of the MailRoot's filesystem (SortTemp's), where there is one."""
        if self._syncfs is None:
            return
        try:
            fd = os.open(self._sys(SORTTEMP), os.O_RDONLY)
            try:
                failed = self._syncfs(fd) != 0
                code = ctypes.get_errno()
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot sync the MailRoot's filesystem: {exc}") from exc
        if failed:
            raise StorageError(f"cannot sync the MailRoot's filesystem: {os.strerror(code)}")

    def _place(self, temp: str, name: str) -> None:
        """Rename a staged ``SortTemp/temp`` to ``Queue/name`` (the Queue's fsync comes after)."""
        if not self.rename((SORTTEMP, temp), (QUEUE, name), sync_source=False, sync_target=False):
            raise StorageError(f"{SORTTEMP}/{temp} vanished before it could become {QUEUE}/{name}")

    def _discard_staged(self, staged: Iterable[tuple[str, str, str]]) -> None:
        for _queue_id, message_temp, envelope_temp in staged:
            self._discard_temp(message_temp)
            self._discard_temp(envelope_temp)

    def claim_queued(self, queue_id: str) -> bool:
        """Rename ``ID.env`` to ``ID.OWNER.env``; ``False`` if it is gone (claimed or finished).

        Not fsync'd: a claim lost to a power cut only means the message is attempted again,
        and delivery is at-least-once anyway (docs/design.md#crash-safety).
        """
        self.announce()
        return self.rename(
            (QUEUE, f"{queue_id}.env"),
            (QUEUE, self.claimed_name(queue_id, self.owner)),
            sync_source=False,
            sync_target=False,
        )

    def take_over_queued(self, queue_id: str, owner: str) -> bool:
        """Take a dead owner's claimed envelope (one rename; only one process wins)."""
        self.announce()
        return self.rename(
            (QUEUE, self.claimed_name(queue_id, owner)),
            (QUEUE, self.claimed_name(queue_id, self.owner)),
        )

    def read_claimed(self, queue_id: str) -> bytes:
        """This process's claimed envelope of ``queue_id`` (at most :data:`MAX_ENVELOPE`)."""
        return self.read(QUEUE, self.claimed_name(queue_id, self.owner), limit=MAX_ENVELOPE)

    def release(self, queue_id: str, envelope: bytes) -> None:
        """Commit the new envelope while still claimed, then hand the message back to the Queue."""
        self.write(QUEUE, self.claimed_name(queue_id, self.owner), envelope, sync_folder=False)
        self.rename((QUEUE, self.claimed_name(queue_id, self.owner)), (QUEUE, f"{queue_id}.env"))

    def finish(self, queue_id: str, owner: str | None = None, *, transcripts: bool = True) -> None:
        """Remove a finished message: message and transcripts first, the claimed envelope last.

        ``transcripts=False`` when there can be none (they are written only when a message
        stays in the Queue), saving two deletes of nothing. A message tried before nearly
        always has a remote transcript (a local delivery seldom defers), deleted without a look
        first; the local one is looked for (:meth:`_remove_transcript`).
        """
        self.recycle(QUEUE, f"{queue_id}.eml")
        if transcripts:
            self.remove(QUEUE, f"{queue_id}.RTR")
            self._remove_transcript(f"{queue_id}.LTR")
        # ``None`` only: an empty owner (``ID..env``, a name made by hand) is a claim too.
        self.recycle(QUEUE, self.claimed_name(queue_id, self.owner if owner is None else owner))

    def _remove_transcript(self, name: str) -> None:
        """A finished message's transcript deleted, if it has one of this kind: most have one
        or none (remote or local delivery). Looked for first on OS filesystems: a failed
        unlink costs a raised exception, five times the look. Only the process that holds the
        message's claim writes its transcripts, so none appears in between."""
        if self._os_root is None or _present(self._sys(QUEUE, name)):
            self.remove(QUEUE, name)

    def signature(self, folder: str, name: str) -> tuple[int, ...] | None:
        """A cheap fingerprint of a file (inode, mtime, size) that changes with every rewrite.

        ``None`` where there is none to be had (filesystems without OS paths): read it again.
        The inode alone would not do: a file rewritten twice can get its first inode back.
        """
        if self._os_root is None:
            return None
        try:
            result = os.lstat(self._sys(folder, name))
        except OSError:
            return None
        return (result.st_ino, result.st_mtime_ns, result.st_size)

    # -- foreign files: what another MTA left in the Queue (IIS's NTFS_*.EML) -------------------

    def queue_names(self) -> list[str]:
        """Every name in the Queue folder, ours or not."""
        return self.listdir(QUEUE)

    def read_queue_file(self, name: str, *, limit: int) -> tuple[bytes, bool]:
        """A file of the Queue folder by its name, its first ``limit`` bytes at most and
        whether it was longer; ``FileNotFoundError`` if gone. A file with a second link is
        refused, as in Pickup: a copy from Windows has one, and another could be any file of
        this filesystem, linked in to be mailed."""
        return self.read_start(QUEUE, name, limit, single_link=True)

    def queue_file_size(self, name: str) -> int:
        """The size of a file of the Queue folder by its name; ``FileNotFoundError`` if gone."""
        return self.size(QUEUE, name)

    def move_queue_file_to_pickup(self, name: str, data: bytes) -> None:
        """Write ``data`` into Pickup under ``name`` (whole, by rename), then remove the Queue
        file of that name: a crash in between leaves both, never neither."""
        self.write(PICKUP, name, data)
        self.remove(QUEUE, name)

    # -- triggers: telling a running service what an operator changed ---------------------------

    def write_trigger(self, ids: Iterable[str] | None) -> None:
        """Ask running services to look at ``ids`` again (``None``: the whole Queue).

        Not fsync'd: it is a hint to services running now, and what it names is durable
        before it is written. A power cut ends those services too, and a service that starts
        scans the whole Queue first; a trigger that comes back damaged is read as "look at the
        whole Queue" (:meth:`take_triggers`). The rename keeps it whole for readers meanwhile.
        """
        data = {"all": True} if ids is None else {"ids": sorted(set(ids))}
        self._put_trigger(json.dumps(data).encode(), durability=Durability.NONE)

    def write_flush_trigger(
        self, *, sender: str | None = None, domain: str | None = None, ids: Iterable[str] = ()
    ) -> None:
        """Ask a service to flush in memory: every waiting message (from ``sender``, with a
        pending recipient at ``domain``; or only ``ids``) due now, its dead-host notes forgotten.

        Nothing in the Queue is rewritten: the envelope of each message says so when its attempt
        commits. The file waits in SortTemp until a service takes it (one that starts rescans
        first, then flushes). ``Spool.flush_queue``.
        """
        self._put_trigger(flush_order(sender=sender, domain=domain, ids=ids))

    def _put_trigger(self, data: bytes, *, durability: Durability | None = None) -> None:
        self.write(SORTTEMP, self._trigger_name(None), data, durability=durability)

    def _trigger_name(self, share: Share | None) -> str:
        """A new trigger's name: ``OWNER.TOKEN.trigger``, for every service; or addressed to
        one worker of a group, ``OWNER.TOKEN.wINDEXofCOUNT.trigger``."""
        to = "" if share is None else f".w{share.index}of{share.count}"
        return f"{self.owner}.{self.ids.token(12)}{to}{TRIGGER_SUFFIX}"

    def take_triggers(self) -> Triggers:
        """Consume the triggers: the ids to look at again (or the whole Queue), and the flushes
        asked of a service in memory.

        Every worker of a group must see each trigger (a flush in memory flushes only its own
        schedule). The worker that finds one first makes it its own with a rename (one wins),
        writes a copy addressed to each other worker, then reads it; one addressed to another
        worker of its group it leaves. A crash between the two leaves the trigger to be taken
        again: the others may see it twice, which does no harm (a second flush, a second look).
        """
        wanted: set[str] = set()
        everything = False
        flushes: list[FlushOrder] = []
        watch = self._trigger_watch
        if watch is not None:
            watch.arrived()  # what the kernel holds now
            if not watch.pending:
                return Triggers(wanted)  # none renamed in since the last listing
            # Cleared before the listing: one renamed in during it is listed again next time.
            watch.pending = False
        for name in self.listdir(SORTTEMP):
            if not name.endswith(TRIGGER_SUFFIX):
                continue
            if not self.isfile(SORTTEMP, name):
                self._planted_trigger(name)
                continue
            mine = self._own_trigger(name)
            if mine is None:
                continue
            try:
                data = self._read_order(mine)
                if "flush" in data:
                    written = self.signature(SORTTEMP, mine)
                    issued = None if written is None else written[1]
                    flushes.append(FlushOrder.of(data["flush"], issued=issued))
                else:
                    ids = data.get("ids")
                    everything |= bool(data.get("all")) or not isinstance(ids, list)
                    wanted.update(i for i in ids or () if isinstance(i, str) and is_queue_id(i))
            except FileNotFoundError:
                continue  # another service took it
            except (ValueError, AttributeError, TypeError, RecursionError):
                everything = True  # a damaged order: flush all, and the trigger goes
            self.remove(SORTTEMP, mine)
        return Triggers(None if everything else wanted, tuple(flushes))

    def _read_order(self, name: str) -> Any:
        """A trigger's JSON; ``None`` (a damaged order, as JSON ``null`` is) for one longer than
        :data:`_MAX_TRIGGER`, which is not read."""
        if self.size(SORTTEMP, name) > _MAX_TRIGGER:
            return None
        return json.loads(self.read(SORTTEMP, name))

    def _planted_trigger(self, name: str) -> None:
        """A link, FIFO or directory under a trigger's name: no order from anyone, and never
        read (a FIFO would block, a link lead out). Its name is removed (never what it points
        to); a directory is left alone, said once."""
        try:
            directory = self.inspect(SORTTEMP, name).kind is EntryKind.DIRECTORY
            removed = not directory and self.remove(SORTTEMP, name)
        except FileNotFoundError:
            return  # another service took it: a trigger after all
        except StorageError:
            removed = False
        if removed or name not in self._planted_triggers:
            self._planted_triggers.add(name)
            log.warning(
                "SortTemp/%s is no regular file, so no trigger; spoolmail %s",
                name,
                "removed it" if removed else "leaves it alone",
            )

    def _own_trigger(self, name: str) -> str | None:
        """The name under which trigger ``name`` is this process's to read, or ``None``: it is
        another worker's, or another service took it first."""
        share = self.share
        if share.whole:
            return name
        address = _trigger_address(name)
        if address == share:
            return name
        if address is not None and address.count == share.count:
            return None  # another worker's of this group
        mine = self._trigger_name(share)
        # Not fsync'd: a power cut that undid the rename leaves the trigger to be taken again.
        if not self.rename(
            (SORTTEMP, name), (SORTTEMP, mine), sync_source=False, sync_target=False
        ):
            return None  # another worker took it
        # One too long to be an order was planted, and is not read: each worker looks at the
        # whole Queue instead.
        data = b"" if self.size(SORTTEMP, mine) > _MAX_TRIGGER else self.read(SORTTEMP, mine)
        # A copy keeps the original's durability: a flush order's is fsync'd, a hint's is not
        # (see write_trigger and _put_trigger). And its time: a flush order's is when it was
        # issued (FlushOrder.issued), which the other workers' help goes by.
        order = data.startswith(FLUSH_TRIGGER)
        durability = None if order else Durability.NONE
        written = self.signature(SORTTEMP, mine) if order else None
        issued = None if written is None else written[1]
        for other in share.all():
            if other != share:
                self.write(
                    SORTTEMP,
                    self._trigger_name(other),
                    data,
                    durability=durability,
                    mtime_ns=issued,
                )
        return mine

    def trigger_watch(self) -> TriggerWatch | None:
        """A watch on SortTemp that tells when a trigger is renamed in (Linux, OS paths)."""
        if self._os_root is None:
            return None
        return TriggerWatch.start(self._sys(SORTTEMP))

    # -- BadMail ----------------------------------------------------------------------------------

    def commit_badmail(
        self,
        queue_id: str,
        *,
        message: tuple[str, str],
        report: bytes,
        envelope: bytes | None,
    ) -> None:
        """Move ``message`` (folder, name) to ``BadMail/ID.BAD`` after writing its report files.

        The ``.BAD`` rename is the commit: a ``.BDR`` without ``.BAD`` is an interrupted move.
        """
        self.write(BADMAIL, f"{queue_id}.BDR", report)
        if envelope is not None:
            self.write(BADMAIL, f"{queue_id}.BDP", envelope)
        if not self.rename(message, (BADMAIL, f"{queue_id}.BAD")) and not self.exists(
            BADMAIL, f"{queue_id}.BAD"
        ):
            raise StorageError(f"{'/'.join(message)} vanished before it reached BadMail")

    def commit_refusal(
        self,
        queue_id: str,
        claim: PickupClaim,
        facts: EntryFacts,
        *,
        report: bytes,
        envelope: bytes,
    ) -> None:
        """Refuse a claimed Pickup entry that is not a regular single-link file: its report in
        ``BadMail/ID.BDR`` and ``.BDP``, then the claimed name removed.

        Unlinking removes the name only: a link's target and a file's other links are untouched,
        and nothing was opened for reading, so no ``.BAD`` copy exists. A directory (swapped in
        after the listing) goes back to Pickup, where it is left alone.
        """
        self.write(BADMAIL, f"{queue_id}.BDR", report)
        self.write(BADMAIL, f"{queue_id}.BDP", envelope)
        if facts.kind is EntryKind.DIRECTORY:
            for name in (claim.name, f".spoolmail-directory-{queue_id}"):
                if not self.exists(PICKUP, name) and self.rename(
                    (SORTTEMP, claim.file), (PICKUP, name)
                ):
                    self.readiness.claimed(name)
                    return
        self.remove(SORTTEMP, claim.file)

    # -- recovery ---------------------------------------------------------------------------

    def sweep_temp(self) -> int:
        """Delete dead owners' half-written files and records; how many went.

        A writer that never announced itself (``Spool.submit`` in an application) has no record;
        its files are left alone until they are a lease old.
        """
        removed = 0
        alive: dict[str, bool] = {self.owner: True}
        stuck: set[str] = set()
        with self._spares_lock:
            debris, self._debris = self._debris, set()
        # Records last: one goes only with all its owner's files, so the next sweep still knows
        # that the owner of a file left behind is dead.
        names = sorted(self.listdir(SORTTEMP), key=lambda name: name.endswith(_OWNER_SUFFIX))
        for name in names:
            if not name.endswith((_TMP_SUFFIX, _OWNER_SUFFIX)):
                continue
            owner = name.split(".", 1)[0]
            if owner not in alive:
                # An owner without a record is alive until its files are a lease old
                # (``Spool.submit`` writers never announce themselves), unless it is a process
                # of this host that died writing its first record.
                alive[owner] = self.owner_alive(owner) or (
                    not self.exists(SORTTEMP, f"{owner}{_OWNER_SUFFIX}")
                    and not self.stale(SORTTEMP, name)
                    and not any(
                        self._died_announcing(other)
                        for other in names
                        if other.startswith(f"{owner}.{_ANNOUNCE}.")
                    )
                )
            if (alive[owner] and name not in debris) or (
                owner in stuck and name.endswith(_OWNER_SUFFIX)
            ):
                continue
            # One file that cannot be deleted (EACCES, EIO) must not stop the rescan that this
            # sweep is part of: it is reported, and tried again at the next sweep.
            try:
                removed += self.remove(SORTTEMP, name)
            except StorageError as exc:
                log.warning("%s", exc)
                stuck.add(owner)
                if alive[owner]:
                    with self._spares_lock:
                        self._debris.add(name)
        return removed + self._sweep_pickup_temp()

    def _sweep_pickup_temp(self) -> int:
        """Delete ``PickupWriter``'s hidden files in Pickup that a killed writer left a day
        ago; other hidden names in Pickup belong to other writers and are left alone."""
        if self._os_root is None:
            return 0
        removed = 0
        now = time.time()
        for name in self.listdir(PICKUP):
            if not name.startswith("."):
                continue
            try:
                if is_stale_temp(name, os.lstat(self._sys(PICKUP, name)).st_mtime, now):
                    removed += self.remove(PICKUP, name)
            except (OSError, StorageError) as exc:
                log.warning("cannot delete the left-over Pickup/%s: %s", name, exc)
        return removed

    def stale(self, folder: str, name: str) -> bool:
        """Whether a file was last written over a lease ago, by the filesystem's (real) clock.

        Files that another process may be writing right now are left alone until they are stale.
        """
        try:
            if self._os_root is not None:
                modified = os.lstat(self._sys(folder, name)).st_mtime
            else:
                info = self.fs.getinfo(self._path(folder, name), namespaces=["details"])
                modified = info.modified.timestamp() if info.modified else time.time()
        except (OSError, pyfs.errors.FSError):
            return False
        return time.time() - modified > self.lease.total_seconds()

    def close(self) -> None:
        """Remove this process's spare files and its owner record (a dead owner's go in a sweep)."""
        self.readiness.close()
        if self._trigger_watch is not None:
            self._trigger_watch.close()
            self._trigger_watch = None
        with self._spares_lock:
            spares, self._spares = self._spares, collections.deque()
        with contextlib.suppress(StorageError):
            for spare, _ in spares:
                self.remove(SORTTEMP, spare)
            self.remove(SORTTEMP, f"{self.owner}{_OWNER_SUFFIX}")


def _readable(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _disk_free(path: str) -> int:
    """Free bytes on the filesystem of ``path`` for an unprivileged writer: ``statvfs``'s
    ``f_bavail * f_frsize`` on POSIX (root's reserve is not counted), ``GetDiskFreeSpaceExW`` on
    Windows, both through :func:`shutil.disk_usage`."""
    return shutil.disk_usage(path).free


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` of this host runs: a dead owner is certain at once, no lease wait.

    ``os.kill(pid, 0)`` only probes on POSIX; on Windows it would terminate the process, so
    there the lease alone decides.
    """
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: whether ``pid`` is dead but not yet reaped (state Z in ``/proc/PID/stat``). A
    killed worker whose parent died with it stays so until init reaps it; ``kill(pid, 0)``
    still finds it, and its claims would wait for their lease."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            text = stat_file.read()
    except OSError:
        return False  # no /proc (not Linux), or gone this instant: the next look decides
    # "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the last ")" ends it.
    return text[text.rfind(b")") + 2 : text.rfind(b")") + 3] == b"Z"


def read_head(handle: BinaryIO, *, limit: int) -> tuple[bytes, bytes]:
    """Read a stored message's header block: (head ending in CRLF, the body's first bytes).

    Reads in chunks until the empty line; a message without one within ``limit`` bytes is all
    head as far as it was read.
    """
    data = b""
    while len(data) < limit:
        chunk = handle.read(CHUNK)
        if not chunk:
            break
        data += chunk
        index = data.find(b"\r\n\r\n")
        if index >= 0:
            return data[: index + 2], data[index + 4 :]
    return data, b""


def _too_long(folder: str, name: str, limit: int) -> StorageError:
    return StorageError(
        f"{folder}/{name} is over {limit} bytes, more than spoolmail reads of such a file",
        temporary=False,
    )


def _unsafe(folder: str, name: str, exc: UnsafeEntry) -> StorageError:
    """What reading a planted entry raises: permanent, since trying again will not make a link
    or a FIFO a message (a command's exit status 1, not 75)."""
    return StorageError(
        f"{folder}/{name} is {exc.facts.describe()}; spoolmail reads only regular files",
        temporary=False,
    )


class _StoredFile(io.RawIOBase):
    """A MailRoot file open for reading (:meth:`MailStore.open`): its descriptor and the size
    ``fstat`` gave when it was opened.

    Files in the MailRoot are written whole and renamed into place, never written again: once
    that many bytes are read, the end is known without a read of nothing, and the open costs
    no second ``fstat`` (a file object's). A short read before it reads on, as a file does.
    """

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._left = size
        self.size = size  # what fstat said at the open (the sender needs no second one)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._fd

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if size is None or size < 0:
            return self.readall()
        if size == 0 or self._left <= 0:
            return b""
        data = os.read(self._fd, size)
        self._left = self._left - len(data) if data else 0
        return data

    def readall(self) -> bytes:
        parts = []
        while data := self.read(max(self._left, CHUNK)):
            parts.append(data)
        return b"".join(parts)

    def readinto(self, buffer: WriteableBuffer) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def _write_chunks(fd: int, chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``fd`` in order, small ones gathered (as a buffered file would: one
    write for a small file); the number of bytes written."""
    written = 0
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        written += len(chunk)
        pending.append(chunk)
        held += len(chunk)
        if held >= _WRITE_BUFFER:
            _write_all(fd, pending[0] if len(pending) == 1 else b"".join(pending))
            pending, held = [], 0
    if pending:
        _write_all(fd, pending[0] if len(pending) == 1 else b"".join(pending))
    return written


def _present(path: str) -> bool:
    """Whether there is a directory entry at ``path`` (a link counts, whatever it points to)."""
    if _ACCESS_NOFOLLOW:
        return os.access(path, os.F_OK, follow_symlinks=False)
    return os.path.lexists(path)


_ACCESS_NOFOLLOW = os.access in os.supports_follow_symlinks


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_whole(fd: int, size: int) -> bytes:
    """All of an open MailRoot file whose ``fstat`` gave ``size``: the file is written whole and
    never again (see :class:`_StoredFile`), so reading stops there, without a file object (a
    second ``fstat``) or a read of nothing after the end; a file found shorter ends sooner."""
    parts = []
    left = size
    while left > 0 and (data := os.read(fd, min(left, 8 * CHUNK))):
        parts.append(data)
        left -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def chunks(handle: BinaryIO) -> Iterator[bytes]:
    """The rest of ``handle`` in chunks."""
    while chunk := handle.read(CHUNK):
        yield chunk
