"""Intake: a claimed Pickup file becomes a queued message or a BadMail entry (PICKUP → ...).

Postfix's ``pickup`` and ``cleanup`` in one step: the claimed file (already renamed into
SortTemp, so no other process has it) is checked against the size limit without being read,
parsed by ``parse_pickup``, and admitted into the Queue through the store's one door
(PICKUP --accepted--> QUEUED), or moved to BadMail with the reason (rejected: the file kept as it
was written; refused: a link, FIFO or device, never read). A bug in the parser puts the file into
BadMail too: a file is never lost, and nothing here raises for any file content. Each file's
outcome is announced (``emit``) once committed: :class:`~spoolmail._core.events.PickedUp`, then
``Queued`` or ``ToBadMail``. Works through ``_store.transitions``; builds no MailRoot path.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import chain

import attrs

from spoolmail._core.badmail import refused_report, rejected_report
from spoolmail._core.envelope import Envelope, Recipient, RecipientState, new_envelope
from spoolmail._core.events import MailEvent, PickedUp, Queued, ToBadMail
from spoolmail._core.pickup import (
    BodyRejected,
    PickupAccepted,
    PickupBody,
    PickupOptions,
    parse_pickup,
    pickup_head_end,
)
from spoolmail._core.reply import Reply
from spoolmail._core.states import Event, State
from spoolmail._store.entries import CappedReader, EntryFacts, EntryKind, UnsafeEntry
from spoolmail._store.store import CHUNK, PickupClaim, chunks
from spoolmail._store.transitions import Change, Transitions

__all__ = ["Intake"]

log = logging.getLogger("spoolmail")


# A header section may be up to 1 MiB (Mono writes 60 recipients on one line; Postfix's
# header_size_limit is a tenth of that and truncates; here a longer one is refused, never cut).
MAX_HEAD = 1024 * 1024


def _read_head(handle: CappedReader) -> tuple[bytes, bytes] | None:
    """Read up to the end of the header block: (the block and its empty line, the body's start).

    A file without an empty line is all header block. ``None`` when the header block is longer
    than :data:`MAX_HEAD`. Reads through the capped reader, so never past the size limit.
    """
    buffer = b""
    while True:
        chunk = handle.read(CHUNK)
        buffer += chunk
        end = pickup_head_end(buffer, complete=not chunk)
        if end is not None:
            return (buffer[:end], buffer[end:]) if end <= MAX_HEAD + 2 else None
        if not chunk:
            # No empty line: the whole file is the header block, held to the same limit.
            return (buffer, b"") if len(buffer) <= MAX_HEAD else None
        if len(buffer) > MAX_HEAD + CHUNK:
            return None


def _capped(handle: CappedReader, first: bytes, limit: int) -> Iterator[bytes]:
    """The body's chunks; :class:`BodyRejected` (5.3.4) once more than ``limit`` bytes were read,
    whatever the file's size said when it was claimed."""
    yield first
    yield from chunks(handle)  # type: ignore[arg-type]
    if handle.over:
        raise BodyRejected(f"the file grew past the limit of {limit} bytes while read", "5.3.4")


def _finished(stream: Iterator[bytes], body: PickupBody) -> Iterator[bytes]:
    yield from stream
    yield body.finish()


def _dot_line(head: bytes) -> bool:
    """Whether a line of ``head`` (CRLF lines) starts with "." (a field name may)."""
    return head.startswith(b".") or b"\r\n." in head


def _ignore(_event: MailEvent) -> None:
    return None


@attrs.define
class Intake:
    """Turns claimed Pickup files into queued messages or BadMail entries."""

    transitions: Transitions
    clock: Callable[[], datetime]
    options: PickupOptions
    emit: Callable[[MailEvent], None] = _ignore
    # Events fired together, told at once (``EventBus.emit_all``: the mail log writes their
    # lines in one write); without it, one by one through ``emit``.
    emit_all: Callable[[Sequence[MailEvent]], None] | None = None

    def process(self, claim: PickupClaim) -> Envelope | None:
        """Queue the claimed file and return its envelope, or put it into BadMail (``None``)."""
        envelope = self.stage(claim)
        if envelope is not None:
            self.commit([(claim, envelope)])
        return envelope

    def commit(self, staged: Sequence[tuple[PickupClaim, Envelope]]) -> None:
        """Make staged messages durable with one fsync of the Queue, then drop their claims.

        Until then a claim stays in SortTemp: after a crash, recovery finds the message queued
        (and drops the claim) or not (and takes the file in again). Nothing is lost either way.
        Only then is each announced, picked up and queued.
        """
        self.transitions.sync_admitted([claim for claim, _ in staged])
        events: list[MailEvent] = []
        for claim, envelope in staged:
            events.append(PickedUp(queue_id=claim.id, time=envelope.arrival, file=claim.name))
            events.append(Queued.of(envelope))
        if self.emit_all is not None:
            self.emit_all(events)
        else:
            for event in events:
                self.emit(event)

    def _to_badmail(self, claim: PickupClaim, status: str, reason: str) -> None:
        now = self.clock()
        self.emit(PickedUp(queue_id=claim.id, time=now, file=claim.name))
        self.emit(ToBadMail(queue_id=claim.id, time=now, status=status, reason=reason))

    def stage(self, claim: PickupClaim) -> Envelope | None:
        """Write the claimed file's ``Queue/ID.eml`` and ``ID.env`` (each fsynced, the Queue not
        yet) and return the envelope; or put the file into BadMail and return ``None``.

        The message is not yet due: :meth:`commit` makes it durable first. Staging a batch and
        committing it once costs one directory fsync per batch instead of one per message.
        """
        now = self.clock()
        try:
            facts = self.transitions.inspect_claim(claim)
        except FileNotFoundError:
            log.warning("the claim of Pickup file %r vanished from SortTemp", claim.name)
            return None
        if facts.kind is not EntryKind.FILE:
            self._refuse(claim, facts)
            return None
        limit = self.options.max_message_size
        if facts.size > limit:
            # Not read at all: IIS did not pick such files up either (KB Q201314).
            self._reject(
                claim,
                "5.3.4",
                f"message size {facts.size} bytes exceeds the limit of {limit} bytes",
            )
            return None
        try:
            handle = self.transitions.open_claim(claim, facts, limit=limit)
        except UnsafeEntry as swapped:
            self._refuse(claim, swapped.facts)
            return None
        with handle:
            return self._queue(claim, handle, now, facts.size)

    def _queue(
        self, claim: PickupClaim, handle: CappedReader, now: datetime, received: int
    ) -> Envelope | None:
        """Read the opened claim through ``handle`` into ``Queue/ID.eml`` and ``ID.env``;
        ``received``: the file's size, which the size limit was applied to."""
        limit = self.options.max_message_size
        head_and_start = _read_head(handle)
        if head_and_start is None:
            self._reject(claim, "5.3.4", f"the header section is longer than {MAX_HEAD} bytes")
            return None
        head, start = head_and_start
        if handle.over:
            self._reject(claim, "5.3.4", f"the file grew past the limit of {limit} bytes")
            return None
        try:
            result = parse_pickup(head, options=self.options, queue_id=claim.id, now=now)
        except Exception as exc:  # a parser bug must not lose the file
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
        # The header block is parsed; the body streams through a chunk at a time, so a
        # large message costs no more memory than a small one.
        body = PickupBody(
            first_line=len(head.splitlines()) + 1, dot_stuffed=self.options.dot_stuffed
        )
        stream = chain([result.message], map(body.feed, _capped(handle, start, limit)))
        admitted: list[Envelope] = []

        def envelope(size: int, dkim: tuple[str, ...]) -> Envelope:
            admitted.append(
                new_envelope(
                    claim.id,
                    sender=result.sender,
                    recipients=result.recipients,
                    now=now,
                    origin=f"pickup:{claim.name}",
                    size=size,
                    hops=result.hops,
                    eight_bit=body.eight_bit or not result.message.isascii(),
                    dkim=dkim,
                    # Every line end is CRLF now (parse_pickup and PickupBody made it so).
                    dot_lines=body.dot_lines or _dot_line(result.message),
                    # The limit applies to the file as its writer made it; stored, it has
                    # the fields intake adds and CRLF line ends (delivery checks this).
                    received_size=received if received != size else None,
                )
            )
            return admitted[0]

        # The envelope last: it is the commit (the message file alone is not yet queued). The
        # fsync of the Queue in commit() makes both renames durable before the claim goes.
        change = Change(
            id=claim.id, message=_finished(stream, body), envelope=envelope, durable=False
        )
        try:
            self.transitions.apply(State.PICKUP, Event.ACCEPTED, change)
        except BodyRejected as problem:
            self._reject(
                claim,
                problem.status,
                problem.reason,
                sender=result.sender,
                recipients=result.recipients,
            )
            return None
        return admitted[0]

    def _refuse(self, claim: PickupClaim, facts: EntryFacts) -> None:
        """A Pickup entry that is not a regular file with one link: reported, never read."""
        what = facts.describe()
        envelope = new_envelope(
            claim.id, sender="", recipients=(), now=self.clock(), origin=f"pickup:{claim.name}"
        )
        change = Change(
            id=claim.id,
            claim=claim,
            facts=facts,
            report=(report := refused_report(name=claim.name, what=what)),
            envelope=envelope,
        )
        self.transitions.apply(State.PICKUP, Event.REFUSED, change)
        log.debug("Pickup entry %r refused as %s: it is %s", claim.name, claim.id, what)
        self._to_badmail(claim, report.status, report.reason)

    def _reject(
        self,
        claim: PickupClaim,
        status: str,
        reason: str,
        *,
        sender: str | None = None,
        recipients: Sequence[str] = (),
    ) -> None:
        now = self.clock()
        reply = Reply(554 if status.startswith("5") else 451, status, reason.split("\n", 1)[0])
        envelope = new_envelope(
            claim.id,
            sender=sender or "",
            recipients=(
                Recipient(a, RecipientState.FAILED, reply, notified=True, updated=now)
                for a in recipients
            ),
            now=now,
            origin=f"pickup:{claim.name}",
            size=self.transitions.inspect_claim(claim).size,
        )
        kept_as = self.transitions.message_path(claim.id, State.BADMAIL).rpartition("/")[2]
        report = rejected_report(name=claim.name, kept_as=kept_as, status=status, reason=reason)
        change = Change(id=claim.id, claim=claim, report=report, envelope=envelope)
        self.transitions.apply(State.PICKUP, Event.REJECTED, change)
        log.debug("Pickup file %r went to BadMail as %s: %s", claim.name, claim.id, reason)
        self._to_badmail(claim, status, reason.split("\n", 1)[0])
