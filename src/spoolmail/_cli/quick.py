"""``queue flush --quiet`` answered before anything else is imported, as ``postqueue -f`` is a
small program of its own (the ``spoolmail`` command's entry point, ``_cli.entry``, asks first).

A flush starts no sooner than its order is in SortTemp. The whole command line (argparse, logging,
the settings, ``typing``) took about 25 ms of Debian's Python 3.11 to import before the order
could be written, 35 ms in all against 10 ms for an interpreter that imports nothing; this module
imports ``os`` and :mod:`spoolmail._store.orders` alone. :func:`spoolmail._cli.main.main` asks
it first too (tests and programs call it directly).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing it costs more than the rest (_store.orders)
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["quick_flush"]


def quick_flush(argv: Sequence[str]) -> int | None:
    """``queue flush --quiet`` (and ``--root DIR`` at most) on a MailRoot folder: the flush
    order written at once, without importing the command line; 0 once it is there. ``None`` for
    anything else or anything unusual (an FS URL, no SortTemp or Queue folder, a write that
    fails): the whole command then does it, and explains what is wrong."""
    rest = list(argv)
    root = "MailRoot"  # the setting's default (settings.Settings.root)
    for index, word in enumerate(rest):
        if word == "--root" and index + 1 < len(rest):
            root = rest[index + 1]
            del rest[index : index + 2]
            break
        if word.startswith("--root="):
            root = word.removeprefix("--root=")
            del rest[index]
            break
    if rest not in (["queue", "flush", "--quiet"], ["queue", "flush", "-q"]):
        return None
    sort_temp = os.path.join(root, "SortTemp")
    if not root or "://" in root:
        return None
    if not (os.path.isdir(os.path.join(root, "Queue")) and os.path.isdir(sort_temp)):
        return None
    from spoolmail._store.orders import post_flush_order  # noqa: PLC0415 (only when it is one)

    try:
        post_flush_order(sort_temp)
    except OSError:
        return None  # the whole command tries again, and reports what it meets
    return 0  # EX_OK (_cli.status), not imported for it
