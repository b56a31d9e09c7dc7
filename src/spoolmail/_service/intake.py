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
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import chain

import attrs

from spoolmail._core.envelope import Envelope, Recipient, RecipientState, encode_envelope
from spoolmail._core.headers import count_received, split_head
from spoolmail._core.pickup import (
    BodyRejected,
    PickupAccepted,
    PickupBody,
    PickupOptions,
    parse_pickup,
    pickup_head_end,
)
from spoolmail._core.reply import Reply
from spoolmail._core.states import Event, State, transition
from spoolmail._store.entries import CappedReader, EntryFacts, EntryKind, UnsafeEntry
from spoolmail._store.store import CHUNK, QUEUE, SORTTEMP, MailStore, PickupClaim, chunks

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
            return buffer, b""
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


@attrs.define
class Intake:
    """Turns claimed Pickup files into queued messages or BadMail entries."""

    store: MailStore
    clock: Callable[[], datetime]
    options: PickupOptions

    def process(self, claim: PickupClaim) -> Envelope | None:
        """Queue the claimed file and return its envelope, or put it into BadMail (``None``)."""
        envelope = self.stage(claim)
        if envelope is not None:
            self.commit([claim])
        return envelope

    def commit(self, claims: Sequence[PickupClaim]) -> None:
        """Make staged messages durable with one fsync of the Queue, then drop their claims.

        Until then a claim stays in SortTemp: after a crash, recovery finds the message queued
        (and drops the claim) or not (and takes the file in again). Nothing is lost either way.
        """
        self.store.sync(QUEUE)
        for claim in claims:
            self.store.finish_claim(claim)

    def stage(self, claim: PickupClaim) -> Envelope | None:
        """Write the claimed file's ``Queue/ID.eml`` and ``ID.env`` (each fsynced, the Queue not
        yet) and return the envelope; or put the file into BadMail and return ``None``.

        The message is not yet due: :meth:`commit` makes it durable first. Staging a batch and
        committing it once costs one directory fsync per batch instead of one per message.
        """
        now = self.clock()
        try:
            facts = self.store.inspect(SORTTEMP, claim.file)
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
            handle = self.store.open_claim(claim, facts, limit=limit)
        except UnsafeEntry as swapped:
            self._refuse(claim, swapped.facts)
            return None
        with handle:
            return self._queue(claim, handle, now)

    def _queue(self, claim: PickupClaim, handle: CappedReader, now: datetime) -> Envelope | None:
        """Read the opened claim through ``handle`` into ``Queue/ID.eml`` and ``ID.env``."""
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
        try:
            size = self.store.write(
                QUEUE, f"{claim.id}.eml", _finished(stream, body), sync_folder=False
            )
        except BodyRejected as problem:
            self._reject(
                claim,
                problem.status,
                problem.reason,
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
            size=size,
            hops=count_received(split_head(result.message)[0]),
            eight_bit=body.eight_bit or not result.message.isascii(),
        )
        # The envelope last: it is the commit (the message file alone is not yet queued). The
        # fsync of the Queue in commit() makes both renames durable before the claim goes.
        self.store.write(QUEUE, f"{claim.id}.env", encode_envelope(envelope), sync_folder=False)
        return envelope

    def _refuse(self, claim: PickupClaim, facts: EntryFacts) -> None:
        """A Pickup entry that is not a regular file with one link: reported, never read."""
        transition(State.PICKUP, Event.REJECTED)
        what = facts.describe()
        now = self.clock()
        envelope = Envelope(
            id=claim.id,
            sender="",
            recipients=(),
            arrival=now,
            next_attempt=now,
            origin=f"pickup:{claim.name}",
            size=0,
        )
        report = (
            f"5.7.0 Pickup entry {claim.name!r} refused: it is {what}\n\n"
            "Only regular files with a single link are read from Pickup (a link could make the "
            "service read files outside the MailRoot, a FIFO or device could hang it). The entry "
            "was removed from Pickup without being opened; whatever it pointed to is untouched. "
            "Write the message itself into Pickup to send it.\n"
        )
        self.store.commit_refusal(
            claim.id,
            claim,
            facts,
            report=report.encode("utf-8", "replace"),
            envelope=encode_envelope(envelope),
        )
        log.warning("Pickup entry %r refused as %s: it is %s", claim.name, claim.id, what)

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
            size=self.store.inspect(SORTTEMP, claim.file).size,
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
