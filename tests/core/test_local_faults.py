"""Rule 9 of the state machine: a local fault is not a delivery attempt."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from spoolmail._core.envelope import (
    Envelope,
    Recipient,
    RecipientState,
    decode_envelope,
    encode_envelope,
)
from spoolmail._core.reply import Reply
from spoolmail._core.states import (
    AttemptOutcome,
    Event,
    defer_local_fault,
    local_fault_wait,
    requeue,
    retry_local_faults_soon,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
DISK_FULL = Reply(451, "4.3.0", "cannot write the Drop file: [Errno 28] No space left on device")
OK = Reply(250, "2.0.0", "ok", host="mx.test")


def envelope(**changes: object) -> Envelope:
    base = Envelope(
        id="19ac9b2f1c0-000000000001",
        sender="alice@example.net",
        recipients=(Recipient("bob@example.com"), Recipient("carol@remote.test")),
        arrival=NOW,
        next_attempt=NOW,
    )
    return attrs.evolve(base, **changes)


def test_the_back_off_doubles_from_ten_seconds_up_to_five_minutes() -> None:
    waits = [local_fault_wait(n).total_seconds() for n in range(1, 9)]
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300]
    assert local_fault_wait(10**6) == timedelta(minutes=5)
    with pytest.raises(ValueError, match="from 1"):
        local_fault_wait(0)


def test_a_local_fault_alone_is_not_an_attempt() -> None:
    before = envelope(attempts=2, local_faults=1, delay_notified=False)
    outcome = defer_local_fault(before, {"bob@example.com": DISK_FULL}, now=NOW)
    assert outcome.event is Event.DEFERRED
    assert outcome.dsns == ()
    after = outcome.envelope
    assert (after.attempts, after.local_faults) == (2, 2)
    assert after.last_attempt == before.last_attempt
    assert after.next_attempt == NOW + timedelta(seconds=20)
    bob, carol = after.recipients
    assert (bob.state, bob.reply, bob.updated) == (RecipientState.PENDING, DISK_FULL, NOW)
    assert carol == before.recipients[1]


def test_a_local_fault_waits_no_longer_than_until() -> None:
    outcome = defer_local_fault(
        envelope(), {"bob@example.com": DISK_FULL}, now=NOW, until=NOW + timedelta(seconds=3)
    )
    assert outcome.envelope.next_attempt == NOW + timedelta(seconds=3)


def test_beside_a_real_attempt_the_faulted_recipient_is_due_soon() -> None:
    waiting = envelope(attempts=1, next_attempt=NOW + timedelta(hours=1))
    outcome = AttemptOutcome(Event.DEFERRED, waiting)
    sooner = retry_local_faults_soon(outcome, {"bob@example.com"}, now=NOW)
    assert sooner.envelope.next_attempt == NOW + timedelta(seconds=10)
    assert (sooner.envelope.attempts, sooner.envelope.local_faults) == (1, 1)
    # Nothing to bring forward when the faulted recipient is no longer pending, or nothing waits.
    bob_done = waiting.with_recipients(
        [attrs.evolve(waiting.recipients[0], state=RecipientState.DELIVERED), waiting.recipients[1]]
    )
    same = AttemptOutcome(Event.DEFERRED, bob_done)
    assert retry_local_faults_soon(same, {"bob@example.com"}, now=NOW) is same
    settled = AttemptOutcome(Event.SETTLED, waiting)
    assert retry_local_faults_soon(settled, {"bob@example.com"}, now=NOW) is settled


def test_the_count_is_kept_in_the_envelope_file_and_older_files_read_as_none() -> None:
    faulted = envelope(local_faults=3)
    assert decode_envelope(encode_envelope(faulted)) == faulted
    data = json.loads(encode_envelope(faulted))
    assert (data["version"], data["local_faults"]) == (1, 3)
    del data["local_faults"]  # a file written before the field existed
    assert decode_envelope(json.dumps(data).encode()).local_faults == 0


def test_a_requeued_message_starts_without_faults() -> None:
    again = requeue(
        envelope(local_faults=4), queue_id="19ac9b2f1c0-000000000002", now=NOW, addresses=None
    )
    assert again.local_faults == 0
