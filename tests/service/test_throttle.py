"""Backing off when receivers ask: a 421 or a 4.7.x "rate" reply throttles the destination
(halved connections, a wait the other messages are passed over for, without an attempt of
their own), the transcript and the mail log say why, and an optional message rate per minute."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from spoolmail import MailService, Reply, Report, Router, Spool, ThrottleRules
from spoolmail._core.events import Deferred
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._service import destinations
from spoolmail._service.destinations import Throttles
from spoolmail._transport.base import Outgoing
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests import waiting

RATE = Reply(
    421, "4.7.28", "Gmail has detected an unusual rate of unsolicited mail", host="mx.gmail.test"
)


def make(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, **options: object
) -> MailService:
    return MailService(
        spool,
        router=Router(local_domains=["example.com"]),
        transport=transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        fqdn="mail.example.com",
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = make(spool, transport, clock)
    yield service
    service.close()


def send(spool: Spool, to: str) -> str:
    head = f"From: alice@example.com\r\nTo: {to}\r\nSubject: hi\r\n\r\nhi\r\n"
    return spool.submit(head.encode(), sender="alice@example.com", recipients=[to])


def test_a_destination_that_asks_is_left_alone_for_a_while(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Deferred] = []
    spool.subscribe(lambda e: events.append(e) if isinstance(e, Deferred) else None)
    transport.answers = {"bob@gmail.test": RATE}
    send(spool, "bob@gmail.test")
    with caplog.at_level(logging.WARNING, logger="spoolmail"):
        first = service.run_once()
    assert len(first.deferred) == 1
    assert "gmail.test asked to slow down (421 4.7.28" in caplog.text
    assert "at most 5 connection(s) at once" in caplog.text  # 10 halved
    # Another message for the domain, a moment later: passed over, no connection, no attempt.
    transport.answers = {}
    clock.advance(seconds=10)
    queue_id = send(spool, "carol@gmail.test")
    second = service.run_once()
    assert second.deferred == ((queue_id, "carol@gmail.test"),)
    assert len(transport.attempts) == 1
    envelope = spool.queued_message(queue_id).envelope
    assert envelope.attempts == 0  # passed over, not attempted
    assert envelope.next_attempt == clock.now - timedelta(seconds=10) + timedelta(minutes=1)
    [reply] = [r.reply for r in envelope.recipients]
    assert reply is not None
    assert (reply.code, reply.status) == (451, "4.7.0")
    assert "gmail.test asked to slow down (421 4.7.28" in reply.text
    assert "asked to slow down" in spool.transcript(queue_id)
    assert any("asked to slow down" in e.reply.text for e in events)  # the mail log's record
    # Once the wait is over, it is tried, and accepted.
    clock.set(envelope.next_attempt)
    third = service.run_once()
    assert "carol@gmail.test" in {a for _, a in third.delivered}, (
        third,
        spool.transcript(queue_id),
    )


def test_other_destinations_are_not_slowed(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"bob@gmail.test": RATE}
    send(spool, "bob@gmail.test")
    service.run_once()
    send(spool, "dan@outlook.test")
    report = service.run_once()
    assert [a for _, a in report.delivered] == ["dan@outlook.test"]


def test_a_message_rate_per_destination(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    service = make(spool, transport, clock, throttle=ThrottleRules(max_messages_per_minute=2))
    try:
        ids = [send(spool, f"user{n}@gmail.test") for n in range(3)]
        report = service.run_once()
        assert len(report.delivered) == 2
        [(waiting, _)] = report.deferred
        assert waiting in ids
        reply = spool.queued_message(waiting).envelope.recipients[0].reply
        assert reply is not None
        assert "at most 2 message(s) a minute" in reply.text
        clock.advance(seconds=30)
        assert len(service.run_once().delivered) == 1
    finally:
        service.close()


def test_a_delivery_thread_is_not_kept_waiting_for_a_destination_it_will_pass_over() -> None:
    # Two deliveries to gmail.test under way when one is asked to slow down: the limit is one
    # connection and the destination waits. A third thread waited in take() until one of the
    # two finished (a big message's minutes), kept from every other destination, only to be
    # told by check() that gmail.test is passed over.
    clock = FakeClock()
    throttles = Throttles(ThrottleRules(max_connections=2))
    throttles.take("gmail.test", clock)
    throttles.take("gmail.test", clock)
    assert throttles.observe("gmail.test", [RATE], clock) is not None
    outcome: list[tuple[Reply, datetime] | None] = []

    def third() -> None:
        throttles.take("gmail.test", clock)
        try:
            outcome.append(throttles.check("gmail.test", clock))
        finally:
            throttles.give("gmail.test")

    thread = threading.Thread(target=third, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "kept waiting for a connection it would not make"
    [held] = outcome
    assert held is not None
    assert "asked to slow down" in held[0].text
    # Once the wait is over, the limit holds again: a fourth waits for a connection.
    clock.advance(timedelta(hours=1))
    fourth = threading.Thread(target=throttles.take, args=("gmail.test", clock), daemon=True)
    fourth.start()
    fourth.join(timeout=0.3)
    assert fourth.is_alive()
    throttles.give("gmail.test")
    throttles.give("gmail.test")
    fourth.join(timeout=5)
    assert not fourth.is_alive()
    throttles.give("gmail.test")


def test_a_destination_that_spent_its_rate_keeps_it_spent_past_ten_thousand_others() -> None:
    # Past 10,000 buckets every one was dropped: the destination that had just spent its rate
    # got a full bucket back. Only those a minute untouched (full again anyway) go now.
    clock = FakeClock()
    throttles = Throttles(ThrottleRules(max_messages_per_minute=1))
    assert throttles.check("spent.test", clock) is None
    assert throttles.check("spent.test", clock) is not None  # its one message this minute
    clock.advance(seconds=1)
    for number in range(10_001):
        assert throttles.check(f"d{number}.test", clock) is None
    held = throttles.check("spent.test", clock)
    assert held is not None
    assert "at most 1 message(s) a minute" in held[0].text
    clock.advance(minutes=1)
    assert throttles.check("spent.test", clock) is None  # full again, as it should be


def test_destinations_that_asked_once_and_got_no_mail_since_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A throttle went only at the destination's next accepted delivery: one that no mail went
    # to again stayed for the service's life.
    monkeypatch.setattr(destinations, "_MANY_THROTTLED", 4)
    clock = FakeClock()
    rules = ThrottleRules()
    throttles = Throttles(rules)
    for name in ("a.test", "b.test", "busy.test"):
        throttles.observe(name, [RATE], clock)
    throttles.take("busy.test", clock)  # a delivery to it is under way
    clock.advance(rules.max_wait + rules.first_wait + timedelta(minutes=1))
    throttles.observe("recent.test", [RATE], clock)
    assert set(throttles.throttled()) == {"a.test", "b.test", "busy.test", "recent.test"}
    throttles.observe("new.test", [RATE], clock)  # past the bound: the quiet ones go
    assert set(throttles.throttled()) == {"busy.test", "recent.test", "new.test"}
    throttles.give("busy.test")


def test_many_destinations_asking_at_once_are_not_scanned_for_each_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Past the bound, every new destination that asked scanned all of them for quiet ones,
    # even when none was quiet (all asked within max_wait): the next scan now waits until as
    # many again have asked.
    monkeypatch.setattr(destinations, "_MANY_THROTTLED", 4)
    scans: list[int] = []
    forget = Throttles._forget_quiet

    def counted(self: Throttles, now: datetime) -> None:
        scans.append(len(self._states))
        forget(self, now)

    monkeypatch.setattr(Throttles, "_forget_quiet", counted)
    clock = FakeClock()
    throttles = Throttles(ThrottleRules())
    for number in range(20):
        throttles.observe(f"d{number}.test", [RATE], clock)
    assert len(throttles.throttled()) == 20  # none was quiet: none forgotten
    assert scans == [4, 8, 16]


class _Holding(CapturingTransport):
    """Holds its first send until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, target: Target, message: Outgoing, transcript: Transcript) -> dict[str, Reply]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return super().send(target, message, transcript)


def test_a_delivery_that_waited_for_its_connection_sees_a_throttle_set_meanwhile(
    spool: Spool, clock: FakeClock
) -> None:
    # Two messages for gmail.test: the second waits for the host's one connection (slow
    # start) while the first is sent, and meanwhile the destination asks another delivery to
    # slow down. The second connected anyway once the first was done: another refusal, which
    # doubled the destination's wait.
    transport = _Holding()
    transport.answers = {"bob@gmail.test": RATE, "carol@gmail.test": RATE}
    service = make(spool, transport, clock)
    first, second = send(spool, "bob@gmail.test"), send(spool, "carol@gmail.test")
    outcome: list[Report] = []
    ticking = threading.Thread(target=lambda: outcome.append(service.run_once()), daemon=True)
    ticking.start()
    try:
        assert transport.entered.wait(10)
        concurrency = service._delivery.concurrency  # the second's thread waits there
        waiting.until("the second waits", lambda: any(concurrency._waiting.values()))
        assert service._delivery.throttles.observe("gmail.test", [RATE], clock) is not None
    finally:
        transport.release.set()
        ticking.join(10)
    [report] = outcome
    assert len(transport.attempts) == 1
    assert {queue_id for queue_id, _ in report.deferred} == {first, second}
    [(_, sent)] = transport.attempts
    held = second if "bob@gmail.test" in sent else first
    assert "asked to slow down" in spool.transcript(held)
    assert spool.queued_message(held).envelope.attempts == 0  # passed over, not attempted
    service.close()
