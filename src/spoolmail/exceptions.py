"""Every exception spoolmail raises on purpose.

Expected mail failures (a 4xx or 5xx reply, a malformed pickup file) are values, not exceptions:
they travel as :class:`spoolmail.Reply` and end in the Queue, a DSN or BadMail. The exceptions
below are for broken infrastructure, bad arguments and bugs. Each one also subclasses the
builtin it resembles, so callers can catch either::

    SpoolmailError                      .temporary: retrying later may help
    ├── ConfigurationError  ValueError  a setting or argument is wrong
    ├── DependencyError     ImportError a dependency cannot be imported (fs on a new setuptools)
    ├── StorageError        OSError     the spool's filesystem failed (temporary)
    │   └── LayoutError                 the MailRoot folders are not on one filesystem
    ├── NotFound            LookupError no queued, BadMail or Drop item has that id
    ├── EnvelopeError       ValueError  an envelope file (.env, .BDP) cannot be read
    ├── MessageError        ValueError  a message handed to ``Spool.submit`` cannot be a message
    ├── TransportError      ConnectionError  an SMTP conversation broke (temporary)
    └── InvalidTransition   RuntimeError the state table has no such transition (a bug)
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DependencyError",
    "EnvelopeError",
    "InvalidTransition",
    "LayoutError",
    "MessageError",
    "NotFound",
    "SpoolmailError",
    "StorageError",
    "TransportError",
]


class SpoolmailError(Exception):
    """Root of spoolmail's exceptions. ``temporary`` says whether trying again later may help."""

    temporary: bool = False

    def __init__(self, message: str, *, temporary: bool | None = None) -> None:
        super().__init__(message)
        if temporary is not None:
            self.temporary = temporary


class ConfigurationError(SpoolmailError, ValueError):
    """A setting or argument is wrong; the message names it and what would be right."""


class DependencyError(SpoolmailError, ImportError):
    """A dependency cannot be imported; the message names the fix."""


class StorageError(SpoolmailError, OSError):
    """The spool's filesystem failed (full, unreadable, gone). Retrying later may help."""

    temporary = True


class LayoutError(StorageError):
    """The MailRoot folders are not on one filesystem, so a rename between them would be a copy."""

    temporary = False


class NotFound(SpoolmailError, LookupError):
    """No queued, BadMail or Drop item has that id."""


class EnvelopeError(SpoolmailError, ValueError):
    """An envelope file cannot be read: truncated, not JSON, or of a version unknown here."""


class MessageError(SpoolmailError, ValueError):
    """A message handed to spoolmail cannot be accepted; ``status`` is the enhanced status code."""

    def __init__(self, message: str, *, status: str = "5.6.0") -> None:
        super().__init__(message)
        self.status = status


class TransportError(SpoolmailError, ConnectionError):
    """An SMTP conversation broke (refused, dropped, timed out, garbage); later may work."""

    temporary = True


class InvalidTransition(SpoolmailError, RuntimeError):
    """The state table has no entry for this state and event: a bug in spoolmail, never mail."""
