"""Bounce: DSNs to senders, and BadMail for what can be neither delivered nor returned.

Postfix's ``bounce``: :meth:`Bouncer.queue_dsn` renders a DSN (``render_dsn``) for an attempt's
:class:`~spoolmail._core.states.DsnOrder` and admits it like any message (NEW --accepted-->
QUEUED), from the null reverse-path, to the original sender (and, for failures, to IIS's "Send
copy of NDR to" address). Its queue id is derived from its parent's, so a repeat after a crash
finds it already queued. :meth:`Bouncer.to_badmail` moves a null-sender message that failed into
BadMail with both reasons: why it failed, and what it was reporting. :meth:`Bouncer.damaged`
moves a message whose files cannot be read aside with the reason. The reports are
``_core.badmail``'s; the commits ``_store.transitions``'; no MailRoot path is built here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import attrs

from spoolmail._core.badmail import (
    BadMailReport,
    damaged_report,
    failure_line,
    undeliverable_report,
)
from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import Envelope, Ret, new_envelope
from spoolmail._core.states import DsnKind, DsnOrder, Event, State
from spoolmail._store.store import read_head
from spoolmail._store.transitions import Change, Transitions

__all__ = ["Bouncer"]

log = logging.getLogger("spoolmail")

HEAD_LIMIT = 1024 * 1024
# The most of the reported failures a DSN's ``about`` line names: the envelope (read at every
# claim) and a BadMail report carry it, while the DSN itself lists every recipient.
ABOUT_RECIPIENTS = 3
ABOUT_LIMIT = 1000


@attrs.define
class Bouncer:
    """Queues DSNs and writes BadMail entries (see the module docstring)."""

    transitions: Transitions
    clock: Callable[[], datetime]
    fqdn: str
    max_original_size: int
    copy_failures_to: str | None
    retry_until: Callable[[Envelope], datetime | None]

    def queue_dsn(self, envelope: Envelope, order: DsnOrder) -> Envelope | None:
        """Queue the DSN ``order`` about ``envelope``: its envelope, ``None`` if queued before."""
        if self.transitions.queued(order.id):
            return None
        now = self.clock()
        action = DsnAction(order.kind.value)
        message = render_dsn(
            envelope=envelope,
            recipients=order.recipients,
            action=action,
            original=self._original(envelope, whole=order.kind is DsnKind.FAILURE),
            reporting_mta=self.fqdn,
            dsn_id=order.id,
            now=now,
            will_retry_until=self.retry_until(envelope) if order.kind is DsnKind.DELAY else None,
            max_original_size=self.max_original_size,
        )
        recipients = [envelope.sender]
        if order.kind is DsnKind.FAILURE and self.copy_failures_to:
            recipients.append(self.copy_failures_to)
        dsn = new_envelope(
            order.id,
            sender="",
            recipients=recipients,
            now=now,
            origin=f"dsn:{envelope.id}",
            size=len(message),
            head=message,
            eight_bit=not message.isascii(),
            about=_about(order, envelope),
        )
        stored: list[Envelope] = []

        def signed(_size: int, dkim: tuple[str, ...]) -> Envelope:
            stored.append(attrs.evolve(dsn, dkim=dkim))
            return stored[-1]

        # Signed at the door like any message, when a key exists for its From: (postmaster@fqdn).
        change = Change(id=order.id, message=message, envelope=signed)
        self.transitions.apply(State.NEW, Event.ACCEPTED, change)
        return stored[-1]

    def _original(self, envelope: Envelope, *, whole: bool) -> bytes:
        """What the DSN may return: only a failure DSN returns the whole message (RFC 3461 4.3),
        as it was sent: its DKIM fields (kept in the envelope) in front of the stored bytes."""
        with self.transitions.open_message(envelope.id) as handle:
            if whole and envelope.ret is not Ret.HDRS and envelope.size <= self.max_original_size:
                return envelope.prepend + handle.read()
            head, _ = read_head(handle, limit=HEAD_LIMIT)
            return envelope.prepend + head

    def to_badmail(self, envelope: Envelope, transcript: str) -> BadMailReport:
        """A null-sender message that failed goes to BadMail, never back; returns the report."""
        report = undeliverable_report(
            recipients=envelope.recipients, about=envelope.about, transcript=transcript
        )
        change = Change(id=envelope.id, report=report, envelope=envelope)
        self.transitions.apply(State.DELIVERING, Event.UNDELIVERABLE, change)
        log.debug("%s went to BadMail: %s %s", envelope.id, report.status, report.reason)
        return report

    def damaged(self, queue_id: str, reason: str, raw: bytes) -> BadMailReport:
        """Move a claimed message whose files cannot be read into BadMail, with the reason."""
        report = damaged_report(reason=reason, envelope=raw)
        self.transitions.apply(State.DELIVERING, Event.DAMAGED, Change(id=queue_id, report=report))
        log.error("%s moved to BadMail: %s", queue_id, reason)
        return report


def _about(order: DsnOrder, envelope: Envelope) -> str:
    """What a DSN reports, in one line of at most about ABOUT_LIMIT characters."""
    named = "; ".join(failure_line(r) for r in order.recipients[:ABOUT_RECIPIENTS])
    if len(named) > ABOUT_LIMIT:
        named = named[:ABOUT_LIMIT] + " [...]"
    more = len(order.recipients) - ABOUT_RECIPIENTS
    if more > 0:
        named += f"; and {more} more"
    return f"{order.kind.value} notice for {envelope.id} from <{envelope.sender}>: {named}"
