"""Operating the Queue and BadMail while a service runs: hold, release, flush, delete, requeue.

Also the service-side rules that go with them: separate local and remote retry schedules,
dead destinations, "Send copy of NDR to", and RFC 3461 NOTIFY. Both filesystems throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from spoolmail import MailService, RecipientState, Reply, RetryPolicy, Router, Spool
from spoolmail._core.envelope import Envelope, Notify, Recipient, encode_envelope
from spoolmail._core.states import Event, State
from spoolmail._store import pyfs
from spoolmail._store.transitions import Change
from spoolmail.exceptions import MessageError, NotFound, SpoolmailError, StorageError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

LATER = Reply(451, "4.3.0", "mailbox busy", host="relay.test")
NO = Reply(550, "5.1.1", "no such user", host="relay.test")
REFUSED = Reply(451, "4.4.1", "connection to relay.test:25 failed: refused", host="relay.test")


def make_service(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, **settings: Any
) -> MailService:
    settings.setdefault("router", Router(local_domains=["example.com"], smart_host="relay.test"))
    settings.setdefault("host_resolver", StaticResolver(fallback="127.0.0.1"))
    return MailService(spool, transport=transport, clock=clock, fqdn="mail.example.com", **settings)


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = make_service(spool, transport, clock)
    yield service
    service.close()


def message(to: str, sender: str = "alice@example.com") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()


def queue_one(spool: Spool, service: MailService, transport: CapturingTransport, to: str) -> str:
    """A message that waits in the Queue after one failed attempt."""
    transport.answers = {to: LATER}
    spool.submit(message(to))
    [queue_id] = service.run_once().picked_up
    return queue_id


# -- hold and release -----------------------------------------------------------------------------


def test_held_message_is_never_attempted_and_never_expires(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    assert spool.hold([queue_id]) == [queue_id]
    assert spool.queued_message(queue_id).envelope.held
    for _ in range(10):
        clock.advance(hours=6)
        report = service.run_once()
        assert report.deferred == report.failed == report.dsns == ()
    assert len(transport.attempts) == 1
    assert spool.release([queue_id]) == [queue_id]
    report = service.run_once()  # the release is seen at once, not at the next rescan
    assert report.deferred == ((queue_id, "dan@remote.test"),)
    envelope = spool.queued_message(queue_id).envelope
    assert envelope.held_time == timedelta(hours=60)
    assert envelope.retry_base == envelope.arrival + timedelta(hours=60)
    assert envelope.next_attempt == clock() + timedelta(minutes=30)  # the IIS schedule goes on


def test_hold_of_a_busy_or_missing_message_is_explained(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    filesystem: pyfs.FS,
    clock: FakeClock,
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    other = Spool(filesystem, clock=clock)
    assert other._store.claim_queued(queue_id)  # another live process is delivering it
    with pytest.raises(SpoolmailError, match="being delivered right now") as info:
        spool.hold([queue_id])
    assert info.value.temporary
    with pytest.raises(NotFound, match="no queued message"):
        spool.hold(["19ac9b2f1c0-000000000000"])
    with pytest.raises(NotFound, match="not a queue id"):
        spool.hold(["../../etc/passwd"])


def test_an_operation_on_many_goes_past_the_ones_it_cannot_do(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    dan = queue_one(spool, service, transport, "dan@remote.test")
    eve = queue_one(spool, service, transport, "eve@other.test")
    with pytest.raises(NotFound, match="no queued message") as info:
        spool.hold([dan, "19ac9b2f1c0-000000000000", eve, "19ac9b2f1c0-000000000001"])
    assert info.value.__notes__ == ["also: no queued message '19ac9b2f1c0-000000000001'"]
    assert all(spool.queued_message(q).envelope.held for q in (dan, eve))


# -- flush and delete -----------------------------------------------------------------------------


def test_flush_one_by_id_is_attempted_at_the_next_tick(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    first = queue_one(spool, service, transport, "dan@remote.test")
    second = queue_one(spool, service, transport, "eve@other.test")
    transport.answers = {}
    assert spool.flush([first]) == [first]
    report = service.run_once()
    assert report.delivered == ((first, "dan@remote.test"),)
    assert [q.id for q in spool.queued()] == [second]


def test_flush_by_domain_and_all(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    dan = queue_one(spool, service, transport, "dan@remote.test")
    eve = queue_one(spool, service, transport, "eve@other.test")
    assert spool.flush(domain="REMOTE.test.") == [dan]
    assert sorted(spool.flush()) == sorted([dan, eve])
    transport.answers = {}
    assert {q for q, _ in service.run_once().delivered} == {dan, eve}


def test_flush_keeps_a_hold(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    spool.hold([queue_id])
    spool.flush([queue_id])
    assert service.run_once().deferred == ()
    assert spool.queued_message(queue_id).envelope.held


def test_flush_queue_rewrites_nothing_and_the_attempt_commits_it(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    dan = queue_one(spool, service, transport, "dan@remote.test")
    eve = queue_one(spool, service, transport, "eve@other.test")
    held = queue_one(spool, service, transport, "fay@remote.test")
    spool.hold([held])
    before = {q: spool.queued_message(q).envelope for q in (dan, eve, held)}
    spool.flush_queue(domain="REMOTE.test.")
    assert {q: spool.queued_message(q).envelope for q in (dan, eve, held)} == before
    transport.answers = {"dan@remote.test": LATER}
    report = service.run_once()
    assert report.deferred == ((dan, "dan@remote.test"),)  # eve not flushed, fay held
    after = spool.queued_message(dan).envelope
    assert after.attempts == before[dan].attempts + 1
    assert after.next_attempt > clock()
    assert spool.queued_message(held).envelope.held
    assert service.run_once().deferred == ()  # the flush was spent by that attempt
    spool.flush_queue()
    transport.answers = {}
    assert {q for q, _ in service.run_once().delivered} == {dan, eve}
    assert [q.id for q in spool.queued()] == [held]


def test_flush_queue_waits_for_a_service_and_is_passed_on_at_close(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    first = make_service(spool, transport, clock)
    dan = queue_one(spool, first, transport, "dan@remote.test")
    first.close()
    spool.flush_queue(sender="ALICE@example.com")  # no service: the trigger waits
    second = make_service(spool, transport, clock)
    try:
        second.rescan()  # as at start-up: the flush is taken, made due, not yet tried
        assert second._schedule.flushed() == {dan}
    finally:
        second.close()  # stopped before the attempt: the next service flushes it
    third = make_service(spool, transport, clock)
    try:
        transport.answers = {}
        assert third.run_once().delivered == ((dan, "dan@remote.test"),)
    finally:
        third.close()


def test_a_flush_trigger_whose_filter_matches_nothing_is_logged_and_ignored(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trigger not written by ``Spool.flush_queue`` (which checks its filters) may hold a
    sender that is no address: the service says so, flushes nothing by it, and goes on."""
    dan = queue_one(spool, service, transport, "dan@remote.test")
    before = spool.queued_message(dan).envelope
    spool._store.write_flush_trigger(sender="not an address")
    spool._store.write_flush_trigger(domain="remote.test")
    transport.answers = {"dan@remote.test": LATER}
    with caplog.at_level("WARNING", logger="spoolmail"):
        report = service.run_once()
    assert report.deferred == ((dan, "dan@remote.test"),)  # the good order was carried out
    assert spool.queued_message(dan).envelope.attempts == before.attempts + 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "flush order ignored, its filter matches no message: "
        "'not an address' is not an address: it contains white space "
        "(missing '<...>' around the address?)"
    ]


def test_delete_sends_no_dsn(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    assert spool.delete([queue_id]) == [queue_id]
    assert list(spool.queued()) == []
    assert spool._store.queue_files() == {}
    assert service.run_once() == type(service.run_once())()


# -- BadMail --------------------------------------------------------------------------------------


def test_requeue_a_failed_dsn_from_badmail(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"no@remote.test": NO, "alice@remote.test": NO}
    spool.submit(message("no@remote.test", sender="alice@remote.test"))
    report = service.run_once()
    [dsn_id] = report.badmail
    item = spool.badmail_item(dsn_id)
    assert "It was the failed notice for" in item.report  # both reasons are in BadMail
    assert "<no@remote.test>: 550 5.1.1 no such user" in item.report
    transport.answers = {}
    # alice's 5.1.1 put her on the suppression list: the operator takes her off to send again.
    assert service.suppression is not None
    assert service.suppression.remove("alice@remote.test")
    new_id = spool.requeue_badmail(dsn_id)
    assert new_id != dsn_id
    assert list(spool.badmail()) == []
    queued = spool.queued_message(new_id).envelope
    assert (queued.sender, [r.address for r in queued.recipients]) == ("", ["alice@remote.test"])
    assert queued.origin == f"requeue:{dsn_id}"
    report = service.run_once()
    assert report.delivered == ((new_id, "alice@remote.test"),)
    assert transport.messages[-1].data.startswith(b"From: postmaster@mail.example.com")


def test_requeue_a_rejected_pickup_file_puts_it_back_into_pickup(
    spool: Spool, service: MailService
) -> None:
    raw = b"Subject: nobody\r\n\r\nbody\r\n"
    spool._store.write("Pickup", "bad.eml", raw)
    [bad] = service.run_once().badmail
    name = spool.requeue_badmail(bad)
    assert spool.pickup() == [name]
    assert spool.fs.readbytes(f"Pickup/{name}") == raw
    assert list(spool.badmail()) == []


def test_requeue_without_envelope_needs_recipients_and_sender(
    spool: Spool, service: MailService, clock: FakeClock
) -> None:
    spool._store.write("BadMail", "19ac9b2f1c0-000000000001.BAD", message("x@example.com"))
    spool._store.write("BadMail", "19ac9b2f1c0-000000000001.BDR", b"4.3.0 envelope lost\n")
    with pytest.raises(MessageError, match="give the recipients and the sender"):
        spool.requeue_badmail("19ac9b2f1c0-000000000001")
    new_id = spool.requeue_badmail(
        "19ac9b2f1c0-000000000001",
        recipients=["bob@example.com"],
        sender="Alice <alice@example.com>",
    )
    report = service.run_once()
    assert report.delivered == ((new_id, "bob@example.com"),)
    assert spool.drop_item(new_id).sender == "alice@example.com"


def test_requeue_selected_recipients(spool: Spool, service: MailService, clock: FakeClock) -> None:
    failed = Envelope(
        id="19ac9b2f1c0-000000000002",
        sender="",
        recipients=(
            Recipient("a@example.com", RecipientState.FAILED, NO),
            Recipient("b@example.com", RecipientState.FAILED, NO),
        ),
        arrival=clock(),
        next_attempt=clock(),
        attempts=3,
    )
    spool._store.write("BadMail", f"{failed.id}.BAD", message("a@example.com"))
    spool._store.write("BadMail", f"{failed.id}.BDR", b"5.1.1 failed\n")
    spool._store.write("BadMail", f"{failed.id}.BDP", encode_envelope(failed))
    with pytest.raises(MessageError, match=r"has no recipient 'c@example\.com'"):
        spool.requeue_badmail(failed.id, recipients=["c@example.com"])
    new_id = spool.requeue_badmail(failed.id, recipients=["B@EXAMPLE.com"])
    assert [a for _, a in service.run_once().delivered] == ["b@example.com"]
    assert spool.drop_item(new_id).recipients == ("b@example.com",)
    # The recipient not sent again stays in BadMail, and the report says where the other went.
    left = spool.badmail_item(failed.id)
    assert left.envelope is not None
    assert [r.address for r in left.envelope.recipients] == ["a@example.com"]
    assert f"Requeued as {new_id} for: b@example.com" in left.report
    again = spool.requeue_badmail(failed.id)
    assert list(spool.badmail()) == []
    assert [r.address for r in spool.queued_message(again).envelope.recipients] == ["a@example.com"]


def test_delete_badmail(spool: Spool, service: MailService) -> None:
    spool._store.write("Pickup", "bad.eml", b"junk\r\n")
    [bad] = service.run_once().badmail
    assert spool.delete_badmail([bad, bad]) == [bad]
    assert spool.delete_badmail([bad]) == []
    assert spool._store.listdir("BadMail") == []


# -- schedules, dead destinations, NDR copies, NOTIFY ----------------------------------------


def test_local_and_remote_recipients_follow_their_own_schedules(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service(spool, transport, clock)  # IIS: remote 15/30/60/240, local hourly
    assert service.local_retry.name == "iis-local"
    write = spool._store.write

    def full_disk(folder: str, name: str, data: Any, **options: Any) -> int:
        if folder == "Drop":
            raise StorageError(f"cannot write Drop/{name}: [Errno 28] No space left on device")
        return write(folder, name, data, **options)

    monkeypatch.setattr(spool._store, "write", full_disk)
    transport.answers = {"dan@remote.test": LATER}
    spool.submit(message("bob@example.com, dan@remote.test"))
    [queue_id] = service.run_once().picked_up
    envelope = spool.queued_message(queue_id).envelope
    # The remote recipient waits 15 minutes; the local one met a local fault (the disk), which
    # is tried again after 10 s, not at the local schedule's hour (rule 9 of _core.states).
    assert envelope.next_attempt == clock() + timedelta(seconds=10)
    assert (envelope.attempts, envelope.local_faults) == (1, 1)
    local = next(r for r in envelope.recipients if r.address == "bob@example.com")
    assert local.reply is not None
    assert local.reply.text.startswith("cannot write the Drop file")
    assert "cannot write the Drop file" in spool.transcript(queue_id)


def test_one_retry_policy_for_both_when_only_retry_is_given(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    policy = RetryPolicy.postfix()
    service = make_service(spool, transport, clock, retry=policy)
    assert service.local_retry is policy


def test_dead_destination_defers_others_without_a_connection(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    transport.answers = lambda address: REFUSED
    spool.submit(message("a@remote.test"))
    spool.submit(message("b@remote.test"))
    report = service.run_once()
    assert len(report.deferred) == 2
    assert len(transport.attempts) == 1  # the second message did not knock again
    # Whichever of the two got the host first found it silent; the other was told so.
    transcripts = [spool.transcript(queue_id) for queue_id, _ in report.deferred]
    skipped = [t for t in transcripts if "did not answer the last attempt" in t]
    assert len(skipped) == 1
    assert "not tried again before 2026-11-28T10:15:00+00:00" in skipped[0]
    clock.advance(minutes=15)
    transport.answers = {}
    report = service.run_once()
    assert len(report.delivered) == 2
    assert len(transport.attempts) == 3  # each message tried again once the host may be back


def test_a_recipient_refusal_does_not_kill_the_destination(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"a@remote.test": LATER}
    spool.submit(message("a@remote.test"))
    spool.submit(message("b@remote.test"))
    service.run_once()
    assert len(transport.attempts) == 2


def test_ndr_copy_goes_to_the_postmaster_too(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    service = make_service(spool, transport, clock, ndr_copy_to="postmaster@example.com")
    transport.answers = {"no@remote.test": NO}
    spool.submit(message("no@remote.test", sender="alice@example.com"))
    report = service.run_once()
    [dsn_id] = report.dsns
    drop = spool.drop_item(dsn_id)
    assert drop.recipients == ("alice@example.com", "postmaster@example.com")


def test_notify_never_means_no_dsn(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    envelope = Envelope(
        id="19ac9b2f1c0-000000000003",
        sender="alice@example.com",
        recipients=(Recipient("no@remote.test", notify=Notify.NEVER),),
        arrival=clock(),
        next_attempt=clock(),
        envid="QQ314159",
    )
    spool._transitions.apply(
        State.NEW,
        Event.ACCEPTED,
        Change(id=envelope.id, message=message("no@remote.test"), envelope=envelope),
    )
    transport.answers = {"no@remote.test": NO}
    report = service.run_once()
    assert report.failed == ((envelope.id, "no@remote.test"),)
    assert report.dsns == ()
    assert list(spool.drop()) == []


def test_notify_success_brings_a_success_notice(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    envelope = Envelope(
        id="19ac9b2f1c0-000000000004",
        sender="alice@example.com",
        recipients=(
            Recipient("bob@example.com", notify=Notify.SUCCESS, orcpt="rfc822;bob+2Bx@example.com"),
            Recipient("dan@remote.test", notify=Notify.SUCCESS | Notify.FAILURE),
        ),
        arrival=clock(),
        next_attempt=clock(),
        envid="QQ314159",
    )
    spool._transitions.apply(
        State.NEW,
        Event.ACCEPTED,
        Change(id=envelope.id, message=message("bob@example.com"), envelope=envelope),
    )
    report = service.run_once()
    assert report.finished[0] == envelope.id
    kinds = {}
    for dsn_id in report.dsns:
        data = spool.drop_message(dsn_id)
        assert spool.drop_item(dsn_id).recipients == ("alice@example.com",)
        kinds[dsn_id] = data
    delivered, relayed = (kinds[f"{envelope.id}-d{n}"] for n in (1, 2))
    assert b"Subject: Delivery Status Notification (Success)" in delivered
    assert b"Original-Recipient: rfc822; bob+x@example.com" in delivered
    assert b"Original-Envelope-Id: QQ314159" in delivered
    assert b"Subject: Delivery Status Notification (Relay)" in relayed
    assert b"Action: relayed" in relayed
    assert b"text/rfc822-headers" in relayed  # success notices return only the headers


def test_the_delay_notice_comes_at_its_time_without_an_attempt(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    start = clock()
    assert spool.queued_message(queue_id).envelope.notice_at == start + timedelta(hours=12)
    for minutes in (15, 45, 105, 345, 585):  # IIS's attempts before the 12th hour
        clock.set(start + timedelta(minutes=minutes))
        assert service.run_once().dsns == ()
    attempts = len(transport.attempts)
    clock.set(start + timedelta(hours=12))
    report = service.run_once()
    assert report.dsns == (f"{queue_id}-d1",)
    assert report.deferred == ()  # a wake-up for the notice, not an attempt
    assert len(transport.attempts) == attempts
    assert b"Action: delayed" in spool.drop_message(f"{queue_id}-d1")
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.delay_notified, envelope.notice_at) == (True, None)
    assert envelope.next_attempt == start + timedelta(minutes=825)


def test_time_on_hold_moves_the_delay_notice_too(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    queue_id = queue_one(spool, service, transport, "dan@remote.test")
    start = clock()
    spool.hold([queue_id])
    clock.advance(hours=5)
    spool.release([queue_id])
    service.run_once()  # the attempt at release
    clock.set(start + timedelta(hours=12))
    assert service.run_once().dsns == ()  # 12 h since arrival, but 5 of them on hold
    clock.set(start + timedelta(hours=17))
    assert service.run_once().dsns == (f"{queue_id}-d1",)
