"""The store's side of the state machine: one atomic commit per transition, chosen by the table.

The service, intake, bounce and the operator commands say what happened (a state and an event,
as ``_core.states`` names them) and hand over a :class:`Change`, the values the commit needs;
:meth:`Transitions.apply` looks the pair up in :data:`~spoolmail._core.states.TABLE` and performs
the :class:`~spoolmail._core.states.Commit` listed there, the way h11's connection applies its
state table. A pair the table does not list raises
:class:`~spoolmail.exceptions.InvalidTransition` before anything is touched.

Every commit is one of :class:`~spoolmail._store.store.MailStore`'s atomic file protocols
(docs/design.md#crash-safety): a message enters the Queue only through
:meth:`Transitions.admit` (its
bytes first, the envelope last), a claim is a rename, a finish removes the envelope last, a move
to BadMail writes the report first and renames the message last. This module and ``store`` are
the only code that builds MailRoot paths; what a file name looks like is decided here, not by
callers. Reads and writes Queue, BadMail, Pickup (resubmitted entries), Drop and SortTemp claims.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import BinaryIO

import attrs

from spoolmail._core.badmail import BadMailReport, render_badmail_report
from spoolmail._core.envelope import Envelope, encode_envelope
from spoolmail._core.states import Commit, Event, State, step
from spoolmail._core.transcript import transcript_history
from spoolmail._store.entries import CappedReader, EntryFacts
from spoolmail._store.store import (
    DROP,
    QUEUE,
    SORTTEMP,
    MailStore,
    PickupClaim,
    chunks,
    envelope_file,
    message_file,
    report_file,
)

__all__ = ["Change", "Transitions"]

QUEUED = State.QUEUED
# A rescan reads 100,000 envelopes' signatures: their place is looked up once, here.
_ENVELOPES, _ENVELOPE = envelope_file(QUEUED, "")


@attrs.frozen(kw_only=True)
class Change:
    """What a transition commits: the values its :class:`~spoolmail._core.states.Commit` needs.

    - ``id``: the queue id, always.
    - ``envelope``: the envelope to write (``Envelope`` or its file's bytes as read, for one
      handed back unchanged); for :data:`~Commit.ADMIT` also a function of the stored message's
      size, called once the message is written (intake learns the size by writing it).
    - ``message``: the message bytes or chunks to admit.
    - ``claim`` / ``facts``: a Pickup claim going to BadMail, and what the entry was.
    - ``report``: why a message goes to BadMail.
    - ``transcripts``: transcript texts by kind (``RTR``, ``LTR``) to keep with a handed-back
      envelope.
    - ``owner``: whose claim a finish or a recovery is about (default: this process's).
    - ``durable``: ``False`` leaves an admission's Queue fsync to :meth:`Transitions.sync_admitted`
      (intake makes a batch durable with one fsync).
    """

    id: str
    envelope: Envelope | bytes | Callable[[int], Envelope] | None = None
    message: bytes | Iterable[bytes] | None = None
    claim: PickupClaim | None = None
    facts: EntryFacts | None = None
    report: BadMailReport | None = None
    transcripts: Mapping[str, str] = attrs.Factory(dict)
    owner: str | None = None
    durable: bool = True


def _envelope_bytes(change: Change) -> bytes | None:
    """The envelope file a commit writes (a size-dependent envelope is for admissions only)."""
    envelope = change.envelope
    if envelope is None or isinstance(envelope, bytes):
        return envelope
    if isinstance(envelope, Envelope):
        return encode_envelope(envelope)
    raise ValueError(f"{change.id}: only an admission builds its envelope from the size")


class Transitions:
    """The MailRoot's transitions, each one atomic commit on ``files`` (see the module doc)."""

    def __init__(self, files: MailStore) -> None:
        self.files = files
        self._commits: dict[Commit, Callable[[Change], bool]] = {
            Commit.ADMIT: self.admit,
            Commit.CLAIM: self.claim,
            Commit.HAND_BACK: self.hand_back,
            Commit.FINISH: self.finish,
            Commit.TO_BADMAIL: self.to_badmail,
            Commit.REFUSE: self.refuse,
            Commit.RECOVER: self.recover,
            Commit.RESUBMIT: self.resubmit,
            Commit.DISCARD: self.discard,
        }

    def apply(self, state: State, event: Event, change: Change) -> State | None:
        """Perform the transition the table lists for ``event`` in ``state``: the new state, or
        ``None`` when the message was not there to change (another process had it first)."""
        found = step(state, event)
        return found.target if self._commits[found.commit](change) else None

    # -- the commits, one per Commit (each returns whether the message was there) --------------

    def admit(self, change: Change) -> bool:
        """The one door into the Queue: ``ID.eml`` written, then ``ID.env`` (the commit).

        Both files are fsync'd; the Queue folder once for both renames (or, ``durable=False``,
        once for a batch in :meth:`sync_admitted`): until that fsync returns, the source of the
        message (a Pickup claim, a parent's claimed attempt, a BadMail entry) still exists and
        recovery admits it again, so the order in which the two renames reach the disk does not
        matter. An error raised while the message streams in (a size limit) leaves nothing.
        """
        made, message = change.envelope, change.message
        if message is None or made is None:
            raise ValueError(f"admitting {change.id} needs its message and its envelope")
        envelope: bytes | Callable[[int], bytes]
        if callable(made):
            build = made

            def encoded(size: int) -> bytes:
                return encode_envelope(build(size))

            envelope = encoded
        else:
            envelope = _envelope_bytes(change) or b""
        self.files.commit_queued(change.id, message, envelope, sync=change.durable)
        return True

    def claim(self, change: Change) -> bool:
        """Rename ``ID.env`` to ``ID.OWNER.env``; ``False`` if it is gone (claimed or finished)."""
        return self.files.claim_queued(change.id)

    def hand_back(self, change: Change) -> bool:
        """Keep the transcripts, commit the new envelope under the claim, hand the claim back."""
        data = _envelope_bytes(change)
        if data is None:
            raise ValueError(f"handing {change.id} back needs its envelope")
        for kind, text in change.transcripts.items():
            self.files.write(QUEUE, f"{change.id}.{kind}", text.encode())
        self.files.release(change.id, data)
        return True

    def finish(self, change: Change) -> bool:
        """Remove a finished message: message and transcripts first, the claimed envelope last."""
        self.files.finish(change.id, change.owner)
        return True

    def to_badmail(self, change: Change) -> bool:
        """Report (``.BDR``) and envelope (``.BDP``) into BadMail, then the message (``.BAD``, the
        commit): a claimed Pickup file, or a queued message whose remaining files then go."""
        if change.report is None:
            raise ValueError(f"moving {change.id} to BadMail needs a report")
        files, queue_id = self.files, change.id
        report = render_badmail_report(change.report)
        envelope = _envelope_bytes(change)
        if change.claim is not None:
            files.commit_badmail(
                queue_id, message=(SORTTEMP, change.claim.file), report=report, envelope=envelope
            )
            return True
        queued = message_file(QUEUED, queue_id)
        if files.exists(*queued):
            files.commit_badmail(queue_id, message=queued, report=report, envelope=envelope)
        else:
            files.write(*report_file(queue_id), report)
            if envelope is not None:
                files.write(*envelope_file(State.BADMAIL, queue_id), envelope)
        files.finish(queue_id, change.owner)
        return True

    def refuse(self, change: Change) -> bool:
        """A claimed Pickup entry that is no regular single-link file: reported, unlinked."""
        envelope = _envelope_bytes(change)
        if change.claim is None or change.facts is None or change.report is None or not envelope:
            raise ValueError(f"refusing {change.id} needs its claim, facts, report and envelope")
        self.files.commit_refusal(
            change.id,
            change.claim,
            change.facts,
            report=render_badmail_report(change.report),
            envelope=envelope,
        )
        return True

    def recover(self, change: Change) -> bool:
        """Take a dead owner's delivery claim over and hand it back to the Queue as it was;
        ``False`` if another process took it over first."""
        files, queue_id, owner = self.files, change.id, change.owner or self.files.owner
        if owner != files.owner and not files.take_over_queued(queue_id, owner):
            return False
        files.rename(
            (QUEUE, files.claimed_name(queue_id, files.owner)), envelope_file(QUEUED, queue_id)
        )
        return True

    def resubmit(self, change: Change) -> bool:
        """``BadMail/ID.BAD`` back into Pickup as ``ID.eml``, then its reports removed."""
        if not self.files.rename(
            message_file(State.BADMAIL, change.id), message_file(State.PICKUP, change.id)
        ):
            return False
        self.remove_badmail_reports(change.id)
        return True

    def discard(self, change: Change) -> bool:
        """Remove a BadMail entry's files; whether there was any."""
        removed = self.files.remove(*message_file(State.BADMAIL, change.id))
        return self.remove_badmail_reports(change.id) or removed

    # -- what the commits work on --------------------------------------------------------------

    @staticmethod
    def pickup_name(queue_id: str) -> str:
        """The Pickup file name that keeps ``queue_id`` (see ``MailStore.pickup_id``)."""
        return message_file(State.PICKUP, queue_id)[1]

    def sync_admitted(self, claims: Iterable[PickupClaim]) -> None:
        """Make a batch of admissions durable with one fsync of the Queue, then drop the claims
        they came from: until then a crash leaves the claim, and recovery admits it again."""
        self.files.sync(QUEUE)
        for claim in claims:
            self.files.finish_claim(claim)

    def queued(self, queue_id: str) -> bool:
        """Whether ``queue_id`` is committed: its message and its envelope, claimed or not.

        An envelope without its message is not: the two renames of a commit may reach the disk
        in either order, and a commit is only whole once both have.
        """
        if not self.files.exists(*message_file(QUEUED, queue_id)):
            return False
        if self.files.exists(*envelope_file(QUEUED, queue_id)):
            return True
        # Rare (being delivered, or a commit cut short): only now list the Queue.
        entry = self.files.queue_files().get(queue_id)
        return entry is not None and bool(entry.claims)

    @staticmethod
    def message_path(queue_id: str, state: State = QUEUED) -> str:
        """Where the message of ``queue_id`` is kept in ``state``, for people
        (``Queue/ID.eml``, ``BadMail/ID.BAD``)."""
        return "/".join(message_file(state, queue_id))

    def has_message(self, queue_id: str) -> bool:
        return self.files.exists(*message_file(QUEUED, queue_id))

    def claimed(self, queue_id: str) -> bool:
        """Whether this process holds the delivery claim of ``queue_id``."""
        return self.files.exists(QUEUE, self.files.claimed_name(queue_id, self.files.owner))

    def claimed_envelope(self, queue_id: str) -> bytes:
        """The envelope file of a message this process has claimed, as it is on disk."""
        return self.files.read_claimed(queue_id)

    def envelope(self, queue_id: str) -> bytes:
        """A queued (unclaimed) message's envelope file; ``FileNotFoundError`` if not there."""
        return self.files.read(_ENVELOPES, queue_id + _ENVELOPE)

    def envelope_signature(self, queue_id: str) -> tuple[int, ...] | None:
        """See :meth:`MailStore.signature`: changes whenever the envelope is rewritten."""
        return self.files.signature(_ENVELOPES, queue_id + _ENVELOPE)

    def open_message(self, queue_id: str) -> BinaryIO:
        """The stored message of a queued id, for reading; ``FileNotFoundError`` if gone."""
        return self.files.open(*message_file(QUEUED, queue_id))

    def transcript_history(self, queue_id: str, kind: str) -> str:
        """The attempts a transcript (``RTR`` / ``LTR``) recorded so far; ``""`` if none."""
        try:
            return transcript_history(self.files.read(QUEUE, f"{queue_id}.{kind}").decode())
        except FileNotFoundError:
            return ""

    def write_drop(self, queue_id: str, data: Iterable[bytes]) -> tuple[str, int]:
        """Write ``Drop/ID.eml`` whole (replacing a copy a crash left): its name and size."""
        name = f"{queue_id}.eml"
        return f"{DROP}/{name}", self.files.write(DROP, name, data)

    @contextmanager
    def open_badmail_message(self, queue_id: str) -> Iterator[Iterator[bytes]]:
        """The chunks of ``BadMail/ID.BAD``, for admitting it again."""
        with self.files.open(*message_file(State.BADMAIL, queue_id)) as handle:
            yield chunks(handle)

    def remove_badmail_reports(self, queue_id: str) -> bool:
        removed = self.files.remove(*report_file(queue_id))
        return self.files.remove(*envelope_file(State.BADMAIL, queue_id)) or removed

    def inspect_claim(self, claim: PickupClaim) -> EntryFacts:
        """What a claimed Pickup entry is (in SortTemp, where no other program writes)."""
        return self.files.inspect(SORTTEMP, claim.file)

    def open_claim(self, claim: PickupClaim, facts: EntryFacts, *, limit: int) -> CappedReader:
        return self.files.open_claim(claim, facts, limit=limit)
