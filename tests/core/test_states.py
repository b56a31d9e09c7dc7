"""The state table and the decision that ends an attempt, driven with values alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from spoolmail._core.envelope import Envelope, Recipient, RecipientState
from spoolmail._core.reply import Reply
from spoolmail._core.states import (
    TRANSITIONS,
    DsnKind,
    Event,
    State,
    conclude_attempt,
    transition,
)
from spoolmail.exceptions import InvalidTransition

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
OK = Reply(250, "2.0.0", "ok", host="mx.test")
LATER = Reply(451, "4.3.0", "try later", host="mx.test")
NO = Reply(550, "5.1.1", "no such user", host="mx.test")


@attrs.define
class StubRetry:
    """A retry schedule answering from fixed values, recording what it was asked."""

    wait: timedelta | None = timedelta(minutes=15)
    delay_due: bool = False
    asked: list[int] = attrs.Factory(list)

    def next_attempt(self, *, attempts: int, arrival: datetime, now: datetime) -> datetime | None:
        self.asked.append(attempts)
        return None if self.wait is None else now + self.wait

    def delay_notice_due(self, *, arrival: datetime, now: datetime, already_sent: bool) -> bool:
        return self.delay_due and not already_sent


def envelope(*addresses: str, sender: str = "alice@example.net", **changes: object) -> Envelope:
    base = Envelope(
        id="q1",
        sender=sender,
        recipients=tuple(Recipient(a) for a in addresses),
        arrival=T0,
        next_attempt=T0,
    )
    return attrs.evolve(base, **changes)


def states(env: Envelope) -> dict[str, RecipientState]:
    return {r.address: r.state for r in env.recipients}


def test_every_listed_transition_is_allowed() -> None:
    for state, events in TRANSITIONS.items():
        for event, target in events.items():
            assert transition(state, event) is target


@pytest.mark.parametrize(
    ("state", "event"),
    [(State.PICKUP, Event.CLAIMED), (State.DONE, Event.DEFERRED), (State.BADMAIL, Event.ACCEPTED)],
)
def test_unlisted_transition_names_state_and_event(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition, match=f"{state.value!r}.*{event.value!r}"):
        transition(state, event)


def test_all_delivered_settles() -> None:
    outcome = conclude_attempt(
        envelope("a@x", "b@x"), {"a@x": OK, "b@x": OK}, retry=StubRetry(), now=T0
    )
    assert outcome.event is Event.SETTLED
    assert outcome.state is State.DONE
    assert outcome.dsns == ()
    assert states(outcome.envelope) == {
        "a@x": RecipientState.DELIVERED,
        "b@x": RecipientState.DELIVERED,
    }
    assert outcome.envelope.attempts == 1
    assert outcome.envelope.first_attempt == T0


def test_mixed_replies_defer_only_the_temporary_and_report_the_permanent() -> None:
    retry = StubRetry()
    outcome = conclude_attempt(
        envelope("ok@x", "later@x", "no@x"),
        {"ok@x": OK, "later@x": LATER, "no@x": NO},
        retry=retry,
        now=T0,
    )
    assert outcome.event is Event.DEFERRED
    assert outcome.state is State.QUEUED
    assert states(outcome.envelope) == {
        "ok@x": RecipientState.DELIVERED,
        "later@x": RecipientState.PENDING,
        "no@x": RecipientState.FAILED,
    }
    assert outcome.envelope.next_attempt == T0 + timedelta(minutes=15)
    assert retry.asked == [1]
    [dsn] = outcome.dsns
    assert dsn.kind is DsnKind.FAILURE
    assert dsn.id == "q1-d1"
    assert [r.address for r in dsn.recipients] == ["no@x"]
    assert outcome.envelope.dsn_count == 1
    failed = next(r for r in outcome.envelope.recipients if r.address == "no@x")
    assert failed.notified


def test_a_failure_is_reported_once_across_attempts() -> None:
    first = conclude_attempt(
        envelope("later@x", "no@x"), {"later@x": LATER, "no@x": NO}, retry=StubRetry(), now=T0
    )
    second = conclude_attempt(
        first.envelope, {"later@x": LATER}, retry=StubRetry(), now=T0 + timedelta(minutes=15)
    )
    assert second.dsns == ()
    third = conclude_attempt(
        second.envelope, {"later@x": NO}, retry=StubRetry(), now=T0 + timedelta(minutes=45)
    )
    assert [(d.id, [r.address for r in d.recipients]) for d in third.dsns] == [
        ("q1-d2", ["later@x"])
    ]
    assert third.event is Event.SETTLED


def test_retry_only_asks_about_pending_recipients() -> None:
    env = envelope("a@x", "b@x")
    env = env.with_recipients([Recipient("a@x", RecipientState.DELIVERED, OK), Recipient("b@x")])
    outcome = conclude_attempt(env, {"b@x": OK}, retry=StubRetry(), now=T0)
    assert outcome.event is Event.SETTLED
    assert states(outcome.envelope)["a@x"] is RecipientState.DELIVERED


def test_expiry_fails_pending_with_4_4_7_and_reports_once() -> None:
    outcome = conclude_attempt(
        envelope("later@x"), {"later@x": LATER}, retry=StubRetry(wait=None), now=T0
    )
    assert outcome.event is Event.SETTLED
    [recipient] = outcome.envelope.recipients
    assert recipient.state is RecipientState.FAILED
    assert recipient.reply is not None
    assert recipient.reply.enhanced == "4.4.7"
    assert "451 4.3.0 try later" in recipient.reply.text
    assert "mx.test" in recipient.reply.text
    [dsn] = outcome.dsns
    assert dsn.kind is DsnKind.FAILURE


def test_delay_notice_once_with_the_pending_recipients() -> None:
    retry = StubRetry(delay_due=True)
    outcome = conclude_attempt(envelope("later@x"), {"later@x": LATER}, retry=retry, now=T0)
    [dsn] = outcome.dsns
    assert dsn.kind is DsnKind.DELAY
    assert outcome.envelope.delay_notified
    again = conclude_attempt(outcome.envelope, {"later@x": LATER}, retry=retry, now=T0)
    assert again.dsns == ()


def test_failure_and_delay_in_one_attempt_get_distinct_ids() -> None:
    outcome = conclude_attempt(
        envelope("later@x", "no@x"),
        {"later@x": LATER, "no@x": NO},
        retry=StubRetry(delay_due=True),
        now=T0,
    )
    assert [(d.id, d.kind) for d in outcome.dsns] == [
        ("q1-d1", DsnKind.FAILURE),
        ("q1-d2", DsnKind.DELAY),
    ]


def test_null_sender_is_never_answered_and_ends_in_badmail() -> None:
    outcome = conclude_attempt(
        envelope("no@x", sender=""), {"no@x": NO}, retry=StubRetry(delay_due=True), now=T0
    )
    assert outcome.dsns == ()
    assert outcome.event is Event.UNDELIVERABLE
    assert outcome.state is State.BADMAIL


def test_null_sender_waits_while_anything_is_pending() -> None:
    outcome = conclude_attempt(
        envelope("no@x", "later@x", sender=""),
        {"no@x": NO, "later@x": LATER},
        retry=StubRetry(),
        now=T0,
    )
    assert outcome.event is Event.DEFERRED
    assert outcome.dsns == ()


def test_null_sender_all_delivered_settles() -> None:
    outcome = conclude_attempt(envelope("a@x", sender=""), {"a@x": OK}, retry=StubRetry(), now=T0)
    assert outcome.event is Event.SETTLED


def test_recipient_without_reply_stays_as_it_was() -> None:
    outcome = conclude_attempt(envelope("a@x", "b@x"), {"a@x": OK}, retry=StubRetry(), now=T0)
    assert states(outcome.envelope)["b@x"] is RecipientState.PENDING
    assert outcome.event is Event.DEFERRED
