"""Flush orders as files: what ``queue flush`` leaves in SortTemp for a running service.

An order is a trigger file, ``SortTemp/OWNER.TOKEN.trigger``, holding ``{"flush": {...}}``
(``MailStore.write_flush_trigger`` writes it through the store, ``MailStore.take_triggers``
reads it). :func:`post_flush_order` writes one with the standard library alone, as
``postqueue -f`` is a small program of its own: ``spoolmail queue flush --quiet`` spends most of
its time importing the command line, and a flush starts no sooner than the order is there.
No attrs, no PyFilesystem2 here: importing this module must stay cheap.
"""

from __future__ import annotations

import os

from spoolmail._core.base32 import token

# Not typing.TYPE_CHECKING: importing typing (and with it re, collections, functools) took
# longer than the rest of the quick flush (spoolmail._cli.quick); type checkers read the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["FLUSH_ALL", "FLUSH_TRIGGER", "TRIGGER_SUFFIX", "flush_order", "post_flush_order"]

TRIGGER_SUFFIX = ".trigger"
# How a flush order's trigger begins (json.dumps of {"flush": ...}); no other trigger does.
FLUSH_TRIGGER = b'{"flush"'

_CREATE = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


def flush_order(
    *, sender: str | None = None, domain: str | None = None, ids: Iterable[str] = ()
) -> bytes:
    """The trigger's bytes: every waiting message (from ``sender``, with a pending recipient at
    ``domain``; or only ``ids``) is to be due now."""
    import json  # noqa: PLC0415 (not needed by a flush of everything: FLUSH_ALL)

    order: dict[str, object] = {"sender": sender, "domain": domain}
    chosen = sorted(set(ids))
    if chosen:
        order["ids"] = chosen
    return json.dumps({"flush": order}).encode()


#: :func:`flush_order` of every waiting message, made without json (tests/cli/test_startup.py).
FLUSH_ALL = b'{"flush": {"sender": null, "domain": null}}'


def post_flush_order(sort_temp: str) -> None:
    """Write a flush order of the whole Queue into the folder ``sort_temp`` (an OS path), as
    the store writes every file: a temp file written and fsync'd, renamed into its name, the
    folder fsync'd. ``OSError`` if it cannot be written. A temp file left by a crash is swept
    once it is a lease old (``MailStore.sweep_temp``: its writer never announces itself)."""
    owner = token(os.urandom(10))
    name = f"{owner}.{token(os.urandom(12))}"
    temp = os.path.join(sort_temp, f"{name}.tmp")
    data = FLUSH_ALL
    fd = os.open(temp, _CREATE, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(sort_temp, f"{name}{TRIGGER_SUFFIX}"))
    except BaseException:
        try:  # noqa: SIM105 (contextlib: an import the quick flush does without)
            os.unlink(temp)
        except OSError:
            pass  # renamed already: nothing to drop
        raise
    if os.name != "nt":
        fd = os.open(sort_temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
