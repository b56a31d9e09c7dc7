"""What IIS left in a MailRoot that spoolmail does not take by itself: Queue files without envelope.

IIS's NTFS store driver kept each queued message as ``Queue/NTFS_<hex>.EML`` and its envelope
(MAIL FROM, every RCPT TO) in an NTFS alternate data stream of that file, which a copy to another
filesystem (Linux, a zip archive, most network shares) does not carry. spoolmail's own queue
entries are ``ID.eml`` beside ``ID.env``, so such a file would lie in ``Queue/`` for ever, read
by nobody. :func:`stranded_queue_files` finds them, :func:`warn_stranded` logs each one, and
:func:`import_queue_file` re-injects one: the envelope is derived from its headers as for a
Pickup file without ``x-sender`` / ``x-receiver`` lines (``Sender:``, else ``From:``; ``To:``,
``Cc:``, and ``Bcc:`` should the header be there), the message is written into Pickup with those
lines by one atomic write (SortTemp, then a rename), and the Queue file is removed only after.
A recipient that only the lost envelope named (a blind copy, whose header the sending client had
removed) cannot be recovered. Reads and writes through the store; never touches spoolmail's
own queue entries.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime

import attrs

from spoolmail._core.pickup import PickupOptions, PickupRejected, parse_pickup, render_pickup
from spoolmail._store.store import MailStore
from spoolmail.exceptions import MessageError, NotFound

__all__ = [
    "BCC_WARNING",
    "Imported",
    "import_queue_file",
    "is_iis_queue_file",
    "stranded_queue_files",
    "warn_stranded",
]

log = logging.getLogger("spoolmail")

# The NTFS store driver's names (ntfsdrv.dll): NTFS_ and hex digits, .EML. Matched in any case,
# as Windows matched them; anything else in Queue/ is not IIS's and not touched here.
_IIS_QUEUE_FILE = re.compile(r"NTFS_[0-9A-Za-z_{}-]+\.EML", re.IGNORECASE)

BCC_WARNING = (
    "the envelope IIS kept in an NTFS stream is lost: recipients come from To:, Cc: (and Bcc: if "
    "present), so a blind copy that only the envelope named is not sent"
)


def is_iis_queue_file(name: str) -> bool:
    """Whether ``name`` is an IIS Queue file (``NTFS_<hex>.EML``) rather than one of ours."""
    return bool(_IIS_QUEUE_FILE.fullmatch(name))


def stranded_queue_files(store: MailStore) -> list[str]:
    """The IIS Queue files in ``Queue/``, sorted: messages nothing will deliver until imported."""
    return sorted(name for name in store.queue_names() if is_iis_queue_file(name))


def warn_stranded(store: MailStore) -> list[str]:
    """Log a warning for each IIS Queue file (once per call: at start-up); returns their names."""
    names = stranded_queue_files(store)
    for name in names:
        log.warning(
            "Queue/%s is an IIS queue file whose envelope was lost in the copy: it is not "
            "delivered until imported (spoolmail queue import-iis)",
            name,
        )
    return names


@attrs.frozen
class Imported:
    """One IIS Queue file put into Pickup: its names and the envelope derived from its headers."""

    name: str
    pickup: str
    sender: str
    recipients: tuple[str, ...]


def import_queue_file(
    store: MailStore,
    name: str,
    *,
    clock: Callable[[], datetime],
    default_domain: str,
    max_message_size: int,
    dot_stuffed: bool = False,
    dry_run: bool = False,
) -> Imported:
    """Move the IIS Queue file ``Queue/name`` into Pickup with an envelope read from its headers.

    The Pickup file keeps the IIS name (``Pickup/NTFS_….EML``), so the queued message's origin
    says where it came from. ``dot_stuffed`` must be the service's ``pickup_dot_stuffed``: a
    Queue file holds the message itself, not dot-stuffed, so its leading dots are doubled for a
    service that will remove one (KB Q286358). ``dry_run`` derives and checks, and moves nothing.
    Raises :class:`NotFound` if the file is gone and :class:`MessageError` if no envelope can be
    derived (no sender, no recipient, headers that do not parse) or it is over
    ``max_message_size``; the file then stays where it is.
    """
    if not is_iis_queue_file(name):
        raise NotFound(f"Queue/{name} is not an IIS queue file (NTFS_<hex>.EML)")
    try:
        # Its size first: a file of gigabytes is refused without being read into memory.
        _within(name, store.queue_file_size(name), max_message_size)
        data, longer = store.read_queue_file(name, limit=max_message_size)
        if longer:  # it grew meanwhile: nothing past the limit was read
            _within(name, max(store.queue_file_size(name), len(data) + 1), max_message_size)
    except FileNotFoundError:
        raise NotFound(f"no IIS queue file Queue/{name}") from None
    found = parse_pickup(
        data,
        options=PickupOptions(
            fqdn="localhost", default_domain=default_domain, max_message_size=len(data) + 1
        ),
        queue_id="iis-import",
        now=clock(),
    )
    if isinstance(found, PickupRejected):
        raise MessageError(f"Queue/{name}: {found.reason}", status=found.status)
    imported = Imported(name, name, found.sender, found.recipients)
    if dry_run:
        return imported
    pickup = render_pickup(
        data, sender=found.sender, recipients=found.recipients, dot_stuffed=dot_stuffed
    )
    # Written whole in SortTemp and renamed into Pickup (never seen half-written there); the
    # Queue file goes only once that is durable. A crash in between leaves both, and importing
    # again replaces the Pickup file of the same name, unless the service took it meanwhile:
    # then the message is sent twice, the at-least-once of every spoolmail step.
    store.move_queue_file_to_pickup(name, pickup)
    return imported


def _within(name: str, size: int, max_message_size: int) -> None:
    if size > max_message_size:
        raise MessageError(
            f"Queue/{name} is {size} bytes, over max_message_size ({max_message_size}): "
            "raise the limit to import it",
            status="5.3.4",
        )
