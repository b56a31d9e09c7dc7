"""The one module that imports PyFilesystem2 (``fs``).

fs 2.4.16 imports ``pkg_resources`` at import time, and setuptools 82 removed it (docs/design.md
section 8). A bare ``pip install fs`` on a new Python therefore leaves ``import fs`` broken. Here
that failure becomes one :class:`~spoolmail.exceptions.DependencyError` naming the fix, and the rest
of spoolmail imports ``fs`` names only from this module, so a later switch of backend stays local.

Importing ``pkg_resources`` costs about 0.1 s of CPU (it scans every installed distribution),
which every ``spoolmail`` command paid at start, while fs only calls its ``declare_namespace``
then. So fs is imported with a stand-in (:class:`_PkgResources`) that declares the namespace
as ``pkgutil`` does and hands anything else to the real module, imported at that first use;
and :func:`open_fs` opens fs's own protocols (``osfs``, ``mem``, ``temp`` ...) without asking
the entry points, which only plugins (``s3://``) need.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import stat
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from spoolmail.exceptions import ConfigurationError, DependencyError, StorageError


def _missing() -> DependencyError:
    return DependencyError(
        "PyFilesystem2 (fs 2.4.16) needs pkg_resources, which setuptools 82 and later removed. "
        "Install a setuptools it can use: pip install 'setuptools<82'"
    )


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # setuptools 67-81 warn on every import of fs about its use of pkg_resources; the
        # dependency pins keep it working, so for users the warning would only be noise.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        warnings.filterwarnings("ignore", "Deprecated call to `pkg_resources", DeprecationWarning)
        yield


def _real_pkg_resources() -> types.ModuleType:
    try:
        with _quiet():
            return importlib.import_module("pkg_resources")
    except ModuleNotFoundError as exc:  # pragma: no cover - setuptools removed after start-up
        if exc.name != "pkg_resources":
            raise
        raise _missing() from exc


class _PkgResources(types.ModuleType):
    """``pkg_resources`` while fs is imported: fs's ``__init__`` and ``fs.opener`` declare
    themselves namespace packages, which :meth:`declare_namespace` does as ``pkgutil`` style
    namespaces do (every ``fs`` folder on ``sys.path`` is part of the package, as a plugin
    installed elsewhere needs); every other name (``iter_entry_points``, which fs's opener
    registry keeps calling through this object) is the real module's."""

    def declare_namespace(self, name: str) -> None:
        import pkgutil  # noqa: PLC0415

        package = sys.modules[name]
        package.__path__ = pkgutil.extend_path(package.__path__, name)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_pkg_resources(), name)


def _has_pkg_resources() -> bool:
    if "pkg_resources" in sys.modules:
        return sys.modules["pkg_resources"] is not None
    return importlib.util.find_spec("pkg_resources") is not None


@contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    """``pkg_resources`` as :class:`_PkgResources` while fs is imported, unless the real one
    was imported already (then there is nothing to save). Another thread importing
    ``pkg_resources`` in that moment gets the stand-in, which answers for the real module."""
    if "pkg_resources" in sys.modules:
        yield
        return
    stand_in = _PkgResources("pkg_resources")
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


if not _has_pkg_resources():  # pragma: no cover - exercised in a subprocess by the tests
    raise _missing()
with _quiet(), _pkg_resources_stand_in():
    from fs import errors
    from fs.base import FS
    from fs.memoryfs import MemoryFS
    from fs.opener import appfs, ftpfs, memoryfs, osfs, tarfs, tempfs, zipfs
    from fs.opener import open_fs as _open_with_plugins
    from fs.opener.errors import OpenerError, UnsupportedProtocol
    from fs.opener.parse import parse_fs_url
    from fs.opener.registry import Registry
    from fs.osfs import OSFS

# fs's own openers, for the protocols fs itself provides: no entry point lookup.
_OWN_OPENERS = Registry(default_opener="osfs", load_extern=False)
for _opener in (
    osfs.OSFSOpener,
    memoryfs.MemOpener,
    tempfs.TempOpener,
    appfs.AppFSOpener,
    ftpfs.FTPOpener,
    tarfs.TarOpener,
    zipfs.ZipOpener,
):
    _OWN_OPENERS.install(_opener)


def open_fs(fs_url: str, *, create: bool = False) -> FS:
    """``fs.open_fs(fs_url, create=create)``: a path or an FS URL. fs's own protocols are
    fs's own openers; only another protocol (a plugin's) asks the installed entry points."""
    url = fs_url if "://" in fs_url else f"osfs://{fs_url}"
    if parse_fs_url(url).protocol in _OWN_OPENERS.protocols:
        return _OWN_OPENERS.open_fs(url, create=create)
    return _open_with_plugins(url, create=create)


def open_root(location: str) -> FS:
    """The filesystem of a MailRoot given as a path or an FS URL, made if missing; a protocol
    nobody opens, or a path with a NUL, is a :class:`~spoolmail.exceptions.ConfigurationError`,
    a filesystem that cannot be opened a :class:`~spoolmail.exceptions.StorageError`:
    permanent (``temporary=False``) when the path names something that is not a folder, since
    waiting will not make a file a MailRoot."""
    _refuse_a_non_folder(location)
    try:
        return open_fs(location, create=True)
    except UnsupportedProtocol as exc:
        raise ConfigurationError(f"no filesystem opener for {location!r}: {exc}") from exc
    except ValueError as exc:  # os refuses a path with a NUL byte this way
        raise ConfigurationError(f"{location!r} is no MailRoot: {exc}") from exc
    except (OpenerError, errors.CreateFailed, errors.FSError, OSError) as exc:
        raise StorageError(f"cannot open the MailRoot at {location!r}: {exc}") from exc


def _refuse_a_non_folder(location: str) -> None:
    """A local MailRoot path that names a file, a FIFO, a device or a socket (through any
    links): a permanent :class:`~spoolmail.exceptions.StorageError` saying what it is."""
    if "://" in location:
        if not location.startswith("osfs://"):
            return  # another filesystem's URL: its opener says what is wrong
        location = parse_fs_url(location).resource
    try:
        found = os.stat(location)
    except (OSError, ValueError):
        return  # missing (made by the open), unreachable or with a NUL: the open says which
    if stat.S_ISDIR(found.st_mode):
        return
    from spoolmail._store.entries import facts_from_stat  # noqa: PLC0415 (a failure path)

    what = facts_from_stat(found).describe()
    raise StorageError(
        f"cannot open the MailRoot at {location!r}: it is {what}, not a folder", temporary=False
    )


__all__ = [
    "FS",
    "OSFS",
    "MemoryFS",
    "OpenerError",
    "UnsupportedProtocol",
    "errors",
    "open_fs",
    "open_root",
]
