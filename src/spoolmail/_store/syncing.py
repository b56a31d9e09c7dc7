"""syncfs(2): making many new files durable with one call, where Linux has it.

Two writers use it: intake, which makes a Pickup batch's Queue files durable at once
(``MailStore.sync_queued``), and ``PickupFile``, whose user may not open a write-only Pickup
folder to fsync it. Before Linux 5.8 syncfs did not report a failed writeback of a file's data
as fsync does, so it is not offered there.

``ctypes`` is imported at the first call, not with the module: ``PickupFile`` imports this for
the rare write-only Pickup, and ``spoolmail-sendmail``, started once a message, would pay for
it every time (about 1.3 ms of its start-up).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable

__all__ = ["sync_file_system", "syncfs"]


def syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux 5.8 and later), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        release = tuple(int(part) for part in platform.release().split(".")[:2])
    except ValueError:
        return None
    if release < (5, 8):
        return None
    import ctypes  # noqa: PLC0415 (see the module's text)

    # The process's own symbols include libc's; no search for the library (ldconfig).
    found: Callable[[int], int] | None = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    return found


def sync_file_system(fd: int) -> None:
    """Flush the filesystem ``fd`` is on: syncfs where there is one, else sync(2) of every one;
    an ``OSError`` when syncfs reports a failure."""
    call = syncfs()
    if call is None:
        os.sync()
        return
    if call(fd) != 0:
        import ctypes  # noqa: PLC0415 (imported by syncfs() already)

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
