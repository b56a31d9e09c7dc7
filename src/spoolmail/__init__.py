"""spoolmail: the IIS SMTP Service's MailRoot (Pickup, Queue, BadMail, Drop) as a crash-safe spool.

Programs drop messages into ``Pickup/`` (or call :meth:`Spool.submit`); a :class:`MailService`
queues them, delivers local domains into ``Drop/`` and everything else over SMTP, retries on the
IIS schedule, returns failures to the sender as RFC 3464 DSNs, and puts what cannot be delivered
or returned into ``BadMail/`` with the reason. See ``docs/`` for the guide and file formats.
"""

from importlib import metadata as _metadata

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

try:
    __version__ = _metadata.version("spoolmail")
except (
    _metadata.PackageNotFoundError
):  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

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
