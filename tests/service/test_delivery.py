"""The delivery agent alone: next host on a temporary failure, dead destinations, limits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from spoolmail import Reply
from spoolmail._core.envelope import Envelope, Recipient
from spoolmail._core.routing import Router, SmartHostMode, Target
from spoolmail._core.states import Event, State
from spoolmail._service.delivery import Deliverer
from spoolmail._service.destinations import DeadDestinations
from spoolmail._store import pyfs
from spoolmail._store.spool import Spool
from spoolmail._store.transitions import Change
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

PRIMARY = Target("127.0.0.11", name="mx1.test")
BACKUP = Target("127.0.0.12", name="mx2.test")
NAMES = StaticResolver(
    mx={"remote.test": [(10, "mx1.test"), (20, "mx2.test")]},
    hosts={"mx1.test": ["127.0.0.11"], "mx2.test": ["127.0.0.12"]},
)
LATER = Reply(451, "4.3.0", "busy", host="mx1.test")
DOWN = Reply(451, "4.4.1", "connection refused", host="mx1.test")


class PerHost(CapturingTransport):
    """Answers by host: ``by_host[target][address]``."""

    def __init__(self, by_host: dict[Target, dict[str, Reply]]) -> None:
        super().__init__()
        self.by_host = by_host

    def send(self, target, message, transcript):  # type: ignore[no-untyped-def]
        self.answers = self.by_host.get(target, {})
        return super().send(target, message, transcript)


def deliverer(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Deliverer:
    return Deliverer(
        transitions=spool._transitions,
        router=Router(local_domains=["example.com"]),
        resolver=NAMES,
        transport=transport,
        clock=clock,
        max_message_size=1 << 20,
        max_hop_count=15,
        sleep=clock.sleep,
    )


def queued(spool: Spool, clock: FakeClock, *addresses: str) -> Envelope:
    envelope = Envelope(
        id="19ac9b2f1c0-000000000001",
        sender="a@example.com",
        recipients=tuple(Recipient(a) for a in addresses),
        arrival=clock(),
        next_attempt=clock(),
        size=40,
    )
    spool._transitions.apply(
        State.NEW,
        Event.ACCEPTED,
        Change(id=envelope.id, message=b"From: a@example.com\r\n\r\nhi\r\n", envelope=envelope),
    )
    return envelope


@pytest.fixture
def spool(filesystem: pyfs.FS, clock: FakeClock) -> Spool:
    return Spool(filesystem, clock=clock)


def test_the_next_host_gets_only_what_the_first_deferred(spool: Spool, clock: FakeClock) -> None:
    transport = PerHost({PRIMARY: {"x@remote.test": LATER}})
    attempt = deliverer(spool, transport, clock).attempt(
        queued(spool, clock, "x@remote.test", "y@remote.test")
    )
    assert transport.attempts == [
        (PRIMARY, ("x@remote.test", "y@remote.test")),
        (BACKUP, ("x@remote.test",)),
    ]
    assert {a: r.code for a, r in attempt.replies.items()} == {
        "x@remote.test": 250,
        "y@remote.test": 250,
    }
    assert attempt.unreachable == {}


def test_a_silent_host_is_remembered_and_skipped(spool: Spool, clock: FakeClock) -> None:
    transport = PerHost({PRIMARY: {"x@remote.test": DOWN}, BACKUP: {"x@remote.test": LATER}})
    agent = deliverer(spool, transport, clock)
    envelope = queued(spool, clock, "x@remote.test")
    attempt = agent.attempt(envelope)
    assert attempt.unreachable == {PRIMARY: DOWN}
    agent.dead.mark(PRIMARY, clock() + timedelta(minutes=15), DOWN)
    again = agent.attempt(envelope)
    assert transport.attempts[-1] == (BACKUP, ("x@remote.test",))  # mx1 was not knocked on
    assert "mx1.test[127.0.0.11]:25 did not answer" in again.transcripts["RTR"].text


def test_dead_marks_expire() -> None:
    dead = DeadDestinations()
    clock = FakeClock()
    dead.mark(PRIMARY, clock() + timedelta(minutes=15), DOWN)
    assert dead.reason(PRIMARY, clock) is not None
    clock.advance(minutes=15)
    assert dead.reason(PRIMARY, clock) is None
    assert dead.marks == {}


def test_a_host_answering_again_is_forgotten(spool: Spool, clock: FakeClock) -> None:
    transport = PerHost({})
    agent = deliverer(spool, transport, clock)
    agent.dead.mark(PRIMARY, clock(), DOWN)  # due for another try now
    agent.attempt(queued(spool, clock, "x@remote.test"))
    assert agent.dead.marks == {}


def test_a_null_mx_domain_is_not_handed_to_the_fallback_smart_host(
    spool: Spool, clock: FakeClock
) -> None:
    names = StaticResolver(mx={"nomail.test": [(0, ".")]}, hosts={"relay.test": ["127.0.0.9"]})
    transport = CapturingTransport()
    agent = Deliverer(
        transitions=spool._transitions,
        router=Router(
            local_domains=["example.com"],
            smart_host="relay.test",
            smart_host_mode=SmartHostMode.FALLBACK,
        ),
        transport=transport,
        clock=clock,
        max_message_size=1 << 20,
        max_hop_count=15,
        resolver=names,
    )
    attempt = agent.attempt(queued(spool, clock, "x@nomail.test", "y@unknown.test"))
    assert attempt.replies["x@nomail.test"].status == "5.1.10"
    # A domain merely unknown to this DNS may be one the smart host knows (an internal one).
    assert attempt.replies["y@unknown.test"].code == 250
    assert transport.attempts == [(Target("127.0.0.9", name="relay.test"), ("y@unknown.test",))]
