"""SIGHUP: read the settings file again, and say what a running service can take of it.

:func:`reread` loads the settings file with the flags the command was started with on top (a
flag still wins over the file), keeps the value in use of every key that needs a restart (the
settings table's ``restart``: the MailRoot, the user, the listening sockets, TLS key and users
read as root, the log's destinations) and logs each such change as needing one. A file that
cannot be read or is wrong is logged and changes nothing. The caller applies the rest (``run``
builds a new service from it, the listener takes new routing, access and limits) and says so
with :func:`in_use`. Reads the settings file; changes nothing itself.
"""

from __future__ import annotations

import argparse
import logging

import attrs

from spoolmail._cli import flags
from spoolmail._cli.settings import Settings, changed_keys, keys, load_settings
from spoolmail.exceptions import SpoolmailError

__all__ = ["RESTART_KEYS", "in_use", "reread"]

log = logging.getLogger("spoolmail")

RESTART_KEYS = tuple(field.name for field, key in keys() if key.restart)


def reread(current: Settings, args: argparse.Namespace) -> Settings:
    """The settings to run with after a SIGHUP (``current`` when nothing may change)."""
    if args.config is None:
        log.info("SIGHUP: no settings file to read again (--config); the log is reopened")
        return current
    try:
        new = load_settings(args.config, flags.overrides(args))
    except SpoolmailError as exc:
        log.error("SIGHUP: %s; the settings in use stay", exc)  # noqa: TRY400 (no traceback)
        return current
    kept = {}
    for name in RESTART_KEYS:
        old, wanted = getattr(current, name), getattr(new, name)
        if old != wanted:
            log.warning(
                "SIGHUP: %s changed from %r to %r: that needs a restart; %r stays until then",
                name,
                old,
                wanted,
                old,
            )
            kept[name] = old
    return attrs.evolve(new, **kept)


def in_use(old: Settings, new: Settings, args: argparse.Namespace) -> None:
    """Log that ``new`` (from :func:`reread`) is in use, and what changed from ``old``.

    Said once the caller has built what runs with them: a change it cannot build is its error
    alone, with nothing logged as changed before it.
    """
    changed = changed_keys(old, new)
    log.info(
        "SIGHUP: the new settings are in use (read from %s); %s",
        args.config,
        f"changed: {', '.join(changed)}" if changed else "nothing changed",
    )
