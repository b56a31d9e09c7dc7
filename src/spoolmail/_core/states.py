"""The message state machine: one table, and the pure decision that ends a delivery attempt.

Rules (DESIGN.md section 2):

1. A message is in exactly one state. PICKUP, QUEUED and BADMAIL are folders (the store maps
   each to its folder); DELIVERING is a claimed envelope in the Queue; DONE: its files are gone.
2. Every transition is listed in :data:`TRANSITIONS`. A (state, event) pair that is not there is a
   bug: :func:`transition` raises :class:`~spoolmail.exceptions.InvalidTransition` naming both and
   nothing changes.
3. State is kept per recipient (pending, delivered, failed); only pending recipients are attempted,
   and a message leaves the Queue when none is pending.
4. A failure reaches the sender exactly once, as a DSN listing the recipients that failed since the
   last DSN. A message from the null reverse-path (a DSN itself) is never answered: when it cannot
   be delivered it goes to BadMail (no bounce loops, RFC 3464 section 1 / RFC 5321 section 6.1).
5. Temporary failures wait for the retry policy's next attempt; when the policy says the message
   has expired, its pending recipients fail with status 4.4.7 (RFC 3463: delivery time expired).
6. A DSN's queue id is derived from its parent's (``ids.dsn_id``), so repeating an attempt after a
   crash queues the same DSN again under the same name, never a second copy.

:func:`conclude_attempt` applies rules 3-6 to one attempt's replies and returns an
:class:`AttemptOutcome`: the event, the new envelope and the DSNs to send. The service performs the
outcome on the store as one commit. Pure: times are handed in, nothing here touches a file.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

import attrs

from spoolmail._core.envelope import Envelope, Recipient, RecipientState
from spoolmail._core.ids import dsn_id
from spoolmail._core.reply import Reply, Severity
from spoolmail.exceptions import InvalidTransition

__all__ = [
    "TRANSITIONS",
    "AttemptOutcome",
    "DsnKind",
    "DsnOrder",
    "Event",
    "State",
    "conclude_attempt",
    "transition",
]


class State(enum.Enum):
    PICKUP = "pickup"
    QUEUED = "queued"
    DELIVERING = "delivering"
    BADMAIL = "badmail"
    DONE = "done"


class Event(enum.Enum):
    ACCEPTED = "accepted"
    """The pickup file parsed into an envelope and a message."""
    REJECTED = "rejected"
    """The pickup file cannot be a message (no sender, no recipient, bad headers, too big)."""
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


TRANSITIONS: Mapping[State, Mapping[Event, State]] = {
    State.PICKUP: {
        Event.ACCEPTED: State.QUEUED,
        Event.REJECTED: State.BADMAIL,
    },
    State.QUEUED: {
        Event.CLAIMED: State.DELIVERING,
        Event.DAMAGED: State.BADMAIL,
    },
    State.DELIVERING: {
        Event.DEFERRED: State.QUEUED,
        Event.SETTLED: State.DONE,
        Event.UNDELIVERABLE: State.BADMAIL,
        Event.ABANDONED: State.QUEUED,
        Event.DAMAGED: State.BADMAIL,
    },
    State.BADMAIL: {},
    State.DONE: {},
}


def transition(state: State, event: Event) -> State:
    """The state that ``event`` leads to from ``state``; an unlisted pair is a bug."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise InvalidTransition(
            f"no transition from state {state.value!r} on event {event.value!r}"
        ) from None


class DsnKind(enum.Enum):
    FAILURE = "failed"
    DELAY = "delayed"


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


def _apply_reply(recipient: Recipient, reply: Reply | None, now: datetime) -> Recipient:
    if recipient.state is not RecipientState.PENDING or reply is None:
        return recipient
    state = {
        Severity.SUCCESS: RecipientState.DELIVERED,
        Severity.TEMPORARY: RecipientState.PENDING,
        Severity.PERMANENT: RecipientState.FAILED,
    }[reply.severity]
    return attrs.evolve(recipient, state=state, reply=reply, updated=now)


def _expire(recipient: Recipient, attempts: int, now: datetime) -> Recipient:
    last = f"; last reply: {recipient.reply}" if recipient.reply else ""
    where = f" from {recipient.reply.host}" if recipient.reply and recipient.reply.host else ""
    reply = Reply(
        recipient.reply.code if recipient.reply else 451,
        "4.4.7",
        f"delivery time expired after {attempts} attempts{last}{where}",
    )
    return attrs.evolve(recipient, state=RecipientState.FAILED, reply=reply, updated=now)


def conclude_attempt(
    envelope: Envelope,
    replies: Mapping[str, Reply],
    *,
    retry: Schedule,
    now: datetime,
) -> AttemptOutcome:
    """Apply one attempt's replies (by recipient address) to ``envelope`` and decide what follows.

    A pending recipient without a reply was not attempted (its route was not tried) and stays
    pending as it was.
    """
    recipients = [_apply_reply(r, replies.get(r.address), now) for r in envelope.recipients]
    attempts = envelope.attempts + 1
    updated = attrs.evolve(
        envelope,
        attempts=attempts,
        first_attempt=envelope.first_attempt or now,
        last_attempt=now,
    )
    due: datetime | None = None
    if any(r.state is RecipientState.PENDING for r in recipients):
        due = retry.next_attempt(attempts=attempts, arrival=envelope.arrival, now=now)
        if due is None:
            recipients = [
                _expire(r, attempts, now) if r.state is RecipientState.PENDING else r
                for r in recipients
            ]
        else:
            updated = attrs.evolve(updated, next_attempt=due)

    dsns: list[DsnOrder] = []
    count = envelope.dsn_count
    has_sender = envelope.sender != ""
    failed_now = tuple(r for r in recipients if r.state is RecipientState.FAILED and not r.notified)
    if has_sender and failed_now:
        count += 1
        dsns.append(DsnOrder(dsn_id(envelope.id, count), DsnKind.FAILURE, failed_now))
        recipients = [attrs.evolve(r, notified=True) if r in failed_now else r for r in recipients]

    pending = tuple(r for r in recipients if r.state is RecipientState.PENDING)
    if (
        has_sender
        and due is not None
        and retry.delay_notice_due(
            arrival=envelope.arrival, now=now, already_sent=envelope.delay_notified
        )
    ):
        count += 1
        dsns.append(DsnOrder(dsn_id(envelope.id, count), DsnKind.DELAY, pending))
        updated = attrs.evolve(updated, delay_notified=True)

    updated = attrs.evolve(updated, recipients=tuple(recipients), dsn_count=count)
    if updated.pending:
        event = Event.DEFERRED
    elif not has_sender and any(r.state is RecipientState.FAILED for r in recipients):
        event = Event.UNDELIVERABLE
    else:
        event = Event.SETTLED
    return AttemptOutcome(event, updated, tuple(dsns))
