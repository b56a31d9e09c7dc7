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

DKIM signing (docs/dkim.md) happens in :meth:`Transitions.admit`, the one door, when a
:class:`~spoolmail._core.dkim.DkimPolicy` is given: the body is hashed as it streams into
``Queue/ID.eml`` (never read twice), and the ``DKIM-Signature`` fields go into the envelope,
which is written last: the signature is durable exactly when the message is queued.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import attrs

from spoolmail._core.badmail import BadMailReport, render_badmail_report
from spoolmail._core.dkim import DkimPolicy, DkimSession
from spoolmail._core.envelope import Envelope, decode_envelope, encode_envelope, replaced
from spoolmail._core.headers import fields
from spoolmail._core.pickup import pickup_head_end
from spoolmail._core.states import Commit, Event, State, step, untried
from spoolmail._core.transcript import transcript_history
from spoolmail._store.entries import CappedReader, EntryFacts
from spoolmail._store.folders import DROP, QUEUE, SORTTEMP
from spoolmail._store.store import (
    CHUNK,
    MAX_ENVELOPE,
    MailStore,
    PickupClaim,
    chunks,
    envelope_file,
    message_file,
    report_file,
)
from spoolmail.exceptions import EnvelopeError, StorageError

__all__ = ["Change", "EnvelopeBuilder", "Transitions"]

log = logging.getLogger("spoolmail")

EnvelopeBuilder = Callable[[int, tuple[str, ...]], Envelope]
"""An admission's envelope made once its message is written: from the stored size and the
``DKIM-Signature`` fields the door made (``()`` when unsigned)."""

QUEUED = State.QUEUED
# A rescan reads 100,000 envelopes' signatures: their place is looked up once, here.
_ENVELOPES, _ENVELOPE = envelope_file(QUEUED, "")


@attrs.frozen(kw_only=True)
class Change:
    """What a transition commits: the values its :class:`~spoolmail._core.states.Commit` needs.

    - ``id``: the queue id, always.
    - ``envelope``: the envelope to write (``Envelope`` or its file's bytes as read, for one
      handed back unchanged); for :data:`~Commit.ADMIT` also an :data:`EnvelopeBuilder`, a
      function of the stored message's size and DKIM fields, called once the message is
      written (intake learns both by writing it). An ``Envelope`` given whole gets the fields.
    - ``message``: the message bytes or chunks to admit.
    - ``sign``: ``False`` admits without DKIM signing, keeping the envelope's ``dkim`` fields
      as they are (a BadMail requeue: the message was signed when it first entered).
    - ``claim`` / ``facts``: a Pickup claim going to BadMail, and what the entry was.
    - ``report``: why a message goes to BadMail.
    - ``transcripts``: transcript texts by kind (``RTR``, ``LTR``) to keep with a handed-back
      envelope.
    - ``owner``: whose claim a finish or a recovery is about (default: this process's).
    - ``untried``: the message finished was claimed with an untried envelope
      (:func:`~spoolmail._core.states.untried`): it has no transcript to remove.
    - ``durable``: ``False`` leaves an admission's Queue fsync to :meth:`Transitions.sync_admitted`
      (intake makes a batch durable with one fsync).
    """

    id: str
    envelope: Envelope | bytes | EnvelopeBuilder | None = None
    message: bytes | Iterable[bytes] | None = None
    sign: bool = True
    claim: PickupClaim | None = None
    facts: EntryFacts | None = None
    report: BadMailReport | None = None
    transcripts: Mapping[str, str] = attrs.Factory(dict)
    owner: str | None = None
    durable: bool = True
    untried: bool = False


def _envelope_bytes(change: Change) -> bytes | None:
    """The envelope file a commit writes (a size-dependent envelope is for admissions only)."""
    envelope = change.envelope
    if envelope is None or isinstance(envelope, bytes):
        return envelope
    if isinstance(envelope, Envelope):
        return encode_envelope(envelope)
    raise ValueError(f"{change.id}: only an admission builds its envelope from the size")


# The most of a message's beginning held to find its header block's end (intake and the
# listener refuse longer header sections anyway); past it the message is queued unsigned.
_MAX_HEAD = 1024 * 1024 + CHUNK
# The most of a transcript's end read for its history (see Transitions.transcript_history).
_MAX_HISTORY = 4 * 1024 * 1024
_SIGNATURE_TAGS = re.compile(r"(?:^|[;\s])([ds])=([^;\s]+)")


class _Signing:
    """DKIM signing of one message while the door writes it (see :meth:`Transitions.admit`).

    :meth:`stream` hands the chunks on unchanged; until the empty line that ends the header
    block (a lone CR or LF ends a line too, as on the wire) it keeps a copy of the beginning,
    then hashes the body in pieces of at most :data:`CHUNK` octets, so memory stays flat
    whatever the size. Once the last chunk is through, :attr:`fields` holds the signature.
    """

    def __init__(self, policy: DkimPolicy, queue_id: str, clock: Callable[[], datetime]) -> None:
        self._policy = policy
        self._id = queue_id
        self._clock = clock
        self._head: bytes | None = b""  # the beginning until the head is found; None: gave up
        self._session: DkimSession | None = None
        self.fields: tuple[str, ...] = ()

    def stream(self, message: bytes | Iterable[bytes]) -> Iterator[bytes]:
        for chunk in (message,) if isinstance(message, bytes) else message:
            yield chunk
            self._take(chunk)
        self._finish()

    def _take(self, chunk: bytes) -> None:
        if self._session is not None:
            self._feed(chunk, 0)
            return
        if self._head is None:
            return
        data = self._head + chunk if self._head else chunk
        end = pickup_head_end(data, complete=False)
        if end is None:
            self._head = None if len(data) > _MAX_HEAD else data
            return
        self._head = b""
        self._session = self._policy.start(data[:end])
        self._feed(data, end)

    def _feed(self, data: bytes, start: int) -> None:
        session = self._session
        assert session is not None  # noqa: S101 (narrowing: called once a session exists)
        if session.unsigned is not None:
            return
        if start == 0 and len(data) <= CHUNK:
            session.feed(data)
            return
        for offset in range(start, len(data), CHUNK):
            session.feed(data[offset : offset + CHUNK])

    def _finish(self) -> None:
        if self._session is None:
            if self._head is None:
                log.debug(
                    "%s queued unsigned: its header section is longer than %d octets",
                    self._id,
                    _MAX_HEAD,
                )
                return
            # No empty line ended the head before the end (a message of header fields only,
            # or one whose last line end was a lone CR): decided on the whole of it.
            data = self._head
            end = pickup_head_end(data, complete=True)
            self._session = self._policy.start(data if end is None else data[:end])
            self._feed(data, len(data) if end is None else end)
        session = self._session
        made = session.finish(self._clock())
        if session.unsigned is not None:
            log.debug("%s queued unsigned: %s", self._id, session.unsigned)
            return
        self.fields = tuple(
            field.raw.decode("ascii").removesuffix("\r\n") for field in fields(made)
        )
        if log.isEnabledFor(logging.DEBUG):
            tags = [dict(reversed(_SIGNATURE_TAGS.findall(field))) for field in self.fields]
            described = ", ".join(f"d={tag.get('d')} s={tag.get('s')}" for tag in tags)
            log.debug("%s DKIM-signed: %s", self._id, described)


# The most envelopes an admission remembers for the claim that follows (see Transitions.written).
_WRITTEN_CAP = 1024


def _utc_only(envelope: Envelope) -> bool:
    """Whether every time in ``envelope`` is in the UTC zone object the envelope file's reader
    gives back (``datetime.fromisoformat`` of a ``+00:00`` time): then the decoded file is the
    same envelope down to the zone, and the one written may stand for it."""
    times = (
        envelope.arrival,
        envelope.next_attempt,
        envelope.first_attempt,
        envelope.last_attempt,
        envelope.held_since,
        envelope.notice_at,
    )
    return all(t is None or t.tzinfo is UTC for t in times) and all(
        r.updated is None or r.updated.tzinfo is UTC for r in envelope.recipients
    )


class Transitions:
    """The MailRoot's transitions, each one atomic commit on ``files`` (see the module doc).

    ``dkim`` signs what :meth:`admit` queues (``None``: nothing is signed).
    """

    def __init__(self, files: MailStore, *, dkim: DkimPolicy | None = None) -> None:
        self.files = files
        self.dkim = dkim
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
        # Envelopes admissions wrote, with their bytes, by id (oldest first, at most
        # _WRITTEN_CAP), for a service in this process that claims them next: see written().
        self._written: dict[str, tuple[bytes, Envelope]] | None = None
        self._written_only: Callable[[str], bool] | None = None
        self._written_lock = threading.Lock()

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

        With a DKIM policy (and ``change.sign``), the message is signed as it is written: the
        header block is found in the first chunks, the body hashed chunk by chunk, and the
        fields (made at the store's clock) go into the envelope. A message the policy does not
        sign (no key for its ``From:`` domain, no ``From:``) is queued unsigned, the reason
        logged at DEBUG; a signing error (a key that cannot sign) leaves nothing, as a size
        limit does.
        """
        made, message = change.envelope, change.message
        if message is None or made is None:
            raise ValueError(f"admitting {change.id} needs its message and its envelope")
        signing = None
        if self.dkim is not None and change.sign:
            signing = _Signing(self.dkim, change.id, self.files.clock)
            message = signing.stream(message)

        def encoded(size: int) -> bytes:
            dkim = signing.fields if signing is not None else ()
            if callable(made):
                envelope = made(size, dkim)
                data = encode_envelope(envelope)
                if self._written is not None:
                    self._remember(change.id, data, envelope)
                return data
            if not dkim:
                return _envelope_bytes(change) or b""
            whole = decode_envelope(made) if isinstance(made, bytes) else made
            return encode_envelope(replaced(whole, dkim=dkim))

        self.files.commit_queued(change.id, message, encoded, sync=change.durable)
        return True

    def remember_written(self, on: bool, *, only: Callable[[str], bool] | None = None) -> None:
        """Keep (``on``) or stop keeping the envelopes admissions write, for :meth:`written`: a
        service in this process does, as it claims what this process queues next; ``only``
        those of the ids it says yes to (a listening worker's own, not those it hands off)."""
        with self._written_lock:
            self._written = {} if on else None
            self._written_only = only if on else None

    def _remember(self, queue_id: str, data: bytes, envelope: Envelope) -> None:
        only = self._written_only
        if (only is not None and not only(queue_id)) or not _utc_only(envelope):
            return
        with self._written_lock:
            written = self._written
            if written is None:
                return
            if len(written) >= _WRITTEN_CAP:
                del written[next(iter(written))]
            written[queue_id] = (data, envelope)

    def written(self, queue_id: str, raw: bytes) -> Envelope | None:
        """The envelope an admission in this process wrote as ``raw`` for ``queue_id`` (what
        ``decode_envelope(raw)`` gives: the same fields, times in the same zone object), or
        ``None``: another file, or none remembered. Forgotten once asked for."""
        with self._written_lock:
            found = self._written.pop(queue_id, None) if self._written else None
        if found is None or found[0] != raw:
            return None
        return found[1]

    def claim(self, change: Change) -> bool:
        """Rename ``ID.env`` to ``ID.OWNER.env``; ``False`` if it is gone (claimed or finished)."""
        return self.files.claim_queued(change.id)

    def hand_back(self, change: Change) -> bool:
        """Keep the transcripts, commit the new envelope under the claim, hand the claim back."""
        data = _envelope_bytes(change)
        if data is None:
            raise ValueError(f"handing {change.id} back needs its envelope")
        for kind, text in change.transcripts.items():
            try:
                self.files.write(QUEUE, f"{change.id}.{kind}", text.encode())
            except StorageError as exc:
                # A transcript is for people: one that cannot be written (a directory planted
                # in its place) must not undo the attempt, whose deliveries would be repeated
                # at every try. A full disk stops the envelope's write below anyway.
                log.warning("%s: transcript not kept: %s", change.id, exc)
        if not change.transcripts and isinstance(change.envelope, Envelope):
            self._keep_untried_bare(change.id, change.envelope)
        self.files.release(change.id, data)
        return True

    def _keep_untried_bare(self, queue_id: str, envelope: Envelope) -> None:
        """Before an untried envelope goes back (an attempt that failed on an error gives it
        back as it was), remove what a hand-back cut short by that error may have written: an
        untried message has no transcript (see :func:`~spoolmail._core.states.untried`)."""
        if untried(envelope):
            self.files.remove(QUEUE, f"{queue_id}.RTR")
            self.files.remove(QUEUE, f"{queue_id}.LTR")

    def finish(self, change: Change) -> bool:
        """Remove a finished message: message and transcripts first, the claimed envelope last
        (an untried one has no transcripts: see :func:`~spoolmail._core.states.untried`)."""
        self.files.finish(change.id, change.owner, transcripts=not change.untried)
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
        files, queue_id, owner = self.files, change.id, change.owner
        if owner is None:  # not an empty owner (``ID..env``, made by hand): that is one too
            owner = files.owner
        if owner != files.owner and not files.take_over_queued(queue_id, owner):
            return False
        if files.exists(QUEUE, f"{queue_id}.RTR") or files.exists(QUEUE, f"{queue_id}.LTR"):
            # The owner may have died in a hand-back, between its transcripts and its
            # envelope: with the envelope it began with, untried, they go (an untried message
            # has no transcript, which its finish counts on).
            try:
                claimed = decode_envelope(files.read_claimed(queue_id))
            except (FileNotFoundError, EnvelopeError):
                claimed = None  # its attempt moves it aside with the reason; nothing to do
            if claimed is not None:
                self._keep_untried_bare(queue_id, claimed)
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
        self.files.sync_queued()
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
        """A queued (unclaimed) message's envelope file; ``FileNotFoundError`` if not there.
        One over ``MAX_ENVELOPE`` is a permanent :class:`StorageError`, and is not read."""
        return self.files.read(_ENVELOPES, queue_id + _ENVELOPE, limit=MAX_ENVELOPE)

    def envelope_signature(self, queue_id: str) -> tuple[int, ...] | None:
        """See :meth:`MailStore.signature`: changes whenever the envelope is rewritten."""
        return self.files.signature(_ENVELOPES, queue_id + _ENVELOPE)

    def open_message(self, queue_id: str) -> BinaryIO:
        """The stored message of a queued id, for reading; ``FileNotFoundError`` if gone."""
        return self.files.open(*message_file(QUEUED, queue_id))

    def transcript_history(self, queue_id: str, kind: str) -> str:
        """The attempts a transcript (``RTR`` / ``LTR``) recorded so far; ``""`` if none.

        At most the last :data:`_MAX_HISTORY` bytes of it, from the first attempt that begins
        in them: the history is read and written again at every attempt, and must not take
        memory or disk in proportion to what a long retry (or a planted file) made of it.
        """
        try:
            data, cut = self.files.read_tail(QUEUE, f"{queue_id}.{kind}", _MAX_HISTORY)
        except FileNotFoundError:
            return ""
        except StorageError as exc:
            if exc.temporary:
                raise
            # A link, FIFO or directory in its place holds no history; an error here would
            # give the message back after its delivery, to be delivered again at every try.
            log.warning("%s; the transcript starts again", exc)
            return ""
        # Replies are remote servers' bytes: a file that is not UTF-8 (damaged, or written by
        # hand) is read with U+FFFD, never an error in the middle of a transition.
        text = data.decode("utf-8", "replace")
        history = transcript_history(text)
        if not cut or history:
            return history
        _, section, rest = text.partition("\n--- ")
        left_out = f"(earlier attempts left out: the transcript grew over {_MAX_HISTORY} bytes)\n"
        return f"{left_out}--- {rest}" if section else left_out

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
