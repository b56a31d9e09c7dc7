"""Dead-host notes and an operator's flush: what is forgotten, and what an attempt not made costs.

Postfix's model (``postqueue -f``, qmgr's dead destinations): a flush forgets the notes of the
destinations it flushes, so the flushed mail is really tried; a message passed over for a host
known to be dead was not attempted and keeps its attempt count. Both filesystems, no network.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from spoolmail import MailService, Reply, Router, Spool
from spoolmail._core.routing import Hop, HopKind, Target
from spoolmail._service.destinations import DeadDestinations
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.messages import message

REFUSED = Reply(451, "4.4.1", "connection refused", host="[127.0.0.2]")
A_HOST = Target("127.0.0.2", 25, literal=True)
B_HOST = Target("127.0.0.3", 25, literal=True)


@pytest.fixture
def transport() -> CapturingTransport:
    return CapturingTransport(lambda address: REFUSED)


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(
            local_domains=["example.com"],
            routes={"a.test": "[127.0.0.2]", "b.test": "[127.0.0.3]"},
        ),
        transport=transport,
        host_resolver=StaticResolver(),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def test_forget_drops_only_the_hosts_met_through_the_hops() -> None:
    clock = FakeClock()
    dead = DeadDestinations()
    mx_a, relay = Hop(HopKind.MX, "a.test"), Hop(HopKind.HOST, "relay.test")
    dead.mark(A_HOST, clock() + timedelta(minutes=15), REFUSED, hop=mx_a)
    dead.mark(B_HOST, clock() + timedelta(minutes=15), REFUSED, hop=relay)
    assert dead.forget([Hop(HopKind.MX, "other.test")]) == []
    assert dead.forget([mx_a]) == [A_HOST]
    assert set(dead.marks) == {B_HOST}
    # A message for another domain that meets the dead host adds its way to the note.
    mx_b = Hop(HopKind.MX, "b.test")
    note = dead.skip(B_HOST, clock, hop=mx_b)
    assert note is not None
    assert "did not answer the last attempt" in note.reply.text
    assert dead.forget([mx_b]) == [B_HOST]
    assert dead.marks == {}


def test_a_flush_forgets_its_own_hosts_not_the_others(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    spool.submit(message("x@a.test"))
    spool.submit(message("y@b.test"))
    [(a_id, _), _] = sorted(service.run_once().deferred, key=lambda pair: pair[1])
    assert set(service._delivery.dead.marks) == {A_HOST, B_HOST}
    clock.advance(minutes=1)
    spool.flush([a_id])
    transport.answers = None  # both hosts are back
    report = service.run_once()
    assert report.delivered == ((a_id, "x@a.test"),)
    assert set(service._delivery.dead.marks) == {B_HOST}  # not flushed: still left alone


def test_a_held_message_does_not_forget_its_host(
    spool: Spool, service: MailService, clock: FakeClock
) -> None:
    spool.submit(message("x@a.test"))
    [(queue_id, _)] = service.run_once().deferred
    spool.hold([queue_id])
    spool.flush([queue_id])  # held: stays held, not due, nothing forgotten
    service.run_once()
    assert set(service._delivery.dead.marks) == {A_HOST}


def test_passed_over_keeps_the_count_and_waits_for_the_host(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    spool.submit(message("x@a.test"))
    first = service.run_once()
    spool.submit(message("z@a.test"))
    [(queue_id, _)] = service.run_once().deferred
    assert len(transport.attempts) == 1  # the second message did not knock
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.attempts, envelope.first_attempt, envelope.last_attempt) == (0, None, None)
    [(first_id, _)] = first.deferred
    assert envelope.next_attempt == spool.queued_message(first_id).envelope.next_attempt
    [recipient] = envelope.recipients
    assert recipient.reply is not None
    assert "did not answer the last attempt" in recipient.reply.text
    assert "did not answer the last attempt" in spool.transcript(queue_id)


def test_a_message_passed_over_still_expires_on_time(
    spool: Spool, service: MailService, clock: FakeClock
) -> None:
    """Its time runs out while the host is noted dead: due at its expiry, and then it fails."""
    spool.submit(message("x@a.test"))
    [(queue_id, _)] = service.run_once().deferred
    envelope = spool.queued_message(queue_id).envelope
    expiry = envelope.arrival + timedelta(days=2)  # IIS: outbound expiration timeout, 2 days
    service._delivery.dead.mark(A_HOST, expiry + timedelta(days=1), REFUSED)
    clock.set(envelope.next_attempt)
    assert service.run_once().deferred == ((queue_id, "x@a.test"),)
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.attempts, envelope.next_attempt) == (1, expiry)
    clock.set(expiry)
    assert service.run_once().failed == ((queue_id, "x@a.test"),)
