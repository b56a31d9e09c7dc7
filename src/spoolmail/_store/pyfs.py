"""The one module that imports PyFilesystem2 (``fs``).

fs 2.4.16 imports ``pkg_resources`` at import time, and setuptools 82 removed it (docs/design.md
section 8). A bare ``pip install fs`` on a new Python therefore leaves ``import fs`` broken. Here
that failure becomes one :class:`~spoolmail.exceptions.DependencyError` naming the fix, and the rest
of spoolmail imports ``fs`` names only from this module, so a later switch of backend stays local.
"""

from __future__ import annotations

import warnings

from spoolmail.exceptions import DependencyError

try:
    with warnings.catch_warnings():
        # setuptools 67-81 warn on every import of fs about its use of pkg_resources; the
        # dependency pins keep it working, so for users the warning would only be noise.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        warnings.filterwarnings("ignore", "Deprecated call to `pkg_resources", DeprecationWarning)
        from fs import errors, open_fs
        from fs.base import FS
        from fs.memoryfs import MemoryFS
        from fs.opener.errors import OpenerError, UnsupportedProtocol
        from fs.osfs import OSFS
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    if exc.name != "pkg_resources":
        raise
    raise DependencyError(
        "PyFilesystem2 (fs 2.4.16) needs pkg_resources, which setuptools 82 and later removed. "
        "Install a setuptools it can use: pip install 'setuptools<82'"
    ) from exc

__all__ = ["FS", "OSFS", "MemoryFS", "OpenerError", "UnsupportedProtocol", "errors", "open_fs"]
