"""What a storage backend guarantees, and the rule spoolmail runs it under.

The commit protocol (docs/design.md#crash-safety) rests on three promises of the filesystem: a
rename replaces its target in one step, so a claim has exactly one winner; other processes see the
same files; a symbolic link can be told from the file it points to, so Pickup never follows one. OS
filesystems keep all three and can fsync. PyFilesystem2's other backends keep fewer: a MemoryFS
lives in one process (its renames are atomic under its lock, but no other process sees it); an
object store (S3, WebDAV ... through plugins) usually has no rename at all, and ``FS.move`` there
is a copy and a delete, which two processes can both win; none of them reports links.

:func:`backend_of` says which promises a filesystem keeps, from its type and ``getmeta()``
(``supports_rename``). The store refuses to claim beside another live process on a backend
without atomic rename (the single-process rule, :func:`single_process_rule`), and says once that
a backend which cannot tell a link from a file takes every Pickup entry as the file it appears to
be. Reads the filesystem's metadata; writes nothing.
"""

from __future__ import annotations

import enum

import attrs

from spoolmail._store import pyfs

__all__ = ["Backend", "Guarantee", "backend_of", "single_process_rule"]


class Guarantee(enum.Flag):
    """The promises a backend keeps (see the module docstring)."""

    NONE = 0
    ATOMIC_RENAME = enum.auto()
    """A rename replaces its target in one step: of two processes claiming, one wins."""
    SHARED = enum.auto()
    """Other processes see the same files (not so for a MemoryFS)."""
    LINKS = enum.auto()
    """A symbolic link can be told from a file without following it."""
    FSYNC = enum.auto()
    """Files and folders can be flushed to the disk (OS filesystems)."""


@attrs.frozen
class Backend:
    """A filesystem's kind, by name, and the promises it keeps."""

    name: str
    guarantees: Guarantee

    @property
    def multi_process(self) -> bool:
        """Whether several processes may claim from it at once."""
        wanted = Guarantee.ATOMIC_RENAME | Guarantee.SHARED
        return wanted in self.guarantees

    def __str__(self) -> str:
        return self.name


OS_GUARANTEES = Guarantee.ATOMIC_RENAME | Guarantee.SHARED | Guarantee.LINKS | Guarantee.FSYNC


def backend_of(filesystem: pyfs.FS, *, os_paths: bool) -> Backend:
    """What ``filesystem`` guarantees; ``os_paths`` when its folders have OS paths (the store
    then works through :mod:`os` itself: ``os.replace``, ``lstat``, ``fsync``)."""
    name = type(filesystem).__name__
    if os_paths:
        return Backend(name, OS_GUARANTEES)
    if isinstance(filesystem, pyfs.MemoryFS):
        # MemoryFS.move renames under the filesystem's lock; nothing outside the process sees
        # it; it holds no links, so what it lists is what it is.
        return Backend(name, Guarantee.ATOMIC_RENAME | Guarantee.LINKS)
    try:
        meta = filesystem.getmeta()
    except pyfs.errors.FSError:
        meta = {}
    guarantees = Guarantee.SHARED
    if meta.get("supports_rename"):
        guarantees |= Guarantee.ATOMIC_RENAME
    return Backend(name, guarantees)


def single_process_rule(backend: Backend, others: list[str]) -> str:
    """Why claiming is refused while ``others`` (live owners' descriptions) work on a backend
    without atomic rename."""
    return (
        f"the MailRoot is on {backend}, which has no atomic rename: a claim there is a copy and "
        "a delete that two processes can both win, so only one process may work on it at a time "
        f"(the single-process rule), and {', '.join(others)} is working on it now. Stop it "
        "first, or keep the MailRoot on a filesystem with atomic rename (a local disk)."
    )
