"""Events: what observers hear, when they hear it, and what the log records and stats() say.

Every test here runs on MemoryFS and on OSFS in a temp dir (the ``filesystem`` fixture), with a
fake clock and ``CapturingTransport``; the last test sends to a real aiosmtpd server on
127.0.0.1, whose own ``250`` text must reach the event.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spoolmail import (
    MailEvent,
    MailService,
    Reply,
    RetryPolicy,
    Router,
    Spool,
    State,
    Stats,
)
from spoolmail._service import observers
from spoolmail._service.observers import log_event
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from spoolmail.events import (
    Deferred,
    Deleted,
    Delivered,
    Dropped,
    DsnQueued,
    Failed,
    Flushed,
    Held,
    PickedUp,
    Queued,
    Released,
    Removed,
    Requeued,
    Source,
    ToBadMail,
    decode_event,
    describe,
    encode_event,
)
from spoolmail.exceptions import ConfigurationError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.smtpservers import smtp_server

OK = Reply(250, "2.0.0", "queued as 4XyZ", host="192.0.2.25")
LATER = Reply(451, "4.3.0", "mailbox busy", host="192.0.2.25")
NO = Reply(550, "5.1.1", "no such user", host="192.0.2.25")


class Heard:
    """An observer that keeps every event, and what the spool held when each was fired."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.events: list[MailEvent] = []
        self.seen: list[tuple[str, str, bool]] = []

    def __call__(self, event: MailEvent) -> None:
        self.events.append(event)
        spool = self.spool
        if isinstance(event, Queued):
            queued = any(item.id == event.queue_id for item in spool.queued())
            self.seen.append(("queued", event.queue_id, queued))
        elif isinstance(event, Dropped):
            dropped = any(item.id == event.queue_id for item in spool.drop())
            self.seen.append(("dropped", event.queue_id, dropped))
        elif isinstance(event, Removed):
            gone = all(item.id != event.queue_id for item in spool.queued())
            self.seen.append(("removed", event.queue_id, gone))
        elif isinstance(event, ToBadMail):
            there = any(item.id == event.queue_id for item in spool.badmail())
            self.seen.append(("badmail", event.queue_id, there))

    def of(self, kind: type[MailEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def make_service(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, **settings: Any
) -> MailService:
    settings.setdefault(
        "router", Router(local_domains=["example.com"], smart_host="relay.test:2525")
    )
    settings.setdefault("host_resolver", StaticResolver(fallback="192.0.2.25"))
    return MailService(spool, transport=transport, clock=clock, fqdn="mail.example.com", **settings)


@pytest.fixture
def heard(spool: Spool) -> Heard:
    return Heard(spool)


@pytest.fixture
def answers() -> dict[str, Reply]:
    return {"ok@remote.test": OK, "later@remote.test": LATER, "no@remote.test": NO}


@pytest.fixture
def service(
    spool: Spool, clock: FakeClock, heard: Heard, answers: dict[str, Reply]
) -> Iterator[MailService]:
    def slow_ok(_address: str) -> Reply:
        clock.advance(seconds=1.25)  # the remote server takes its time
        return OK

    answers = {**answers, "ok@remote.test": slow_ok}  # type: ignore[dict-item]
    service = make_service(
        spool, CapturingTransport(answers), clock, observers=[heard], pickup_settle=timedelta(0)
    )
    yield service
    service.close()


def submit(spool: Spool, *recipients: str, sender: str = "alice@example.com") -> str:
    return spool.submit(
        b"Subject: events\r\n\r\nhello\r\n", sender=sender, recipients=list(recipients)
    )


def test_one_attempt_tells_each_outcome_after_its_commit(
    spool: Spool, service: MailService, heard: Heard, clock: FakeClock
) -> None:
    queue_id = submit(
        spool, "bob@example.com", "ok@remote.test", "later@remote.test", "no@remote.test"
    )
    service.run_once()

    [picked] = heard.of(PickedUp)
    assert (picked.queue_id, picked.file) == (queue_id, f"{queue_id}.eml")
    queued = [e for e in heard.of(Queued) if e.queue_id == queue_id]
    assert len(queued) == 1
    assert queued[0].source is Source.PICKUP
    assert queued[0].recipients == (
        "bob@example.com",
        "ok@remote.test",
        "later@remote.test",
        "no@remote.test",
    )
    assert queued[0].sender == "alice@example.com"
    assert queued[0].size > 0

    delivered = {e.recipient: e for e in heard.of(Delivered) if e.queue_id == queue_id}
    assert delivered["bob@example.com"].drop_file == f"Drop/{queue_id}.eml"
    assert delivered["bob@example.com"].relay is None
    assert delivered["ok@remote.test"].relay == "relay.test[192.0.2.25]:2525"
    assert str(delivered["ok@remote.test"].reply) == "250 2.0.0 queued as 4XyZ"
    assert delivered["ok@remote.test"].delay == timedelta(seconds=1.25)
    [deferred] = heard.of(Deferred)
    assert (deferred.recipient, deferred.reply) == ("later@remote.test", LATER)
    assert deferred.next_attempt == spool.queued_message(queue_id).envelope.next_attempt
    assert deferred.next_attempt > clock()
    [failed] = heard.of(Failed)
    assert (failed.recipient, failed.reply.status) == ("no@remote.test", "5.1.1")
    [dsn] = heard.of(DsnQueued)
    assert (dsn.queue_id, dsn.action, dsn.recipients) == (queue_id, "failed", ("no@remote.test",))
    dsn_queued = [e for e in heard.of(Queued) if e.queue_id == dsn.dsn_id]
    assert dsn_queued[0].source is Source.DSN
    assert dsn_queued[0].sender == ""
    # The DSN went to alice@example.com, a local address: its own story follows, to the end.
    assert [type(e) for e in heard.events if e.queue_id == dsn.dsn_id] == [
        Queued,
        Dropped,
        Delivered,
        Removed,
    ]
    # The message waits for later@: it is not removed; each event came after its commit.
    assert not [e for e in heard.of(Removed) if e.queue_id == queue_id]
    assert heard.seen
    assert all(done for _, _, done in heard.seen), heard.seen


def test_the_parent_s_events_come_in_postfix_order(
    spool: Spool, service: MailService, heard: Heard
) -> None:
    queue_id = submit(spool, "bob@example.com", "no@remote.test")
    service.run_once()
    mine = [type(e) for e in heard.events if e.queue_id == queue_id]
    assert mine == [PickedUp, Queued, Dropped, Delivered, Failed, DsnQueued, Removed]


class TickingClock(FakeClock):
    """A clock that moves on a microsecond at each reading, as a real one does."""

    def __call__(self) -> datetime:
        return self.advance(microseconds=1)


@pytest.mark.parametrize("to", ["ok@remote.test", "no@remote.test"])
def test_a_commit_s_events_are_timed_by_one_reading_of_the_clock(
    spool: Spool, heard: Heard, to: str
) -> None:
    # The mail log writes a commit's lines together, the message's end last: its time must
    # not come before the deliveries it follows (it did, read from the clock first).
    clock = TickingClock()
    transport = CapturingTransport({"ok@remote.test": OK, "no@remote.test": NO})
    service = make_service(spool, transport, clock, observers=[heard])
    try:
        queue_id = submit(spool, to, sender="<>")
        service.run_once()
    finally:
        service.close()
    told = [e for e in heard.events if e.queue_id == queue_id]
    reply, end = told[-2:]
    assert type(reply) is (Delivered if to.startswith("ok") else Failed)
    assert type(end) is (Removed if to.startswith("ok") else ToBadMail)
    assert end.time == reply.time
    times = [e.time for e in told]
    assert times == sorted(times)


def test_the_retry_and_the_expiry_are_told_too(
    spool: Spool, clock: FakeClock, heard: Heard
) -> None:
    transport = CapturingTransport({"later@remote.test": LATER})
    service = make_service(
        spool,
        transport,
        clock,
        observers=[heard],
        retry=RetryPolicy.iis(ndr_expire_minutes=60, delay_expire_minutes=None),
    )
    try:
        queue_id = submit(spool, "later@remote.test", sender="<>")
        service.run_once()
        while (due := service.next_due()) is not None:
            clock.set(due)
            service.run_once()
    finally:
        service.close()
    deferred = heard.of(Deferred)
    assert len(deferred) >= 2
    assert [d.next_attempt for d in deferred] == sorted(d.next_attempt for d in deferred)
    [failed] = heard.of(Failed)
    assert failed.reply.status == "4.4.7"
    assert failed.reply.cause == LATER  # the last remote reply it rests on
    # From <>, a failure cannot be returned: BadMail, with the reason.
    [badmail] = heard.of(ToBadMail)
    assert badmail.queue_id == queue_id
    assert badmail.status.startswith(("4.", "5."))
    assert not heard.of(DsnQueued)
    assert heard.seen[-1] == ("badmail", queue_id, True)


def test_a_delay_notice_is_a_dsn_queued_with_action_delayed(
    spool: Spool, clock: FakeClock, heard: Heard
) -> None:
    transport = CapturingTransport({"later@remote.test": LATER})
    service = make_service(spool, transport, clock, observers=[heard])
    try:
        queue_id = submit(spool, "later@remote.test")
        service.run_once()
        clock.advance(hours=12, minutes=1)  # IIS: the delay notice after 12 hours
        while (due := service.next_due()) is not None and due <= clock():
            service.run_once()
    finally:
        service.close()
    notices = [e for e in heard.of(DsnQueued) if e.queue_id == queue_id]
    assert [n.action for n in notices] == ["delayed"]
    assert "sender delay notification" in describe(notices[0])


def test_a_rejected_pickup_file_is_picked_up_then_badmail(
    spool: Spool, service: MailService, heard: Heard
) -> None:
    spool.fs.writebytes("Pickup/nobody.eml", b"Subject: no sender, no recipient\r\n\r\nx\r\n")
    report = service.run_once()
    [queue_id] = report.badmail
    assert [type(e) for e in heard.events] == [PickedUp, ToBadMail]
    picked, badmail = heard.events
    assert isinstance(picked, PickedUp)
    assert isinstance(badmail, ToBadMail)
    assert picked.file == "nobody.eml"
    assert badmail.queue_id == queue_id
    assert badmail.status.startswith("5.")
    assert "no sender" in badmail.reason
    assert badmail.reason in spool.badmail_item(queue_id).report
    assert heard.seen == [("badmail", queue_id, True)]


def test_admit_announces_queued_with_its_origin(spool: Spool, heard: Heard) -> None:
    spool.subscribe(heard)
    queue_id = spool.admit(
        b"Subject: hi\r\n\r\nbody\r\n",
        sender="carol@client.test",
        recipients=["bob@example.com"],
        origin="smtp:192.0.2.7",
    )
    [queued] = heard.events
    assert isinstance(queued, Queued)
    assert (queued.queue_id, queued.origin, queued.source) == (
        queue_id,
        "smtp:192.0.2.7",
        Source.SMTP,
    )
    assert queued.size == len(spool.message(queue_id))
    assert heard.seen == [("queued", queue_id, True)]


def test_operators_orders_are_told_without_a_service(
    spool: Spool, clock: FakeClock, heard: Heard
) -> None:
    """A Spool with no service (an admin tool's) still fires its operators' events."""
    unsubscribe = spool.subscribe(heard)
    # Queued by admit, so that there is a message to act on without any service.
    first = spool.admit(b"S: 1\r\n\r\n1\r\n", sender="", recipients=["a@x.test"], origin="t")
    second = spool.admit(b"S: 2\r\n\r\n2\r\n", sender="", recipients=["b@x.test"], origin="t")
    heard.events.clear()
    spool.hold([first])
    spool.release([first])
    spool.flush([second])
    spool.delete([second])
    assert [(type(e), e.queue_id) for e in heard.events] == [
        (Held, first),
        (Released, first),
        (Flushed, second),
        (Deleted, second),
    ]
    deleted = heard.events[-1]
    assert isinstance(deleted, Deleted)
    assert deleted.place is State.QUEUED
    unsubscribe()
    unsubscribe()  # twice is harmless
    spool.hold([first])
    assert len(heard.events) == 4


def test_badmail_requeue_and_delete_are_told(spool: Spool, clock: FakeClock, heard: Heard) -> None:
    transport = CapturingTransport({"no@remote.test": NO})
    service = make_service(spool, transport, clock, observers=[heard])
    try:
        # From <>: the failure cannot be returned and goes to BadMail.
        first = submit(spool, "no@remote.test", sender="<>")
        second = submit(spool, "no@remote.test", sender="<>")
        service.run_once()
    finally:
        service.close()
    heard.events.clear()
    spool.subscribe(heard)  # the service unsubscribed its observers at close
    new_id = spool.requeue_badmail(first)
    [requeued, queued] = heard.events
    assert isinstance(requeued, Requeued)
    assert (requeued.queue_id, requeued.new_id, requeued.to) == (first, new_id, State.QUEUED)
    assert requeued.recipients == ("no@remote.test",)
    assert isinstance(queued, Queued)
    assert (queued.queue_id, queued.source, queued.origin) == (
        new_id,
        Source.REQUEUE,
        f"requeue:{first}",
    )
    heard.events.clear()
    assert spool.delete_badmail([second]) == [second]
    assert [(type(e), e.queue_id) for e in heard.events] == [(Deleted, second)]
    deleted = heard.events[0]
    assert isinstance(deleted, Deleted)
    assert deleted.place is State.BADMAIL


def test_a_failing_observer_is_logged_and_stops_nothing(
    spool: Spool, clock: FakeClock, heard: Heard, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(event: MailEvent) -> None:
        calls.append(event)
        raise RuntimeError("observer bug")

    service = make_service(spool, CapturingTransport(), clock, observers=[broken, heard])
    try:
        with caplog.at_level(logging.ERROR, logger="spoolmail"):
            queue_id = submit(spool, "bob@example.com", "ok@remote.test")
            report = service.run_once()
    finally:
        service.close()
    assert report.errors == ()
    assert report.finished == (queue_id,)
    assert len(calls) == len(heard.events) > 0  # the next observer heard every event
    failures = [r for r in caplog.records if "event observer" in r.getMessage()]
    assert len(failures) == len(calls)
    assert failures[0].exc_info is not None  # with the traceback
    assert "observer bug" in caplog.text


def test_an_observer_must_be_callable(spool: Spool, clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match="callable"):
        make_service(spool, CapturingTransport(), clock, observers=["not callable"])
    # Nothing was left subscribed or attached by the service that failed to start.
    make_service(spool, CapturingTransport(), clock).close()


def test_observers_hear_nothing_after_close(spool: Spool, clock: FakeClock, heard: Heard) -> None:
    service = make_service(spool, CapturingTransport(), clock, observers=[heard])
    service.close()
    spool.admit(b"S: 1\r\n\r\n1\r\n", sender="", recipients=["a@x.test"], origin="t")
    assert heard.events == []


def test_events_come_from_several_delivery_threads_and_none_is_lost(
    spool: Spool, clock: FakeClock
) -> None:
    lock = threading.Lock()
    threads: set[str] = set()
    delivered: list[str] = []

    def observe(event: MailEvent) -> None:
        if isinstance(event, Delivered):
            with lock:
                delivered.append(event.queue_id)
                threads.add(threading.current_thread().name)

    service = make_service(spool, CapturingTransport(), clock, observers=[observe])
    try:
        ids = {submit(spool, f"r{n}@remote.test") for n in range(40)}
        service.run_once()
    finally:
        service.close()
    assert sorted(delivered) == sorted(ids)
    assert all(name.startswith("spoolmail") for name in threads)  # the delivery threads


# -- the log records ------------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "spoolmail.mail"]


def test_one_record_per_outcome_per_recipient_with_its_values(
    spool: Spool, service: MailService, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        queue_id = submit(spool, "ok@remote.test", "later@remote.test", "no@remote.test")
        service.run_once()
    mine = [r for r in records(caplog) if r.queue_id == queue_id]  # type: ignore[attr-defined]
    by_recipient = {r.recipient: r for r in mine if r.recipient}  # type: ignore[attr-defined]
    sent = by_recipient["ok@remote.test"]
    assert sent.getMessage() == (
        f"{queue_id}: to=<ok@remote.test>, relay=relay.test[192.0.2.25]:2525, delay=1.2, "
        "dsn=2.0.0, status=sent (250 2.0.0 queued as 4XyZ)"
    )
    assert sent.levelno == logging.INFO
    values = (sent.status, sent.dsn, sent.relay, sent.reply, sent.delay)  # type: ignore[attr-defined]
    assert values == (
        "sent",
        "2.0.0",
        "relay.test[192.0.2.25]:2525",
        "250 2.0.0 queued as 4XyZ",
        1.25,
    )
    deferred = by_recipient["later@remote.test"]
    assert deferred.status == "deferred"  # type: ignore[attr-defined]
    assert deferred.next_attempt > clock()  # type: ignore[attr-defined]
    assert "status=deferred (451 4.3.0 mailbox busy), next=" in deferred.getMessage()
    bounced = by_recipient["no@remote.test"]
    assert bounced.levelno == logging.WARNING
    assert bounced.status == "bounced"  # type: ignore[attr-defined]
    assert "status=bounced (550 5.1.1 no such user)" in bounced.getMessage()
    queued = next(r for r in mine if r.event == "queued")  # type: ignore[attr-defined]
    assert f"{queue_id}: from=<alice@example.com>, size=" in queued.getMessage()
    assert queued.getMessage().endswith(f"nrcpt=3, origin=pickup:{queue_id}.eml (queue active)")
    assert [r.event for r in mine].count("dsn-queued") == 1  # type: ignore[attr-defined]
    # Every record has every attribute, so that a format string never misses one.
    for record in records(caplog):
        for name in ("queue_id", "recipient", "relay", "reply", "status", "dsn", "delay"):
            assert hasattr(record, name), (record.getMessage(), name)


def test_a_hostile_reply_is_cut_and_escaped(
    spool: Spool, clock: FakeClock, heard: Heard, caplog: pytest.LogCaptureFixture
) -> None:
    text = "gone\r\nFAKE: to=<x>, status=sent\x1b[2J" + "A" * 5000
    transport = CapturingTransport({"evil@remote.test": Reply(550, "5.1.1", text, host="::1")})
    service = make_service(spool, transport, clock, observers=[heard])
    try:
        with caplog.at_level(logging.INFO, logger="spoolmail"):
            submit(spool, "evil@remote.test")
            service.run_once()
    finally:
        service.close()
    [failed] = heard.of(Failed)
    assert len(failed.reply.text) == 1000
    assert failed.reply.text.endswith("…")
    [record] = [r for r in records(caplog) if r.status == "bounced"]  # type: ignore[attr-defined]
    line = record.getMessage()
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "gone\\x0d\\x0aFAKE" in line
    # The mail log keeps it as data: one JSON line, decoded back whole.
    encoded = encode_event(failed)
    assert "\n" not in encoded
    assert decode_event(encoded) == failed


# -- stats --------------------------------------------------------------------------------------


def test_stats_count_since_start_and_measure_the_spool_now(
    spool: Spool, service: MailService, clock: FakeClock
) -> None:
    start = service.stats()
    assert isinstance(start, Stats)
    assert (start.started, start.delivered, start.queue, start.pickup) == (clock(), 0, 0, 0)
    submit(spool, "bob@example.com", "ok@remote.test", "later@remote.test", "no@remote.test")
    waiting = submit(spool, "later@remote.test")
    held = submit(spool, "later@remote.test")
    assert service.stats().pickup == 3
    service.run_once()
    spool.hold([held])
    service.run_once()  # reads the operator's trigger
    stats = service.stats()
    assert stats.picked_up == 3
    assert stats.queued == 4  # three messages and one DSN
    assert stats.delivered == 3  # bob, ok, and the DSN to alice
    assert stats.deferred == 3  # later@ of each message
    assert stats.failed == 1
    assert stats.dsns == 1
    assert stats.removed == 1  # the DSN
    assert stats.badmail == 0
    assert (stats.queue, stats.held, stats.delivering, stats.pickup) == (2, 1, 0, 0)
    assert stats.connections == {}  # none in use between ticks
    assert waiting in {m.id for m in spool.queued()}
    assert stats == service.stats()


def test_stats_see_a_message_being_delivered_and_its_connection(
    spool: Spool, clock: FakeClock
) -> None:
    inside = threading.Event()
    proceed = threading.Event()
    seen: list[Stats] = []

    def slow(address: str) -> Reply:
        inside.set()
        assert proceed.wait(10)
        return OK

    service = make_service(spool, CapturingTransport(slow), clock)
    try:
        submit(spool, "slow@remote.test")
        runner = threading.Thread(target=service.run_once)
        runner.start()
        assert inside.wait(10)
        seen.append(service.stats())  # from another thread, mid-delivery
        proceed.set()
        runner.join(10)
        seen.append(service.stats())
    finally:
        proceed.set()
        service.close()
    during, after = seen
    assert (during.delivering, during.queue) == (1, 0)
    assert during.connections == {"relay.test[192.0.2.25]:2525": 1}
    assert (after.delivering, after.delivered, after.connections) == (0, 1, {})


# -- a real server ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_real_server_s_reply_and_address_are_in_the_event(
    tmp_path: Path, clock: FakeClock
) -> None:
    with (
        smtp_server(data_reply="250 2.0.0 Ok: queued as 7F3A2B") as server,
        Spool(tmp_path / "MailRoot", clock=clock) as spool,
    ):
        heard = Heard(spool)
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smart_host=str(server.target)),
            transport=SmtpTransport(helo_name="mail.example.com", timeouts=SmtpTimeouts(connect=5)),
            clock=clock,
            fqdn="mail.example.com",
            observers=[heard],
        )
        try:
            queue_id = submit(spool, "bob@remote.test")
            service.run_once()
        finally:
            service.close()
        assert len(server.handler.messages) == 1
        [delivered] = heard.of(Delivered)
        assert delivered.queue_id == queue_id
        assert str(delivered.reply) == "250 2.0.0 Ok: queued as 7F3A2B"
        assert delivered.reply.host == "127.0.0.1"
        assert delivered.relay == f"[127.0.0.1]:{server.port}"  # an address literal smart host
        line = describe(delivered)
        assert f"relay=[127.0.0.1]:{server.port}, " in line
        assert line.endswith("status=sent (250 2.0.0 Ok: queued as 7F3A2B)")
        # The mail log kept it, in Log/ on the disk, after the message finished.
        [log_file] = (tmp_path / "MailRoot" / "Log").iterdir()
        assert log_file.name == "spoolmail-2026-11-28.jsonl"
        lines = [decode_event(line) for line in log_file.read_text().splitlines()]
        assert delivered in lines
        assert Removed(queue_id=queue_id, time=clock()) in lines


def test_a_record_is_a_whole_record_from_log_event_and_the_level_and_filters_hold(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    event = Delivered(queue_id="q1", time=clock(), recipient="ok@remote.test", reply=OK)
    mail = logging.getLogger("spoolmail.mail")
    with caplog.at_level(logging.INFO, logger="spoolmail"):
        log_event(event)
    [record] = records(caplog)
    assert (record.funcName, record.filename, record.module) == (
        "log_event",
        "observers.py",
        "observers",
    )
    assert record.pathname == observers.__file__
    assert record.lineno > 0
    assert (record.levelname, record.msg, record.args) == ("INFO", "%s", (describe(event),))
    assert record.recipient == "ok@remote.test"  # type: ignore[attr-defined]
    assert record.threadName == threading.current_thread().name
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spoolmail"):
        log_event(event)
    assert records(caplog) == []
    dropped: list[logging.LogRecord] = []

    def drop(record: logging.LogRecord) -> bool:
        dropped.append(record)
        return False

    mail.addFilter(drop)
    try:
        with caplog.at_level(logging.INFO, logger="spoolmail"):
            log_event(event)
    finally:
        mail.removeFilter(drop)
    assert records(caplog) == []
    assert [r.getMessage() for r in dropped] == [describe(event)]


def test_the_mail_path_leaves_nothing_for_the_cyclic_collector(
    spool: Spool, service: MailService, caplog: pytest.LogCaptureFixture
) -> None:
    """What a message's intake, delivery and outcomes make is freed once done with. Each mail
    log record once left a reference cycle (a frame kept in a local of its own) holding the
    record and the whole stack's frames, about 96 objects a message, for the cyclic collector,
    which then ran three times as often in a drain and went through the older generations
    too: 9% of its CPU."""
    submit(spool, "ok@remote.test")
    service.run_once()  # what is made once (caches, the delivery threads) is made now
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with caplog.at_level(logging.INFO, logger="spoolmail"):
            for recipients in (["ok@remote.test"], ["later@remote.test"], ["no@remote.test"]):
                submit(spool, *recipients)
            report = service.run_once()
        found = gc.collect()
        kinds = sorted({type(thing).__name__ for thing in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # The DSN for no@ goes to Drop (alice is local): delivered too.
    assert (len(report.delivered), len(report.deferred), len(report.failed)) == (2, 1, 1)
    assert len(records(caplog)) >= 9  # logged, at INFO and above
    assert found == 0, kinds


def test_a_pickup_batch_ends_at_its_size_in_octets_too(spool: Spool, service: MailService) -> None:
    """Big files come in smaller batches: 8 of 1 MiB held each worker's first delivery back by
    the intake of 8 MiB. The first batch ends at 8 files or 1 MiB, the next at 32 or 4 MiB."""
    batches: list[int] = []
    pickup = service._pickup

    def counting(names: list[str], tally: Any) -> None:
        batches.append(len(names))
        pickup(names, tally)

    service._pickup = counting  # type: ignore[method-assign]
    for _ in range(12):
        body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 7_500
        spool.submit(body, sender="a@example.com", recipients=["ok@remote.test"])
    assert service.run_once().picked_up  # about 600 KB each: 2, then 7 (4.2 MB), then the rest
    assert batches == [2, 7, 3]
    batches.clear()
    for _ in range(45):
        submit(spool, "ok@remote.test")
    service.run_once()
    assert batches == [8, 32, 5]  # small files: by count, as before


def test_intake_tells_a_batch_at_once_in_the_same_order(
    spool: Spool, service: MailService, heard: Heard
) -> None:
    service._intake.emit_all = spool._bus.emit_all
    ids = [submit(spool, "ok@remote.test") for _ in range(3)]
    service.run_once()
    told = [(type(e), e.queue_id) for e in heard.events if isinstance(e, PickedUp | Queued)]
    order = sorted(ids)  # files are taken in by name, which is the queue id here
    assert [queue_id for _, queue_id in told] == [q for q in order for _ in (1, 2)]
    assert [kind for kind, _ in told] == [PickedUp, Queued] * 3
    assert ("queued", order[0], True) in heard.seen
