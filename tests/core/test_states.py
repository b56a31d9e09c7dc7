"""The state table and the decision that ends an attempt, driven with values alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from spoolmail._core.envelope import Envelope, Notify, Recipient, RecipientState
from spoolmail._core.reply import Reply
from spoolmail._core.states import (
    TABLE,
    TRANSITIONS,
    Commit,
    DsnKind,
    Event,
    State,
    Step,
    conclude_attempt,
    flush,
    hold,
    release,
    requeue,
    step,
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

    def delay_notice_at(self, *, arrival: datetime) -> datetime | None:
        return arrival + timedelta(hours=12)

    def __call__(self, recipient: Recipient) -> StubRetry:
        """The same policy for every recipient."""
        return self


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


def test_each_recipient_waits_for_its_own_policy() -> None:
    fast, slow = StubRetry(wait=timedelta(minutes=1)), StubRetry(wait=timedelta(hours=1))
    policies = {"local@x": fast, "remote@y": slow}
    outcome = conclude_attempt(
        envelope("local@x", "remote@y"),
        {"local@x": LATER, "remote@y": LATER},
        retry=lambda r: policies[r.address],
        now=T0,
    )
    assert outcome.envelope.next_attempt == T0 + timedelta(minutes=1)


def test_one_policy_expiring_fails_only_its_recipients() -> None:
    policies = {"local@x": StubRetry(wait=None), "remote@y": StubRetry()}
    outcome = conclude_attempt(
        envelope("local@x", "remote@y"),
        {"local@x": LATER, "remote@y": LATER},
        retry=lambda r: policies[r.address],
        now=T0,
    )
    assert states(outcome.envelope) == {
        "local@x": RecipientState.FAILED,
        "remote@y": RecipientState.PENDING,
    }
    assert outcome.envelope.next_attempt == T0 + timedelta(minutes=15)
    assert [d.kind for d in outcome.dsns] == [DsnKind.FAILURE]


def test_notify_never_silences_a_failure() -> None:
    env = envelope("no@x", "loud@x").with_recipients(
        [Recipient("no@x", notify=Notify.NEVER), Recipient("loud@x")]
    )
    outcome = conclude_attempt(env, {"no@x": NO, "loud@x": NO}, retry=StubRetry(), now=T0)
    [dsn] = outcome.dsns
    assert [r.address for r in dsn.recipients] == ["loud@x"]
    assert all(r.notified for r in outcome.envelope.recipients)
    assert outcome.event is Event.SETTLED


def test_notify_success_asks_for_delivered_and_relayed_notices() -> None:
    env = envelope("a@x", "b@y", "c@z").with_recipients(
        [
            Recipient("a@x", notify=Notify.SUCCESS),
            Recipient("b@y", notify=Notify.SUCCESS | Notify.FAILURE),
            Recipient("c@z"),
        ]
    )
    local = Reply(250, "2.0.0", "delivered to Drop")
    outcome = conclude_attempt(env, {"a@x": local, "b@y": OK, "c@z": OK}, retry=StubRetry(), now=T0)
    assert [(d.kind, [r.address for r in d.recipients]) for d in outcome.dsns] == [
        (DsnKind.DELIVERED, ["a@x"]),
        (DsnKind.RELAYED, ["b@y"]),
    ]
    assert [d.id for d in outcome.dsns] == ["q1-d1", "q1-d2"]


def test_delay_notice_only_for_those_who_want_it() -> None:
    env = envelope("a@x", "b@x").with_recipients(
        [Recipient("a@x", notify=Notify.FAILURE), Recipient("b@x")]
    )
    outcome = conclude_attempt(
        env, {"a@x": LATER, "b@x": LATER}, retry=StubRetry(delay_due=True), now=T0
    )
    [dsn] = outcome.dsns
    assert [r.address for r in dsn.recipients] == ["b@x"]
    assert outcome.envelope.delay_notified


def test_time_on_hold_does_not_count_towards_expiry() -> None:
    seen: list[datetime] = []

    @attrs.define
    class Recording(StubRetry):
        def next_attempt(
            self, *, attempts: int, arrival: datetime, now: datetime
        ) -> datetime | None:
            seen.append(arrival)
            return now + timedelta(minutes=15)

    held = hold(envelope("a@x"), now=T0)
    assert held.held
    back = release(held, now=T0 + timedelta(hours=3))
    assert (back.held, back.next_attempt, back.retry_base) == (
        False,
        T0 + timedelta(hours=3),
        T0 + timedelta(hours=3),
    )
    conclude_attempt(back, {"a@x": LATER}, retry=Recording(), now=T0 + timedelta(hours=3))
    assert seen == [T0 + timedelta(hours=3)]
    again = release(hold(back, now=T0 + timedelta(hours=4)), now=T0 + timedelta(hours=5))
    assert again.held_time == timedelta(hours=4)


def test_flush_makes_due_now_and_keeps_a_hold() -> None:
    later = attrs.evolve(envelope("a@x"), next_attempt=T0 + timedelta(hours=1))
    assert flush(later, now=T0).next_attempt == T0
    assert flush(hold(later, now=T0), now=T0).held


def test_requeue_restarts_the_chosen_recipients() -> None:
    failed = envelope("a@x", "b@x", "c@x").with_recipients(
        [
            Recipient("a@x", RecipientState.DELIVERED, OK),
            Recipient("b@x", RecipientState.FAILED, NO, notified=True, notify=Notify.FAILURE),
            Recipient("c@x", RecipientState.FAILED, NO, notified=True),
        ]
    )
    failed = attrs.evolve(failed, attempts=5, dsn_count=2)
    fresh = requeue(failed, queue_id="q2", now=T0 + timedelta(days=3), addresses=None)
    assert [(r.address, r.state, r.notified, r.notify) for r in fresh.recipients] == [
        ("b@x", RecipientState.PENDING, False, Notify.FAILURE),
        ("c@x", RecipientState.PENDING, False, None),
    ]
    assert (fresh.id, fresh.attempts, fresh.dsn_count, fresh.origin) == ("q2", 0, 0, "requeue:q1")
    assert fresh.next_attempt == T0 + timedelta(days=3)
    only = requeue(failed, queue_id="q3", now=T0, addresses={"c@x"})
    assert [r.address for r in only.recipients] == ["c@x"]


def test_requeue_forgets_what_intake_knew_of_the_lines() -> None:
    # The BadMail file may have been edited: its line ends are checked again when it is sent.
    noted = attrs.evolve(envelope("a@x"), dot_lines=False, eight_bit=False)
    assert requeue(noted, queue_id="q2", now=T0, addresses=None).dot_lines is None


def test_the_table_names_a_commit_for_every_transition() -> None:
    for state, events in TABLE.items():
        for event, found in events.items():
            assert step(state, event) is found
            assert TRANSITIONS[state][event] is found.target
    assert {found.commit for events in TABLE.values() for found in events.values()} == set(Commit)


def test_step_of_an_unlisted_pair_names_state_and_event() -> None:
    with pytest.raises(InvalidTransition, match=r"'done'.*'claimed'"):
        step(State.DONE, Event.CLAIMED)


def test_requeue_direction_follows_where_the_entry_came_from() -> None:
    """Rule 8: a message that was queued goes back to the Queue through the one door; a file
    rejected at Pickup goes back to Pickup, where only intake can read it again."""
    assert step(State.BADMAIL, Event.REQUEUED) == Step(State.QUEUED, Commit.ADMIT)
    assert step(State.BADMAIL, Event.RESUBMITTED) == Step(State.PICKUP, Commit.RESUBMIT)


def test_every_way_into_the_queue_is_the_one_door() -> None:
    doors = {
        (state, event)
        for state, events in TABLE.items()
        for event, found in events.items()
        if found.target is State.QUEUED
        and state is not State.DELIVERING
        and state is not State.QUEUED
    }
    assert doors == {
        (State.NEW, Event.ACCEPTED),
        (State.PICKUP, Event.ACCEPTED),
        (State.BADMAIL, Event.REQUEUED),
    }
    assert {step(*door).commit for door in doors} == {Commit.ADMIT}


def test_an_outcome_is_marked_in_the_envelope_and_listed_as_it_was() -> None:
    # The recipient's one copy carries the mark; the DSN lists it as before the mark, and a
    # recipient nobody asked to hear about is marked all the same (rule 7).
    env = envelope("ok@x", "no@x")
    env = env.with_recipients(
        [attrs.evolve(env.recipients[0], notify=Notify.SUCCESS), env.recipients[1]]
    )
    outcome = conclude_attempt(env, {"ok@x": OK, "no@x": NO}, retry=StubRetry(), now=T0)
    assert [r.notified for r in outcome.envelope.recipients] == [True, True]
    assert [(d.kind, [(r.address, r.notified) for r in d.recipients]) for d in outcome.dsns] == [
        (DsnKind.FAILURE, [("no@x", False)]),
        (DsnKind.RELAYED, [("ok@x", False)]),
    ]
    assert outcome.envelope.notice_at is None  # nobody waits for a delay notice


def test_a_null_senders_outcomes_are_not_marked() -> None:
    outcome = conclude_attempt(
        envelope("ok@x", "later@x", sender=""),
        {"ok@x": OK, "later@x": LATER},
        retry=StubRetry(),
        now=T0,
    )
    assert [r.notified for r in outcome.envelope.recipients] == [False, False]
    assert outcome.dsns == ()
    assert outcome.envelope.notice_at is None


def test_a_waiting_message_keeps_its_delay_notice_time() -> None:
    outcome = conclude_attempt(envelope("later@x"), {"later@x": LATER}, retry=StubRetry(), now=T0)
    assert outcome.envelope.notice_at == T0 + timedelta(hours=12)
