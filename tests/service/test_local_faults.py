"""Local faults (issue 15 section 3): a disk that fails on this side is not a failed delivery.

A Drop file that cannot be written, or an envelope or message file that cannot be read or
written, is retried after 10 s, 20 s, 40 s ... at most 5 minutes, counted in ``local_faults``
and not in ``attempts``, and brings no DSN by itself (rule 9 of ``_core.states``). An outcome
that was decided before the commit failed is kept, so nothing delivered is delivered again. The
clock is a :class:`~spoolmail.testing.FakeClock`: no test waits.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tenacity import stop_after_attempt, wait_fixed

from spoolmail import MailService, Reply, RetryPolicy, Router, Spool
from spoolmail.exceptions import StorageError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

DISK_FULL = "[Errno 28] No space left on device"
LATER = Reply(451, "4.3.0", "mailbox busy", host="relay.test")


def make_service(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, **settings: Any
) -> MailService:
    return MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host="relay.test:2525"),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        transport=transport,
        clock=clock,
        fqdn="mail.example.com",
        **settings,
    )


def message(to: str) -> bytes:
    return (
        f"From: Alice <alice@example.net>\r\nTo: {to}\r\nSubject: test\r\n"
        "Message-ID: <m1@client.example.net>\r\n\r\nhello\r\n"
    ).encode()


class FailingWrites:
    """Makes ``store.write`` into ``folder`` fail the next ``times`` times, as a full disk would."""

    def __init__(self, spool: Spool, monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
        self.times = 0
        self.folder = folder
        self._write = spool._store.write
        monkeypatch.setattr(spool._store, "write", self)

    def __call__(self, folder: str, name: str, data: Any, **options: Any) -> int:
        if folder == self.folder and self.times > 0:
            self.times -= 1
            raise StorageError(f"cannot write {folder}/{name}: {DISK_FULL}")
        return self._write(folder, name, data, **options)


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = make_service(spool, transport, clock)  # IIS: local delivery retried hourly
    yield service
    service.close()


def test_a_drop_file_that_cannot_be_written_is_tried_again_in_seconds(
    spool: Spool, service: MailService, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = FailingWrites(spool, monkeypatch, "Drop")
    drop.times = 7
    spool.submit(message("bob@example.com"))
    [queue_id] = service.run_once().picked_up
    waits = []
    for _ in range(7):
        envelope = spool.queued_message(queue_id).envelope
        waits.append((envelope.next_attempt - clock()).total_seconds())
        # Not a delivery attempt: the schedule of IIS's local retries has not moved.
        assert (envelope.attempts, envelope.last_attempt) == (0, None)
        [bob] = envelope.recipients
        assert bob.reply is not None
        assert (
            bob.reply.text
            == f"cannot write the Drop file: cannot write Drop/{queue_id}.eml: {DISK_FULL}"
        )
        clock.advance(seconds=waits[-1] - 1)
        assert not service.run_once()  # not before its time
        clock.advance(seconds=1)
        report = service.run_once()
        assert report.dsns == ()
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    assert report.finished == (queue_id,)
    assert spool.drop_item(queue_id).recipients == ("bob@example.com",)
    # Its transcript went with it, though no attempt was counted.
    assert spool._store.listdir("Queue") == []


def test_local_faults_bring_no_dsn_by_themselves(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A policy that gives up after the second failed attempt: faults must not use it up.
    two_tries = RetryPolicy.from_tenacity(wait=wait_fixed(60), stop=stop_after_attempt(2))
    service = make_service(spool, transport, clock, local_retry=two_tries)
    drop = FailingWrites(spool, monkeypatch, "Drop")
    drop.times = 6
    spool.submit(message("bob@example.com"))
    [queue_id] = service.run_once().picked_up
    for _ in range(5):
        clock.advance(minutes=5)
        assert service.run_once().dsns == ()
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.attempts, envelope.local_faults) == (0, 6)
    assert transport.messages == []  # no DSN went to alice@example.net
    clock.advance(minutes=5)
    assert service.run_once().finished == (queue_id,)
    service.close()


def test_a_local_fault_beside_a_delivery_waits_seconds_not_the_local_hour(
    spool: Spool, service: MailService, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = FailingWrites(spool, monkeypatch, "Drop")
    drop.times = 1
    spool.submit(message("bob@example.com, carol@remote.test"))
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "carol@remote.test"),)
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.attempts, envelope.local_faults) == (1, 1)
    assert envelope.next_attempt == clock() + timedelta(seconds=10)
    clock.advance(seconds=10)
    assert service.run_once().finished == (queue_id,)


def test_a_failed_commit_keeps_the_outcome_nothing_is_sent_twice(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recycle = spool._store.recycle
    failures = iter([StorageError(f"cannot delete Queue/x.eml: {DISK_FULL}")])

    def failing_once(folder: str, name: str) -> bool:
        error = next(failures, None)
        if error is not None:
            raise error
        return recycle(folder, name)

    monkeypatch.setattr(spool._store, "recycle", failing_once)
    spool.submit(message("carol@remote.test"))
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "carol@remote.test"),)
    assert report.errors  # the finish failed: logged and counted, the message given back
    envelope = spool.queued_message(queue_id).envelope
    assert envelope.pending == ()  # what the server took is remembered
    assert envelope.local_faults == 1
    assert envelope.next_attempt == clock() + timedelta(seconds=10)
    clock.advance(seconds=10)
    assert service.run_once().finished == (queue_id,)
    assert len(transport.messages) == 1
    assert spool._store.listdir("Queue") == []


def test_a_message_that_cannot_be_read_is_a_local_fault(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store_open = spool._store.open
    failures = iter([StorageError("cannot open Queue/x.eml: [Errno 5] Input/output error")])

    def failing_once(folder: str, name: str, **options: Any) -> Any:
        error = next(failures, None) if name.endswith(".eml") and folder == "Queue" else None
        if error is not None:
            raise error
        return store_open(folder, name, **options)

    spool.submit(message("carol@remote.test"))
    monkeypatch.setattr(spool._store, "open", failing_once)  # the transport reads through it
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.errors
    envelope = spool.queued_message(queue_id).envelope
    assert (envelope.attempts, envelope.local_faults) == (0, 1)
    assert envelope.next_attempt == clock() + timedelta(seconds=10)
    clock.advance(seconds=10)
    assert service.run_once().finished == (queue_id,)
    assert len(transport.messages) == 1


def test_a_failed_claim_is_attempted_after_the_next_rescan(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rescan schedules again what an attempt that failed before its claim left unscheduled,
    even when the envelope on disk is unchanged (OSFS: the rescan compares inode and time)."""
    transport = CapturingTransport({"carol@remote.test": LATER})
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        service = make_service(spool, transport, clock, retry=RetryPolicy.iis())
        spool.submit(message("carol@remote.test"))
        [queue_id] = service.run_once().picked_up
        clock.advance(minutes=10)
        service.run_once()  # a rescan: the waiting envelope's signature is noted
        claim = spool._store.claim_queued
        failures = iter([StorageError(f"cannot rename Queue/{queue_id}.env: {DISK_FULL}")])

        def failing_once(queue_id: str) -> bool:
            error = next(failures, None)
            if error is not None:
                raise error
            return claim(queue_id)

        monkeypatch.setattr(spool._store, "claim_queued", failing_once)
        clock.advance(minutes=5)
        assert service.run_once().errors
        transport.answers = None
        clock.advance(minutes=6)
        assert service.run_once().finished == (queue_id,)
        service.close()
