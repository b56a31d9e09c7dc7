"""Bounce: DSNs to senders, and BadMail for what can be neither delivered nor returned.

Postfix's ``bounce``: :meth:`Bouncer.queue_dsn` renders a DSN (``render_dsn``) for an attempt's
:class:`~spoolmail._core.states.DsnOrder` and queues it like any message, from the null
reverse-path, to the original sender (and, for failures, to IIS's "Send copy of NDR to" address).
Its queue id is derived from its parent's, so a repeat after a crash finds it already queued.
:meth:`Bouncer.to_badmail` writes a null-sender message that failed into BadMail with both
reasons: why it failed, and what it was reporting. :meth:`Bouncer.damaged` moves a message whose
files cannot be read aside with the reason. Reads and writes Queue and BadMail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import attrs

from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import Envelope, Recipient, RecipientState, Ret, encode_envelope
from spoolmail._core.headers import count_received, split_head
from spoolmail._core.states import DsnKind, DsnOrder, Event, State, transition
from spoolmail._store.store import BADMAIL, QUEUE, MailStore, read_head

__all__ = ["Bouncer", "orphan_report"]

log = logging.getLogger("spoolmail")

HEAD_LIMIT = 1024 * 1024


def _reason(recipient: Recipient) -> str:
    reply = recipient.reply
    where = f" (from {reply.host})" if reply is not None and reply.host else ""
    return f"<{recipient.address}>: {reply}{where}"


@attrs.define
class Bouncer:
    """Queues DSNs and writes BadMail entries (see the module docstring)."""

    store: MailStore
    clock: Callable[[], datetime]
    fqdn: str
    max_original_size: int
    copy_failures_to: str | None
    retry_until: Callable[[Envelope], datetime | None]

    def queued_already(self, queue_id: str) -> bool:
        """Whether ``queue_id`` is committed: its message and its envelope, claimed or not.

        An envelope without its message is not: the two renames of a commit may reach the disk
        in either order, and a commit is only whole once both have.
        """
        if not self.store.exists(QUEUE, f"{queue_id}.eml"):
            return False
        if self.store.exists(QUEUE, f"{queue_id}.env"):
            return True
        # Rare (being delivered, or a commit cut short): only now list the Queue.
        files = self.store.queue_files().get(queue_id)
        return files is not None and bool(files.claims)

    def queue_dsn(self, envelope: Envelope, order: DsnOrder) -> Envelope | None:
        """Queue the DSN ``order`` about ``envelope``: its envelope, ``None`` if queued before."""
        if self.queued_already(order.id):
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
        recipients = [Recipient(envelope.sender)]
        if order.kind is DsnKind.FAILURE and self.copy_failures_to:
            recipients.append(Recipient(self.copy_failures_to))
        dsn = Envelope(
            id=order.id,
            sender="",
            recipients=tuple(recipients),
            arrival=now,
            next_attempt=now,
            origin=f"dsn:{envelope.id}",
            size=len(message),
            hops=count_received(split_head(message)[0]),
            eight_bit=not message.isascii(),
            about=f"{order.kind.value} notice for {envelope.id} from <{envelope.sender}>: "
            + "; ".join(_reason(r) for r in order.recipients),
        )
        self.store.commit_queued(order.id, message, encode_envelope(dsn))
        return dsn

    def _original(self, envelope: Envelope, *, whole: bool) -> bytes:
        """What the DSN may return: only a failure DSN returns the whole message (RFC 3461 4.3)."""
        with self.store.open(QUEUE, f"{envelope.id}.eml") as handle:
            if whole and envelope.ret is not Ret.HDRS and envelope.size <= self.max_original_size:
                return handle.read()
            head, _ = read_head(handle, limit=HEAD_LIMIT)
            return head

    def to_badmail(self, envelope: Envelope, transcript: str) -> str:
        """A null-sender message that failed goes to BadMail, never back; returns the reason."""
        failures = [r for r in envelope.recipients if r.state is RecipientState.FAILED]
        first = failures[0].reply if failures and failures[0].reply else None
        status = first.status if first else "5.0.0"
        reason = (
            f"{status} This message has a null sender (it is a delivery status notification) "
            "and cannot be delivered, so it cannot be returned to anybody."
        )
        lines = [reason, "", *(_reason(r) for r in failures), ""]
        if envelope.about:
            lines += [f"It was the {envelope.about}", ""]
        lines.append("Transcript:")
        report = "\n".join(lines) + "\n" + transcript
        self.store.commit_badmail(
            envelope.id,
            message=(QUEUE, f"{envelope.id}.eml"),
            report=report.encode("utf-8"),
            envelope=encode_envelope(envelope),
        )
        self.store.finish(envelope.id)
        log.warning("%s went to BadMail: %s", envelope.id, reason)
        return reason

    def damaged(self, queue_id: str, reason: str, raw: bytes) -> None:
        """Move a claimed message whose files cannot be read into BadMail, with the reason."""
        transition(State.DELIVERING, Event.DAMAGED)
        report = (
            f"4.3.0 {reason}\n\nThe envelope file as found:\n{raw.decode('utf-8', 'replace')}\n"
        ).encode()
        if self.store.exists(QUEUE, f"{queue_id}.eml"):
            self.store.commit_badmail(
                queue_id, message=(QUEUE, f"{queue_id}.eml"), report=report, envelope=None
            )
        else:
            self.store.write(BADMAIL, f"{queue_id}.BDR", report)
        self.store.finish(queue_id)
        log.error("%s moved to BadMail: %s", queue_id, reason)


def orphan_report() -> bytes:
    """The reason for a message found in the Queue without an envelope."""
    return (
        b"4.3.0 found in the Queue without an envelope (a commit was interrupted); "
        b"the envelope is unknown, so the message is kept here for an operator\n"
    )
