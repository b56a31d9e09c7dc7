"""Intake: a claimed Pickup file becomes a queued message or a BadMail entry (PICKUP → ...).

Postfix's ``pickup`` and ``cleanup`` in one step: the claimed file (already renamed into
SortTemp, so no other process has it) is checked against the size limit without being read,
parsed by ``parse_pickup``, and committed as ``Queue/ID.eml`` + ``Queue/ID.env``, or moved to
``BadMail/ID.BAD`` with the reason in ``.BDR`` and what could be read of the envelope in
``.BDP``. A bug in the parser puts the file into BadMail too: a file is never lost, and
nothing here raises for any file content. Reads SortTemp, writes Queue or BadMail.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime

import attrs

from spoolmail._core.envelope import Envelope, Recipient, RecipientState, encode_envelope
from spoolmail._core.pickup import PickupAccepted, PickupOptions, parse_pickup
from spoolmail._core.reply import Reply
from spoolmail._core.states import Event, State, transition
from spoolmail._store.store import SORTTEMP, MailStore, PickupClaim

__all__ = ["Intake"]

log = logging.getLogger("spoolmail")


@attrs.define
class Intake:
    """Turns claimed Pickup files into queued messages or BadMail entries."""

    store: MailStore
    clock: Callable[[], datetime]
    options: PickupOptions

    def process(self, claim: PickupClaim) -> Envelope | None:
        """Queue the claimed file and return its envelope, or put it into BadMail (``None``)."""
        now = self.clock()
        size = self.store.size(SORTTEMP, claim.file)
        if size > self.options.max_message_size:
            # Not read at all: IIS did not pick such files up either (KB Q201314).
            self._reject(
                claim,
                "5.3.4",
                f"message size {size} bytes exceeds the limit of "
                f"{self.options.max_message_size} bytes",
            )
            return None
        raw = self.store.read(SORTTEMP, claim.file)
        try:
            result = parse_pickup(raw, options=self.options, queue_id=claim.id, now=now)
        except Exception as exc:
            log.exception("the pickup parser failed on %s", claim.name)
            reason = f"internal error while reading the file: {exc!r}\n{traceback.format_exc()}"
            self._reject(claim, "4.3.0", reason)
            return None
        if not isinstance(result, PickupAccepted):
            self._reject(
                claim,
                result.status,
                result.reason,
                sender=result.sender,
                recipients=result.recipients,
            )
            return None
        transition(State.PICKUP, Event.ACCEPTED)
        envelope = Envelope(
            id=claim.id,
            sender=result.sender,
            recipients=tuple(Recipient(address) for address in result.recipients),
            arrival=now,
            next_attempt=now,
            origin=f"pickup:{claim.name}",
            size=len(result.message),
        )
        self.store.commit_queued(claim.id, result.message, encode_envelope(envelope))
        self.store.finish_claim(claim)
        return envelope

    def _reject(
        self,
        claim: PickupClaim,
        status: str,
        reason: str,
        *,
        sender: str | None = None,
        recipients: Sequence[str] = (),
    ) -> None:
        transition(State.PICKUP, Event.REJECTED)
        now = self.clock()
        reply = Reply(554 if status.startswith("5") else 451, status, reason.split("\n", 1)[0])
        envelope = Envelope(
            id=claim.id,
            sender=sender or "",
            recipients=tuple(
                Recipient(a, RecipientState.FAILED, reply, notified=True, updated=now)
                for a in recipients
            ),
            arrival=now,
            next_attempt=now,
            origin=f"pickup:{claim.name}",
            size=self.store.size(SORTTEMP, claim.file),
        )
        report = (
            f"{status} {reason}\n\n"
            f"The file {claim.name!r} in Pickup could not be queued; it is kept as {claim.id}.BAD "
            "exactly as it was written. Fix it and move it back into Pickup to send it.\n"
        )
        self.store.commit_badmail(
            claim.id,
            message=(SORTTEMP, claim.file),
            report=report.encode("utf-8"),
            envelope=encode_envelope(envelope),
        )
        log.warning("Pickup file %r went to BadMail as %s: %s", claim.name, claim.id, reason)
