"""Exit statuses of the ``spoolmail`` command, and how its errors are reported.

sysexits.h where it has a word for it: 0 done; 1 failed (no such id, an unreadable envelope, a
tick with errors); 2 bad usage (argparse, a wrong setting or address); 75 (``EX_TEMPFAIL``) try
again later (a message being delivered right now, a filesystem error). A command given several
ids does each one it can and exits with the worst status. Errors go to stderr as one line, never
as a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from spoolmail.exceptions import ConfigurationError, MessageError, SpoolmailError

__all__ = [
    "EX_FAILED",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "Unreadable",
    "UsageError",
    "each",
    "exit_status",
    "printable",
    "printable_json",
    "report",
    "shown",
    "worst",
]

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2  # argparse's own exit status for bad usage (sysexits' EX_USAGE is 64)
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the same command later may work

# When one command meets several failures, the exit status is the worst: a usage error beats a
# failure, which beats "try again later" (trying again will not fix the others).
_SEVERITY = {EX_OK: 0, EX_TEMPFAIL: 1, EX_FAILED: 2, EX_USAGE: 3}


class UsageError(Exception):
    """A combination of arguments argparse cannot express; exit status 2, with the usage."""


# What a terminal acts on: C0, DEL and C1 (a planted file's escape sequences move the cursor,
# clear the screen, retitle the window; a CR or NUL breaks a table).
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPED_BUT_LINES = {c: text for c, text in _ESCAPED.items() if c not in (0x09, 0x0A)}
# In a JSON line, which lets DEL and C1 stand in a string, and tabs and CRs between tokens: the
# same JSON, nothing a terminal acts on.
_JSON_ESCAPED = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)} | {0x09: " ", 0x0D: " "}


def printable(text: str, *, lines: bool = False) -> str:
    """Text from a MailRoot file (a reason, a report, a log line, an address) safe to print:
    each control character as ``\\xNN``; with ``lines``, line feeds and tabs kept (a report
    of several lines), else escaped too (one entry, one line)."""
    return text.translate(_ESCAPED_BUT_LINES if lines else _ESCAPED)


def printable_json(line: str) -> str:
    """A JSON line from a MailRoot file safe to print, and still the same JSON."""
    return line.translate(_JSON_ESCAPED)


def shown(text: str) -> str:
    """A string from outside (an id, a name), quoted, in ASCII and cut short: safe to print in
    a one-line error, whatever control characters or length it has."""
    return ascii(text) if len(text) <= 60 else f"{text[:60]!a}..."


def report(exc: SpoolmailError) -> None:
    sys.stderr.write(f"spoolmail: {exc}\n")


def exit_status(exc: SpoolmailError) -> int:
    if exc.temporary:
        return EX_TEMPFAIL
    if isinstance(exc, ConfigurationError | MessageError):
        return EX_USAGE  # the arguments are wrong (a setting, an address, a message)
    return EX_FAILED  # NotFound, an unreadable envelope (EnvelopeError), anything else


class PassedOver:
    """The names a BadMail or Drop listing passed over (no queue id, unreadable): pass it as
    ``Spool.badmail`` or ``Spool.drop``'s ``passed_over`` callback, then :meth:`tell`. They
    are not spoolmail's to show (IIS's ``{GUID}.BAD``), so a listing still succeeds; but a
    one-shot command logs only errors, and without this they went unsaid."""

    SHOWN = 5  # a copied IIS BadMail can hold thousands: the count, and the first few

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.found: list[tuple[str, str]] = []

    def __call__(self, name: str, why: str) -> None:
        self.found.append((name, why))

    def tell(self) -> None:
        """One line on stderr: how many, and the first :attr:`SHOWN` with why."""
        if not self.found:
            return
        count = len(self.found)
        names = ", ".join(f"{name} ({printable(why)})" for name, why in self.found[: self.SHOWN])
        more = f", and {count - self.SHOWN} more" if count > self.SHOWN else ""
        noun = "name" if count == 1 else "names"
        verb = "is" if count == 1 else "are"
        sys.stderr.write(
            f"spoolmail: {count} {noun} in {self.folder} {verb} not listed: {names}{more}\n"
        )


class Unreadable:
    """The Queue's messages a command left out because their envelope could not be read: pass
    it as ``Spool.queued`` or ``Spool.select``'s ``unreadable`` callback, then :meth:`tell`."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def __call__(self, queue_id: str, why: str) -> None:
        self.found.append((queue_id, why))

    def tell(self, left: str) -> int:
        """One line on stderr for each, saying it was ``left`` out ("not listed") and why;
        EX_FAILED if there were any, else EX_OK."""
        for queue_id, why in self.found:
            sys.stderr.write(
                f"spoolmail: {queue_id}: {left}, its envelope cannot be read: {why} "
                "(spoolmail run moves such a message to BadMail, with the reason)\n"
            )
        return EX_FAILED if self.found else EX_OK


def worst(*statuses: int) -> int:
    return max(statuses, key=_SEVERITY.__getitem__)


def each(ids: Iterable[str], action: Callable[[str], str | None], out: TextIO) -> int:
    """Do ``action`` to every id, printing its line; a failure is reported and the rest go on."""
    result = EX_OK
    for queue_id in dict.fromkeys(ids):
        try:
            line = action(queue_id)
        except SpoolmailError as exc:
            report(exc)
            result = worst(result, exit_status(exc))
            continue
        if line is not None:
            print(line, file=out)
    return result
