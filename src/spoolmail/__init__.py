"""spoolmail: the IIS SMTP Service's MailRoot (Pickup, Queue, BadMail, Drop) as a crash-safe spool.

Programs drop messages into ``Pickup/`` (or call :meth:`Spool.submit`); a :class:`MailService`
queues them, delivers local domains into ``Drop/`` and everything else over SMTP, retries on the
IIS schedule, returns failures to the sender as RFC 3464 DSNs, and puts what cannot be delivered
or returned into ``BadMail/`` with the reason. See ``docs/`` for the guide and file formats.
"""

import importlib

# Not typing.TYPE_CHECKING: importing typing (re, collections, functools with it) is about 10 ms
# of an interpreter's start, which ``spoolmail queue flush --quiet`` does without
# (``_cli.quick``); type checkers read the name as typing's.
TYPE_CHECKING = False

# Every public name is imported at its first use (PEP 562, ``__getattr__`` below): a program that
# needs the Spool alone, and the spoolmail command that needs only its subcommand's modules, do
# not pay at start-up for the listener, DKIM, DNS and the service. Type checkers, IDEs and
# ``from spoolmail import X`` see the same names as before.
if TYPE_CHECKING:
    __version__: str

    from spoolmail._core.dkim import (
        Canonicalization,
        DkimAlgorithm,
        DkimKey,
        DkimPolicy,
        DkimSigner,
    )
    from spoolmail._core.envelope import Envelope, Notify, Recipient, RecipientState, Ret
    from spoolmail._core.events import MailEvent
    from spoolmail._core.reply import Reply, Severity
    from spoolmail._core.retry import RetryPolicy
    from spoolmail._core.routing import (
        Credentials,
        Hop,
        HopKind,
        Route,
        RouteKind,
        Router,
        SmartHostMode,
        Target,
        TlsPolicy,
    )
    from spoolmail._core.shares import Share
    from spoolmail._core.states import State
    from spoolmail._core.suppression import Suppressed
    from spoolmail._core.throttle import ThrottleRules
    from spoolmail._core.transcript import Transcript
    from spoolmail._listen.listener import Listener, ListenerLimits
    from spoolmail._listen.passwords import PasswordFile
    from spoolmail._service.checks import HostNameCheck, check_host_name
    from spoolmail._service.observers import Stats
    from spoolmail._service.service import Limits, MailService, Report
    from spoolmail._store.spool import BadMailItem, DropItem, QueuedMessage, Spool
    from spoolmail._store.store import Durability
    from spoolmail._store.submission import Pickup
    from spoolmail._store.suppression import SuppressionList
    from spoolmail._transport.base import HostResolver, Outgoing, Resolution, Transport
    from spoolmail._transport.mtasts import HttpsPolicyFetcher, PolicyFetcher
    from spoolmail._transport.smtp import SmtpTransport
    from spoolmail._transport.timeouts import SmtpTimeouts
    from spoolmail.exceptions import SpoolmailError

del TYPE_CHECKING  # not a name of the package

# Where each exported name is defined: ``__getattr__`` imports it from there when first asked.
_ORIGINS = {
    "BadMailItem": "spoolmail._store.spool",
    "Canonicalization": "spoolmail._core.dkim",
    "Credentials": "spoolmail._core.routing",
    "DkimAlgorithm": "spoolmail._core.dkim",
    "DkimKey": "spoolmail._core.dkim",
    "DkimPolicy": "spoolmail._core.dkim",
    "DkimSigner": "spoolmail._core.dkim",
    "DropItem": "spoolmail._store.spool",
    "Durability": "spoolmail._store.store",
    "Envelope": "spoolmail._core.envelope",
    "Hop": "spoolmail._core.routing",
    "HopKind": "spoolmail._core.routing",
    "HostNameCheck": "spoolmail._service.checks",
    "HostResolver": "spoolmail._transport.base",
    "HttpsPolicyFetcher": "spoolmail._transport.mtasts",
    "Limits": "spoolmail._service.service",
    "Listener": "spoolmail._listen.listener",
    "ListenerLimits": "spoolmail._listen.listener",
    "MailEvent": "spoolmail._core.events",
    "MailService": "spoolmail._service.service",
    "Notify": "spoolmail._core.envelope",
    "Outgoing": "spoolmail._transport.base",
    "PasswordFile": "spoolmail._listen.passwords",
    "Pickup": "spoolmail._store.submission",
    "PolicyFetcher": "spoolmail._transport.mtasts",
    "QueuedMessage": "spoolmail._store.spool",
    "Recipient": "spoolmail._core.envelope",
    "RecipientState": "spoolmail._core.envelope",
    "Reply": "spoolmail._core.reply",
    "Report": "spoolmail._service.service",
    "Resolution": "spoolmail._transport.base",
    "Ret": "spoolmail._core.envelope",
    "RetryPolicy": "spoolmail._core.retry",
    "Route": "spoolmail._core.routing",
    "RouteKind": "spoolmail._core.routing",
    "Router": "spoolmail._core.routing",
    "Severity": "spoolmail._core.reply",
    "Share": "spoolmail._core.shares",
    "SmartHostMode": "spoolmail._core.routing",
    "SmtpTimeouts": "spoolmail._transport.timeouts",
    "SmtpTransport": "spoolmail._transport.smtp",
    "Spool": "spoolmail._store.spool",
    "SpoolmailError": "spoolmail.exceptions",
    "State": "spoolmail._core.states",
    "Stats": "spoolmail._service.observers",
    "Suppressed": "spoolmail._core.suppression",
    "SuppressionList": "spoolmail._store.suppression",
    "Target": "spoolmail._core.routing",
    "ThrottleRules": "spoolmail._core.throttle",
    "TlsPolicy": "spoolmail._core.routing",
    "Transcript": "spoolmail._core.transcript",
    "Transport": "spoolmail._transport.base",
    "check_host_name": "spoolmail._service.checks",
}

__all__ = [
    "BadMailItem",
    "Canonicalization",
    "Credentials",
    "DkimAlgorithm",
    "DkimKey",
    "DkimPolicy",
    "DkimSigner",
    "DropItem",
    "Durability",
    "Envelope",
    "Hop",
    "HopKind",
    "HostNameCheck",
    "HostResolver",
    "HttpsPolicyFetcher",
    "Limits",
    "Listener",
    "ListenerLimits",
    "MailEvent",
    "MailService",
    "Notify",
    "Outgoing",
    "PasswordFile",
    "Pickup",
    "PolicyFetcher",
    "QueuedMessage",
    "Recipient",
    "RecipientState",
    "Reply",
    "Report",
    "Resolution",
    "Ret",
    "RetryPolicy",
    "Route",
    "RouteKind",
    "Router",
    "Severity",
    "Share",
    "SmartHostMode",
    "SmtpTimeouts",
    "SmtpTransport",
    "Spool",
    "SpoolmailError",
    "State",
    "Stats",
    "Suppressed",
    "SuppressionList",
    "Target",
    "ThrottleRules",
    "TlsPolicy",
    "Transcript",
    "Transport",
    "__version__",
    "check_host_name",
]


def __getattr__(name: str) -> object:
    """Import an exported name at its first use; it is then a plain module attribute."""
    origin = _ORIGINS.get(name)
    if origin is not None:
        value = getattr(importlib.import_module(origin), name)
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _version() -> str:
    """The installed distribution's version, read when asked: ``importlib.metadata`` costs
    tens of milliseconds to import, which no command but ``spoolmail --version`` needs."""
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version("spoolmail")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0.0.0"
