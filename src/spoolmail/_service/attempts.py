"""Attempts: one due message's attempt and its commit, as a delivery thread runs it.

:meth:`Attempts.attempt` claims the message (QUEUED → DELIVERING), reads its envelope, and
either hands it back held, sends only the delay notice it is due for, or has the
:class:`~spoolmail._service.delivery.Deliverer` attempt it (a flush first makes it due now);
the pure rules of ``_core.states`` conclude the attempt, and :meth:`Attempts._commit` commits
the outcome as one transition (``_store.transitions``): DSNs and BadMail (``bounce``), the
envelope and its transcripts back into the Queue, or the message's files removed. Only then
are its events told; hosts that did not answer are noted dead, and hard bounces go onto the
suppression list. What it did is tallied into the :class:`~spoolmail._service.report.Tally`
it is given, and when the message (or a DSN) is due again is told to the service's schedule
through ``due_at``. It never lists a folder, reads Pickup or the operators' triggers, or
decides what is due: that is the loop's, in ``service``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

import attrs

from spoolmail._core.badmail import BadMailReport
from spoolmail._core.envelope import (
    Envelope,
    Recipient,
    RecipientState,
    decode_envelope,
    read_due,
    replaced,
)
from spoolmail._core.events import (
    Deferred,
    Delivered,
    Dropped,
    DsnQueued,
    Failed,
    MailEvent,
    Queued,
    Removed,
    ToBadMail,
)
from spoolmail._core.reply import Reply
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import RouteKind, Router
from spoolmail._core.states import (
    AttemptOutcome,
    Event,
    State,
    conclude_attempt,
    defer_local_fault,
    flush,
    local_fault_wait,
    notice_delay,
    retry_local_faults_soon,
    untried,
)
from spoolmail._core.suppression import is_hard_bounce
from spoolmail._core.transcript import Transcript, render_transcript
from spoolmail._service.bounce import Bouncer
from spoolmail._service.delivery import Attempt, Deliverer, TranscriptKind, passed_over
from spoolmail._service.report import Tally
from spoolmail._store.suppression import SuppressionList
from spoolmail._store.transitions import Change, Transitions
from spoolmail.exceptions import EnvelopeError, StorageError

__all__ = ["Attempts"]

log = logging.getLogger("spoolmail")

# A message whose handling failed unexpectedly waits this long before the next try, so a bug
# that trips on one message cannot turn the loop into a busy loop. Also how long a host that
# did not answer is left alone when its message will not be tried again.
_ERROR_BACKOFF = timedelta(minutes=5)


@attrs.define
class Attempts:
    """Attempts one due message at a time and commits each outcome (see the module docstring).

    Made by ``MailService``, which keeps the schedule: ``due_at`` schedules a message (or a DSN)
    again, ``take_flushed`` says whether an operator's flush chose it (and forgets that), and
    ``policy`` is the retry policy for a recipient (remote or local). ``emit`` and ``emit_all``
    tell the spool's observers, one event or several at once.
    """

    transitions: Transitions
    delivery: Deliverer
    bounce: Bouncer
    router: Router
    suppression: SuppressionList | None
    clock: Callable[[], datetime]
    policy: Callable[[Recipient], RetryPolicy]
    due_at: Callable[[str, datetime], None]
    take_flushed: Callable[[str], bool]
    emit: Callable[[MailEvent], None]
    emit_all: Callable[[Sequence[MailEvent]], None]

    def attempt(self, queue_id: str, tally: Tally, *, flushed: bool = False) -> None:
        """QUEUED → DELIVERING → (QUEUED | DONE | BADMAIL) for one due message; ``flushed``:
        an operator's flush made it due (else the schedule says)."""
        transitions = self.transitions
        flushed = self.take_flushed(queue_id) or flushed
        if transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id)) is None:
            return  # another process has it, or it is gone
        try:
            raw = transitions.claimed_envelope(queue_id)
        except StorageError as exc:
            if exc.temporary:
                raise
            # A link, a FIFO or a directory in its place: no retry makes it a file.
            self._damaged(queue_id, f"the envelope file cannot be read: {exc}", b"", tally)
            return
        try:
            # What this process's intake or listener just wrote, if the file is those bytes.
            envelope = transitions.written(queue_id, raw) or decode_envelope(raw)
        except EnvelopeError as exc:
            self._damaged(queue_id, f"the envelope file cannot be read: {exc}", raw, tally)
            return
        if envelope.id != queue_id:
            # The file's name is the id: every commit below goes by envelope.id, which would
            # send, finish or move another message's files (or a path out of the Queue).
            named = f"the envelope names another message, {envelope.id[:60]!a}"
            self._damaged(queue_id, f"the envelope file cannot be read: {named}", raw, tally)
            return
        if not transitions.has_message(queue_id):
            missing = transitions.message_path(queue_id)
            self._damaged(queue_id, f"the message file {missing} is missing", raw, tally)
            return
        try:
            if envelope.held:
                transitions.apply(
                    State.DELIVERING, Event.DEFERRED, Change(id=queue_id, envelope=raw)
                )
            elif flushed:
                self._deliver(flush(envelope, now=self.clock()), tally)
            elif self.clock() < envelope.next_attempt:
                # Woken for the delay notice, not for an attempt.
                outcome = notice_delay(envelope, retry=self.policy, now=self.clock())
                self._commit(outcome, {}, tally)
            else:
                self._deliver(envelope, tally)
        except Exception as exc:
            self._give_back(envelope, exc)
            raise

    def _damaged(self, queue_id: str, reason: str, raw: bytes, tally: Tally) -> None:
        report = self.bounce.damaged(queue_id, reason, raw)
        tally.badmail.append(queue_id)
        self.emit(
            ToBadMail(
                queue_id=queue_id, time=self.clock(), status=report.status, reason=report.reason
            )
        )

    def _deliver(self, envelope: Envelope, tally: Tally) -> None:
        attempt = self.delivery.attempt(envelope)
        outcome = self._passed_over(envelope, attempt) or conclude_attempt(
            envelope, attempt.replies, retry=self.policy, now=self.clock()
        )
        self._tally_replies(envelope.id, attempt.replies, outcome, tally)
        if attempt.unreachable or attempt.unresolved:
            # Postfix's "dead destination": other messages for these hosts (or hops whose
            # lookup failed) wait without a connection attempt (a lookup) each, until this
            # message's own retry time.
            until = (
                outcome.envelope.next_attempt
                if outcome.event is Event.DEFERRED
                else self.clock() + _ERROR_BACKOFF
            )
            dead = self.delivery.dead
            for target, reply in attempt.unreachable.items():
                dead.mark(target, until, reply)
            for hop, reply in attempt.unresolved.items():
                dead.mark_lookup(hop, until, reply)
        outcome = self._local_faults(envelope, attempt, outcome)
        self._commit(outcome, attempt.transcripts, tally, attempt=(envelope, attempt))
        self._suppress_hard_bounces(outcome.envelope, attempt.replies)

    def _suppress_hard_bounces(self, envelope: Envelope, replies: Mapping[str, Reply]) -> None:
        """Put the recipients a remote server just said do not exist on the suppression list
        (after the commit: a repeated attempt would only record them again)."""
        if self.suppression is None or all(reply.code < 500 for reply in replies.values()):
            return  # the usual case: nothing refused for good, nothing to look up
        states = {r.address: r.state for r in envelope.recipients}
        for address, reply in replies.items():
            if states.get(address) is not RecipientState.FAILED or not is_hard_bounce(reply):
                continue
            try:
                self.suppression.add(address, reply, queue_id=envelope.id)
            except StorageError as exc:
                log.warning("cannot add %s to the suppression list: %s", address, exc)
            else:
                log.info("%s: %s suppressed after a hard bounce (%s)", envelope.id, address, reply)

    def _passed_over(self, envelope: Envelope, attempt: Attempt) -> AttemptOutcome | None:
        """A message only passed over for dead hosts was not attempted: its attempt is not
        counted (Postfix defers it without a delivery attempt), unless its time is up."""
        if attempt.made:
            return None
        now = self.clock()
        ends = [self.policy(r).expires_at(arrival=envelope.retry_base) for r in envelope.pending]
        deadline = min((end for end in ends if end is not None), default=None)
        if deadline is not None and now >= deadline:
            return None  # expire it now, as an attempt would
        waiting = passed_over(envelope, attempt, now=now, deadline=deadline)
        return AttemptOutcome(Event.DEFERRED, waiting)

    def _local_faults(
        self, envelope: Envelope, attempt: Attempt, outcome: AttemptOutcome
    ) -> AttemptOutcome:
        """Rule 9 of ``_core.states``: a Drop file that could not be written is a local fault,
        not a delivery attempt. Alone (nothing else was tried) the attempt is not counted and
        brings no DSN, unless the message's time is up; beside a real attempt it counts, but
        the recipients that met the fault are due again after the short back-off."""
        faults = attempt.local_faults
        if not faults:
            return outcome
        now = self.clock()
        if set(attempt.replies) - faults - set(attempt.waiting):
            return retry_local_faults_soon(outcome, faults, now=now)
        ends = [self.policy(r).expires_at(arrival=envelope.retry_base) for r in envelope.pending]
        deadline = min((end for end in ends if end is not None), default=None)
        if deadline is not None and now >= deadline:
            return outcome  # expired: as any attempt would have it
        until = deadline
        if attempt.waiting:  # hosts passed over too: due when they may be tried, if sooner
            envelope = passed_over(envelope, attempt, now=now, deadline=deadline)
            until = envelope.next_attempt
        replies = {address: attempt.replies[address] for address in faults}
        return defer_local_fault(envelope, replies, now=now, until=until)

    def _give_back(
        self, envelope: Envelope, error: Exception, *, due: datetime | None = None
    ) -> None:
        """After an error: return the claim with ``envelope``, due at ``due`` or after a pause.

        A storage error (disk full, I/O error) is a local fault (rule 9 of ``_core.states``):
        counted, and the pause is its short back-off; anything else (a bug) waits five minutes.
        The attempt's deliveries may be repeated (at-least-once); nothing is lost. If the error
        struck in the middle of a finish, the finish is completed instead; if the claim was
        handed back already (the error came after that rename), it is only scheduled.
        """
        transitions = self.transitions
        if not transitions.has_message(envelope.id):
            transitions.apply(State.DELIVERING, Event.SETTLED, Change(id=envelope.id))
            return
        if not transitions.claimed(envelope.id):
            try:
                when, held = read_due(transitions.envelope(envelope.id))
            except (FileNotFoundError, EnvelopeError):
                return  # claimed by another process meanwhile, or its attempt moves it aside
            if not held:
                self.due_at(envelope.id, when)
            return
        now = self.clock()
        if isinstance(error, StorageError):
            faults = envelope.local_faults + 1
            pause = local_fault_wait(faults)
            envelope = replaced(envelope, local_faults=faults)
        else:
            pause = _ERROR_BACKOFF
        later = replaced(envelope, next_attempt=due or now + pause)
        transitions.apply(State.DELIVERING, Event.DEFERRED, Change(id=envelope.id, envelope=later))
        due = later.next_attempt
        self.due_at(envelope.id, min(due, later.notice_at or due))

    def _tally_replies(
        self, queue_id: str, replies: Mapping[str, object], outcome: AttemptOutcome, tally: Tally
    ) -> None:
        states = {r.address: r.state for r in outcome.envelope.recipients}
        for address in replies:
            state = states.get(address)
            if state is RecipientState.DELIVERED:
                tally.delivered.append((queue_id, address))
            elif state is RecipientState.PENDING:
                tally.deferred.append((queue_id, address))
            else:
                tally.failed.append((queue_id, address))

    def _commit(
        self,
        outcome: AttemptOutcome,
        transcripts: Mapping[str, Transcript],
        tally: Tally,
        *,
        attempt: tuple[Envelope, Attempt] | None = None,
    ) -> None:
        """Commit ``outcome`` (DSNs first), then announce it: the recipients' outcomes of
        ``attempt`` (the envelope it began with, and what it did), the DSNs, and the message's
        end (removed, or BadMail). An event is only fired once what it reports is committed."""
        envelope = outcome.envelope
        # A DSN that cannot be queued fails the whole commit: the claim goes back as it was
        # (see attempt), and the repeated attempt queues it under the same id.
        dsn_events: list[MailEvent] = []
        # A DSN is scheduled only once its Queued event is out: a delivery thread could
        # otherwise tell its Drop file before anyone heard it was queued.
        dsns_due: list[tuple[str, datetime]] = []
        for order in outcome.dsns:
            dsn = self.bounce.queue_dsn(envelope, order)
            if dsn is not None:
                dsns_due.append((dsn.id, dsn.next_attempt))
                tally.dsns.append(dsn.id)
                addresses = tuple(r.address for r in order.recipients)
                dsn_events.append(
                    DsnQueued(
                        queue_id=envelope.id,
                        time=dsn.arrival,
                        dsn_id=dsn.id,
                        action=order.kind.value,
                        recipients=addresses,
                    )
                )
                dsn_events.append(Queued.of(dsn))
        # The table decides what is committed (hand back, finish, BadMail); here only what
        # each needs is gathered, and what it did is reported.
        state = outcome.state
        badmail: BadMailReport | None = None
        removed = False
        try:
            if state is State.BADMAIL:
                history = "".join(self._history(envelope.id, kind) for kind in TranscriptKind)
                current = "".join(t.text for t in transcripts.values())
                badmail = self.bounce.to_badmail(envelope, history + current)
                tally.badmail.append(envelope.id)
            else:
                # Transcripts exist only if something left the message waiting before: an
                # attempt, a local fault, a pass over a dead host. The envelope the attempt
                # began with says so (untried); a finish of one that shows none removes none.
                kept = self._transcripts(envelope, transcripts) if state is State.QUEUED else {}
                change = Change(
                    id=envelope.id,
                    envelope=envelope,
                    transcripts=kept,
                    untried=attempt is not None and untried(attempt[0]),
                )
                self.transitions.apply(State.DELIVERING, outcome.event, change)
                if state is State.QUEUED:
                    due = envelope.next_attempt
                    self.due_at(envelope.id, min(due, envelope.notice_at or due))
                else:
                    tally.finished.append(envelope.id)
                    removed = True
        except Exception as exc:
            self._announce_dsns(dsn_events, dsns_due)  # queued, whatever became of this commit
            # The outcome is decided (a server may have taken the message): what it says is
            # given back, so that nothing delivered is delivered again. A message to finish or
            # to move to BadMail is due again after the pause, to be settled then; one that
            # waits keeps its retry time.
            self._give_back(
                envelope, exc, due=envelope.next_attempt if state is State.QUEUED else None
            )
            raise
        # Told together (the mail log writes their lines at once), then the DSNs scheduled. One
        # reading of the clock for what the commit did: the message's end is not timed before
        # the deliveries that ended it, as the lines before it in the mail log are.
        now = self.clock()
        told = list(self._attempt_events(*attempt, outcome, now)) if attempt is not None else []
        told += dsn_events
        if badmail is not None:
            told.append(
                ToBadMail(
                    queue_id=envelope.id, time=now, status=badmail.status, reason=badmail.reason
                )
            )
        elif removed:
            told.append(Removed(queue_id=envelope.id, time=now))
        self.emit_all(told)
        for dsn_id, when in dsns_due:
            self.due_at(dsn_id, when)

    def _announce_dsns(
        self, events: Sequence[MailEvent], due: Sequence[tuple[str, datetime]]
    ) -> None:
        """Tell the DSNs queued, then schedule them (so no delivery thread speaks of one first)."""
        for event in events:
            self.emit(event)
        for dsn_id, when in due:
            self.due_at(dsn_id, when)

    def _attempt_events(
        self, before: Envelope, attempt: Attempt, outcome: AttemptOutcome, now: datetime
    ) -> Iterator[MailEvent]:
        """What an attempt did, once committed (at ``now``): the Drop files written, then one
        event per recipient that was attempted (or passed over, or expired) with the reply
        about it."""
        delay = now - before.arrival
        dropped: dict[str, str] = {}
        for name, size, addresses in attempt.drops:
            dropped.update(dict.fromkeys(addresses, name))
            yield Dropped(queue_id=before.id, time=now, file=name, recipients=addresses, size=size)
        after = {r.address: r for r in outcome.envelope.recipients}
        for recipient in before.pending:
            address = recipient.address
            new, reply = after.get(address), attempt.replies.get(address)
            if new is None:
                continue
            relay = attempt.relays.get(address)
            if new.state is RecipientState.DELIVERED and new.reply is not None:
                yield Delivered(
                    queue_id=before.id,
                    time=now,
                    recipient=address,
                    reply=new.reply,
                    relay=relay,
                    delay=delay,
                    drop_file=dropped.get(address),
                )
            elif new.state is RecipientState.FAILED and new.reply is not None:
                yield Failed(
                    queue_id=before.id,
                    time=now,
                    recipient=address,
                    reply=new.reply,
                    relay=relay,
                    delay=delay,
                )
            elif new.state is RecipientState.PENDING and reply is not None:
                yield Deferred(
                    queue_id=before.id,
                    time=now,
                    recipient=address,
                    reply=reply,
                    relay=relay,
                    delay=delay,
                    next_attempt=outcome.envelope.next_attempt,
                )

    def _transcripts(
        self, envelope: Envelope, transcripts: Mapping[str, Transcript]
    ) -> dict[str, str]:
        """The transcripts to keep with a message that stays queued (IIS's .RTR / .LTR)."""
        kept = {}
        for kind, transcript in transcripts.items():
            local = kind == TranscriptKind.LOCAL
            recipients = [
                r
                for r in envelope.recipients
                if (self.router.route(r.address).kind is RouteKind.LOCAL) == local
            ]
            history = self._history(envelope.id, kind)
            kept[str(kind)] = render_transcript(recipients, history + transcript.text)
        return kept

    def _history(self, queue_id: str, kind: str) -> str:
        return self.transitions.transcript_history(queue_id, kind)
