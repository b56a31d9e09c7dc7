"""The message state machine: one table, and the pure decision that ends a delivery attempt.

Rules (docs/design.md#state-machine):

1. A message is in exactly one state. PICKUP, QUEUED and BADMAIL are folders (the store maps
   each to its folder); DELIVERING is a claimed envelope in the Queue; DONE: its files are gone;
   NEW: not in the spool yet (a DSN being written, mail the SMTP listener is receiving).
2. Every transition is listed in :data:`TABLE`, as h11's ``_state.py`` lists its own: state →
   event → :class:`Step`, the new state and the :class:`Commit` that performs it. The table
   drives: the store (``_store.transitions``) looks the pair up and performs that commit, one
   atomic commit on the filesystem per transition; nobody chooses a commit by hand. A
   (state, event) pair that is not there is a bug: :func:`step` and :func:`transition` raise
   :class:`~spoolmail.exceptions.InvalidTransition` naming both, and nothing changes.
   :data:`TRANSITIONS` is the same table without the commits.
3. State is kept per recipient (pending, delivered, failed); only pending recipients are attempted,
   and a message leaves the Queue when none is pending.
4. A failure reaches the sender exactly once, as a DSN listing the recipients that failed since the
   last DSN. A message from the null reverse-path (a DSN itself) is never answered: when it cannot
   be delivered it goes to BadMail (no bounce loops, RFC 3464 section 1 / RFC 5321 section 6.1).
5. Temporary failures wait for the retry policy's next attempt; when the policy says the message
   has expired, its pending recipients fail with status 4.4.7 (RFC 3463: delivery time expired).
6. A DSN's queue id is derived from its parent's (``ids.dsn_id``), so repeating an attempt after a
   crash queues the same DSN again under the same name, never a second copy.
7. The sender's RFC 3461 NOTIFY decides which DSNs are sent (failure and delay by default, success
   only when asked); an outcome nobody asked to hear about is marked reported all the same.
8. An operator may hold, release, flush or delete a queued message and requeue or delete a
   BadMail entry; a held message is never attempted and its time on hold does not count
   towards its expiry. The requeue direction follows where the entry came from: a message that
   was queued (it has an envelope with attempts, or came from the Queue) goes back to the Queue
   (REQUEUED, through the one door :data:`Commit.ADMIT`), with a fresh envelope for the chosen
   recipients; a file rejected at Pickup never became a message (its ``x-sender`` lines are
   still in it, its headers unfolded, no ``Received:`` line added), so only intake can read it
   again: it goes back to Pickup as it is (RESUBMITTED), to be fixed first.
9. A local fault (the Drop file could not be written: disk full, an I/O error) is not a failed
   delivery attempt, as it would be if a remote host had deferred: it is counted apart
   (``local_faults``), tried again after 10 s, doubling up to 5 minutes, and by itself moves
   neither the retry schedule nor a DSN. Only the message's age can still end it (rule 5).

:func:`conclude_attempt` applies rules 3-7 to one attempt's replies and returns an
:class:`AttemptOutcome`: the event, the new envelope and the DSNs to send. The service hands the
event to the store (``_store.transitions``), which performs the commit :data:`TABLE` lists for
it. Pure: times are handed in, nothing here touches a file.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import attrs

from spoolmail._core.envelope import Envelope, Notify, Recipient, RecipientState, replaced
from spoolmail._core.ids import dsn_id
from spoolmail._core.reply import Reply, Severity
from spoolmail.exceptions import InvalidTransition

__all__ = [
    "TABLE",
    "TRANSITIONS",
    "AttemptOutcome",
    "Commit",
    "DsnKind",
    "DsnOrder",
    "Event",
    "State",
    "conclude_attempt",
    "defer_local_fault",
    "flush",
    "hold",
    "local_fault_wait",
    "notice_delay",
    "release",
    "requeue",
    "retry_local_faults_soon",
    "step",
    "transition",
    "untried",
]


class State(enum.Enum):
    """Where a message is: the folder that holds it (docs/design.md#state-machine)."""

    NEW = "new"
    PICKUP = "pickup"
    QUEUED = "queued"
    DELIVERING = "delivering"
    BADMAIL = "badmail"
    DONE = "done"

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


class Event(enum.Enum):
    ACCEPTED = "accepted"
    """The pickup file parsed into an envelope and a message."""
    REJECTED = "rejected"
    """The pickup file cannot be a message (no sender, no recipient, bad headers, too big)."""
    REFUSED = "refused"
    """The pickup entry is no regular single-link file (a link, FIFO, device): never read."""
    CLAIMED = "claimed"
    """A process took the queued message to deliver it."""
    DEFERRED = "deferred"
    """The attempt ended with recipients still pending: wait for the next attempt."""
    SETTLED = "settled"
    """No recipient is pending and every failure was reported to the sender."""
    UNDELIVERABLE = "undeliverable"
    """No recipient is pending, some failed, and there is nobody to tell (null sender)."""
    ABANDONED = "abandoned"
    """The claiming process died; its claim goes back to the Queue as it was."""
    DAMAGED = "damaged"
    """The queued files cannot be read (envelope unreadable, message missing)."""
    HELD = "held"
    """An operator put the message on hold."""
    RELEASED = "released"
    """An operator released a hold."""
    FLUSHED = "flushed"
    """An operator made the message due now."""
    DELETED = "deleted"
    """An operator deleted the message (no DSN: postsuper -d does not bounce either)."""
    REQUEUED = "requeued"
    """An operator put a BadMail entry back into the Queue."""
    RESUBMITTED = "resubmitted"
    """An operator put a file rejected at Pickup back into Pickup, to be read again (rule 8)."""

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


class Commit(enum.Enum):
    """What the store does to perform a transition: one method of ``_store.transitions`` each,
    every one a single atomic commit (docs/design.md#crash-safety)."""

    ADMIT = "admit"
    """The one door into the Queue: ``ID.eml`` written, then ``ID.env`` (the commit)."""
    CLAIM = "claim"
    """``Queue/ID.env`` renamed to ``ID.OWNER.env``: only one process wins."""
    HAND_BACK = "hand_back"
    """The new envelope (and transcripts) written under the claim, renamed back to ``ID.env``."""
    FINISH = "finish"
    """The message and transcripts removed, the claimed envelope last."""
    TO_BADMAIL = "to_badmail"
    """Report and envelope into BadMail, then the message renamed to ``ID.BAD`` (the commit)."""
    REFUSE = "refuse"
    """Report and envelope into BadMail, the claimed Pickup name unlinked, nothing read."""
    RECOVER = "recover"
    """A dead owner's claim taken over and renamed back to ``ID.env`` as it was."""
    RESUBMIT = "resubmit"
    """``BadMail/ID.BAD`` renamed back into Pickup, its reports removed."""
    DISCARD = "discard"
    """A BadMail entry's files removed."""

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


@attrs.frozen
class Step:
    """Where a transition leads and the commit that performs it."""

    target: State
    commit: Commit


TABLE: Mapping[State, Mapping[Event, Step]] = {
    State.NEW: {
        Event.ACCEPTED: Step(State.QUEUED, Commit.ADMIT),
    },
    State.PICKUP: {
        Event.ACCEPTED: Step(State.QUEUED, Commit.ADMIT),
        Event.REJECTED: Step(State.BADMAIL, Commit.TO_BADMAIL),
        Event.REFUSED: Step(State.BADMAIL, Commit.REFUSE),
    },
    State.QUEUED: {
        Event.CLAIMED: Step(State.DELIVERING, Commit.CLAIM),
        Event.DAMAGED: Step(State.BADMAIL, Commit.TO_BADMAIL),
        Event.HELD: Step(State.QUEUED, Commit.HAND_BACK),
        Event.RELEASED: Step(State.QUEUED, Commit.HAND_BACK),
        Event.FLUSHED: Step(State.QUEUED, Commit.HAND_BACK),
        Event.DELETED: Step(State.DONE, Commit.FINISH),
    },
    State.DELIVERING: {
        Event.DEFERRED: Step(State.QUEUED, Commit.HAND_BACK),
        Event.SETTLED: Step(State.DONE, Commit.FINISH),
        Event.UNDELIVERABLE: Step(State.BADMAIL, Commit.TO_BADMAIL),
        Event.ABANDONED: Step(State.QUEUED, Commit.RECOVER),
        Event.DAMAGED: Step(State.BADMAIL, Commit.TO_BADMAIL),
    },
    State.BADMAIL: {
        Event.REQUEUED: Step(State.QUEUED, Commit.ADMIT),
        Event.RESUBMITTED: Step(State.PICKUP, Commit.RESUBMIT),
        Event.DELETED: Step(State.DONE, Commit.DISCARD),
    },
    State.DONE: {},
}

TRANSITIONS: Mapping[State, Mapping[Event, State]] = {
    state: {event: found.target for event, found in events.items()}
    for state, events in TABLE.items()
}


def step(state: State, event: Event) -> Step:
    """The step ``event`` takes from ``state``; an unlisted pair is a bug."""
    try:
        return TABLE[state][event]
    except KeyError:
        raise InvalidTransition(
            f"no transition from state {state.value!r} on event {event.value!r}"
        ) from None


def untried(envelope: Envelope) -> bool:
    """Whether nothing has left ``envelope`` waiting yet: no attempt counted, no local fault,
    no reply noted for any recipient (a pass over a dead host notes one).

    Transcripts (``Queue/ID.RTR``, ``ID.LTR``) are written only by a hand-back after one of
    those, so an untried envelope in the Queue has none: the store keeps that true where a
    failed hand-back could leave one behind (see ``Transitions.hand_back`` and ``recover``),
    and the finish of an untried message removes none (two deletes of nothing a message).
    """
    return (
        envelope.attempts == 0
        and envelope.local_faults == 0
        and all(r.reply is None for r in envelope.recipients)
    )


def transition(state: State, event: Event) -> State:
    """The state that ``event`` leads to from ``state``; an unlisted pair is a bug."""
    return step(state, event).target


class DsnKind(enum.Enum):
    FAILURE = "failed"
    DELAY = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


@attrs.frozen
class DsnOrder:
    """A DSN to queue: its id, its kind and the recipients it reports."""

    id: str
    kind: DsnKind
    recipients: tuple[Recipient, ...]


@attrs.frozen
class AttemptOutcome:
    """What an attempt comes to: the event, the envelope to commit, the DSNs to queue first."""

    event: Event
    envelope: Envelope
    dsns: tuple[DsnOrder, ...] = ()

    @property
    def state(self) -> State:
        return transition(State.DELIVERING, self.event)


class Schedule(Protocol):
    """The part of :class:`~spoolmail._core.retry.RetryPolicy` an attempt needs."""

    def next_attempt(
        self, *, attempts: int, arrival: datetime, now: datetime
    ) -> datetime | None: ...

    def delay_notice_due(self, *, arrival: datetime, now: datetime, already_sent: bool) -> bool: ...

    def delay_notice_at(self, *, arrival: datetime) -> datetime | None: ...


_REPLY_STATES = {
    Severity.SUCCESS: RecipientState.DELIVERED,
    Severity.TEMPORARY: RecipientState.PENDING,
    Severity.PERMANENT: RecipientState.FAILED,
}


def _apply_reply(
    recipient: Recipient, reply: Reply | None, now: datetime, *, mark: bool = False
) -> Recipient:
    """``recipient`` after ``reply``; with ``mark``, a new outcome is also marked reported
    (rule 7) in the same copy, which :func:`_report_outcomes` then reports without another."""
    if recipient.state is not RecipientState.PENDING or reply is None:
        return recipient
    state = _REPLY_STATES[reply.severity]
    if mark and state is not RecipientState.PENDING and not recipient.notified:
        return replaced(recipient, state=state, reply=reply, updated=now, notified=True)
    return replaced(recipient, state=state, reply=reply, updated=now)


def _expire(recipient: Recipient, attempts: int, now: datetime) -> Recipient:
    last = f"; last reply: {recipient.reply}" if recipient.reply else ""
    where = f" from {recipient.reply.host}" if recipient.reply and recipient.reply.host else ""
    reply = Reply(
        recipient.reply.code if recipient.reply else 451,
        "4.4.7",
        f"delivery time expired after {attempts} attempts{last}{where}",
        # The DSN's machine-readable part reports the last remote reply (RFC 3464 section 2.3.5,
        # 2.3.6), not only the text: what a bounce parser reads.
        cause=recipient.reply.remote if recipient.reply else None,
    )
    return replaced(recipient, state=RecipientState.FAILED, reply=reply, updated=now)


def _is_pending(recipient: Recipient) -> bool:
    return recipient.state is RecipientState.PENDING


def conclude_attempt(
    envelope: Envelope,
    replies: Mapping[str, Reply],
    *,
    retry: Callable[[Recipient], Schedule],
    now: datetime,
) -> AttemptOutcome:
    """Apply one attempt's replies (by recipient address) to ``envelope`` and decide what follows.

    ``retry`` gives each recipient's retry policy (IIS had one for local and one for remote
    delivery). A pending recipient without a reply was not attempted and stays as it was. DSNs
    follow RFC 3461 NOTIFY: failures and delays unless a recipient said otherwise, successes
    only when asked; a delivery without a remote host is "delivered" (into Drop), one to a
    remote host "relayed" (the next server was not asked to report).
    """
    attempts = envelope.attempts + 1
    base = envelope.retry_base
    before = envelope.recipients
    mark = bool(envelope.sender)  # a null sender's outcomes are never reported (rule 4)
    recipients = [_apply_reply(r, replies.get(r.address), now, mark=mark) for r in before]
    due = _schedule_pending(recipients, retry, attempts=attempts, base=base, now=now)
    orders = _report_outcomes(recipients, before) if envelope.sender else []
    delay_notified = envelope.delay_notified
    if envelope.sender and due and not delay_notified:
        waiting = [
            r
            for r in recipients
            if _is_pending(r)
            and retry(r).delay_notice_due(arrival=base, now=now, already_sent=False)
        ]
        if waiting:
            delay_notified = True
            wanted = [r for r in waiting if r.wants(Notify.DELAY)]
            if wanted:
                orders.append((DsnKind.DELAY, wanted))

    dsns = tuple(
        DsnOrder(dsn_id(envelope.id, envelope.dsn_count + n), kind, tuple(found))
        for n, (kind, found) in enumerate(orders, start=1)
    )
    pending = [r for r in recipients if r.state is RecipientState.PENDING]
    # One copy of the envelope (23 fields, each checked again): the notice time is computed
    # from what the copy will hold, as _notice_at does from an envelope.
    notice_at = (
        None if not envelope.sender or delay_notified else _first_notice(pending, retry, base=base)
    )
    updated = replaced(
        envelope,
        recipients=tuple(recipients),
        attempts=attempts,
        first_attempt=envelope.first_attempt or now,
        last_attempt=now,
        next_attempt=min(due) if due else envelope.next_attempt,
        delay_notified=delay_notified,
        dsn_count=envelope.dsn_count + len(dsns),
        notice_at=notice_at,
    )
    if pending:
        event = Event.DEFERRED
    elif not envelope.sender and any(r.state is RecipientState.FAILED for r in recipients):
        event = Event.UNDELIVERABLE
    else:
        event = Event.SETTLED
    return AttemptOutcome(event, updated, dsns)


# Rule 9's back-off. A full disk is usually freed within minutes (a log rotated, a file removed),
# not hours: the first retry soon, and never more than one try in five minutes after that.
LOCAL_FAULT_FIRST_WAIT = timedelta(seconds=10)
LOCAL_FAULT_MAX_WAIT = timedelta(minutes=5)


def local_fault_wait(faults: int) -> timedelta:
    """How long a message waits after its ``faults``-th local fault: 10 s, 20 s, 40 s ... 5 min."""
    if faults < 1:
        raise ValueError(f"faults counts from 1, not {faults!r}")
    # 2**5 x 10 s is past the cap already: no need to build a huge number.
    return min(LOCAL_FAULT_FIRST_WAIT * (1 << min(faults - 1, 16)), LOCAL_FAULT_MAX_WAIT)


def defer_local_fault(
    envelope: Envelope,
    faults: Mapping[str, Reply],
    *,
    now: datetime,
    until: datetime | None = None,
) -> AttemptOutcome:
    """Rule 9: the outcome of an attempt that tried nothing but met local faults.

    ``faults`` are the replies of the recipients whose local delivery failed (the reason is
    kept, so ``queue show`` and the transcript say why the message waits). The attempt is not
    counted, no DSN is due; the message is due again after :func:`local_fault_wait`, or at
    ``until`` if that comes first (a host passed over may be tried again then, or the message
    expires then).
    """
    count = envelope.local_faults + 1
    due = now + local_fault_wait(count)
    recipients = tuple(
        replaced(r, reply=faults[r.address], updated=now)
        if _is_pending(r) and r.address in faults
        else r
        for r in envelope.recipients
    )
    updated = replaced(
        envelope,
        recipients=recipients,
        local_faults=count,
        next_attempt=min(due, until) if until is not None else due,
    )
    return AttemptOutcome(Event.DEFERRED, updated)


def retry_local_faults_soon(
    outcome: AttemptOutcome, faults: Collection[str], *, now: datetime
) -> AttemptOutcome:
    """Rule 9 for an attempt that also tried something (a remote host answered): the attempt
    counts, but recipients still pending after a local fault are due after the back-off, not
    at the next attempt of their retry policy (an hour for IIS's local delivery)."""
    envelope = outcome.envelope
    if outcome.event is not Event.DEFERRED or not any(
        _is_pending(r) and r.address in faults for r in envelope.recipients
    ):
        return outcome
    count = envelope.local_faults + 1
    due = min(envelope.next_attempt, now + local_fault_wait(count))
    return attrs.evolve(outcome, envelope=replaced(envelope, local_faults=count, next_attempt=due))


def _notice_at(envelope: Envelope, retry: Callable[[Recipient], Schedule]) -> datetime | None:
    """When a delay DSN falls due for a message still waiting, if one is still to come."""
    if not envelope.sender or envelope.delay_notified:
        return None
    return _first_notice(envelope.pending, retry, base=envelope.retry_base)


def _first_notice(
    pending: Iterable[Recipient], retry: Callable[[Recipient], Schedule], *, base: datetime
) -> datetime | None:
    times = [when for r in pending if (when := retry(r).delay_notice_at(arrival=base)) is not None]
    return min(times) if times else None


def notice_delay(
    envelope: Envelope, *, retry: Callable[[Recipient], Schedule], now: datetime
) -> AttemptOutcome:
    """Woken before its next attempt for the delay notice: send it if due, attempt nothing.

    Rule 5's delay notice comes when its time comes (IIS: 12 hours), not at the first attempt
    after it. A notice not due yet (the message spent time on hold) is simply rescheduled.
    """
    base = envelope.retry_base
    waiting = [
        r
        for r in envelope.pending
        if retry(r).delay_notice_due(arrival=base, now=now, already_sent=envelope.delay_notified)
    ]
    if not envelope.sender or not waiting:
        return AttemptOutcome(
            Event.DEFERRED, replaced(envelope, notice_at=_notice_at(envelope, retry))
        )
    wanted = tuple(r for r in waiting if r.wants(Notify.DELAY))
    dsns = (DsnOrder(dsn_id(envelope.id, envelope.dsn_count + 1), DsnKind.DELAY, wanted),)
    updated = replaced(
        envelope,
        delay_notified=True,
        notice_at=None,
        dsn_count=envelope.dsn_count + (1 if wanted else 0),
    )
    return AttemptOutcome(Event.DEFERRED, updated, dsns if wanted else ())


def _schedule_pending(
    recipients: list[Recipient],
    retry: Callable[[Recipient], Schedule],
    *,
    attempts: int,
    base: datetime,
    now: datetime,
) -> list[datetime]:
    """Rule 5: each pending recipient waits for its own policy, or expires (in place)."""
    due: list[datetime] = []
    for index, recipient in enumerate(recipients):
        if _is_pending(recipient):
            when = retry(recipient).next_attempt(attempts=attempts, arrival=base, now=now)
            if when is None:
                recipients[index] = _expire(recipient, attempts, now)
            else:
                due.append(when)
    return due


def _report_outcomes(
    recipients: list[Recipient], before: Sequence[Recipient] = ()
) -> list[tuple[DsnKind, list[Recipient]]]:
    """Rules 4 and 7: every new outcome is marked reported (in place); those asked for, listed.

    ``before``: the recipients as they were before this attempt, index for index. One whose
    reply this attempt applied (:func:`_apply_reply`) is already marked; it is reported as it
    was before the mark, as every other.
    """
    reports: dict[DsnKind, list[Recipient]] | None = None
    for index, recipient in enumerate(recipients):
        kind = _outcome_kind(recipient)
        if kind is None:
            continue
        marked = recipient.notified
        if marked:
            old = before[index] if index < len(before) else recipient
            if old is recipient or old.notified:
                continue  # reported before this attempt
        else:
            recipients[index] = replaced(recipient, notified=True)
        if recipient.wants(_NOTIFY[kind]):
            if reports is None:
                reports = {kind: [] for kind in DsnKind}
            # Listed as it was before the mark, whichever copy made it.
            reports[kind].append(replaced(recipient, notified=False) if marked else recipient)
    if reports is None:
        return []
    return [(kind, found) for kind, found in reports.items() if found]


_NOTIFY = {
    DsnKind.FAILURE: Notify.FAILURE,
    DsnKind.DELAY: Notify.DELAY,
    DsnKind.DELIVERED: Notify.SUCCESS,
    DsnKind.RELAYED: Notify.SUCCESS,
}


def _outcome_kind(recipient: Recipient) -> DsnKind | None:
    """The DSN an outcome calls for, if the sender asked: failed, delivered or relayed."""
    if recipient.state is RecipientState.FAILED:
        return DsnKind.FAILURE
    if recipient.state is RecipientState.DELIVERED:
        host = recipient.reply.host if recipient.reply else None
        return DsnKind.RELAYED if host else DsnKind.DELIVERED
    return None


# -- what an operator does to a queued message (docs/design.md#state-machine; postsuper) -----


def hold(envelope: Envelope, *, now: datetime) -> Envelope:
    """Hold: never attempted, and the time on hold does not count towards expiry."""
    if envelope.held:
        return envelope
    return replaced(envelope, held_since=now)


def release(envelope: Envelope, *, now: datetime) -> Envelope:
    """Release a hold: due at once, its expiry pushed back by the time it was held."""
    if envelope.held_since is None:
        return envelope
    return replaced(
        envelope,
        held_since=None,
        held_time=envelope.held_time + (now - envelope.held_since),
        next_attempt=now,
    )


def flush(envelope: Envelope, *, now: datetime) -> Envelope:
    """Due at once (a held message stays held)."""
    return replaced(envelope, next_attempt=min(envelope.next_attempt, now))


def requeue(
    envelope: Envelope, *, queue_id: str, now: datetime, addresses: Collection[str] | None
) -> Envelope:
    """A BadMail item's envelope made new: the chosen recipients pending again, due at once.

    ``addresses`` picks recipients (default: every one not delivered); the history restarts,
    so the retry policy gives the message its whole lifetime again.
    """
    chosen = [
        r
        for r in envelope.recipients
        if (addresses is None and r.state is not RecipientState.DELIVERED)
        or (addresses is not None and r.address in addresses)
    ]
    return replaced(
        envelope,
        id=queue_id,
        recipients=tuple(Recipient(r.address, notify=r.notify, orcpt=r.orcpt) for r in chosen),
        arrival=now,
        next_attempt=now,
        origin=f"requeue:{envelope.id}",
        attempts=0,
        first_attempt=None,
        last_attempt=None,
        delay_notified=False,
        dsn_count=0,
        held_since=None,
        held_time=timedelta(0),
        local_faults=0,
        # An operator may have edited the BadMail file: its lines are checked again when sent.
        dot_lines=None,
    )
