"""IIS Queue files left by a copy (``NTFS_*.EML``, envelope lost) and IIS BadMail entries.

The envelope IIS kept in an NTFS alternate stream does not survive a copy; spoolmail finds such
files, says so, and re-injects them through Pickup with an envelope read from the headers. Both
filesystems throughout.
"""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._core.envelope import Envelope, Recipient
from spoolmail._core.states import Event, State
from spoolmail._service import iis
from spoolmail._store.transitions import Change
from spoolmail.exceptions import MessageError, NotFound, StorageError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

IIS_FILE = "NTFS_6f7f0ab401c8a4b900000001.EML"

# As IIS queued a message that came in over SMTP: its Received: line on top, no envelope lines.
QUEUED_BY_IIS = (
    b"Received: from app01 ([192.0.2.7]) by WIN-SMTP with Microsoft SMTPSVC(10.0.17763.1);\r\n"
    b"\t Mon, 3 Mar 2025 09:12:44 +0100\r\n"
    b"Sender: robot@example.com\r\n"
    b"From: Reports <reports@example.com>\r\n"
    b"To: Bob <bob@example.com>, dan@remote.test\r\n"
    b"Cc: carol@example.com\r\n"
    b"Subject: nightly\r\n"
    b"\r\n"
    b"..two dots stay two\r\n"
    b".one dot stays one\r\n"
)


def service(spool: Spool, clock: FakeClock, **settings: Any) -> MailService:
    return MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host="relay.test"),
        transport=CapturingTransport(),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        fqdn="mail.example.com",
        **settings,
    )


def import_one(spool: Spool, clock: FakeClock, name: str = IIS_FILE, **options: Any) -> Any:
    options.setdefault("default_domain", "example.com")
    options.setdefault("max_message_size", 2 * 1024 * 1024)
    return iis.import_queue_file(spool._store, name, clock=clock, **options)


def test_only_iis_queue_files_are_stranded(spool: Spool, clock: FakeClock) -> None:
    ours = Envelope(
        id="19ac9b2f1c0-000000000001",
        sender="a@example.com",
        recipients=(Recipient("b@example.com"),),
        arrival=clock(),
        next_attempt=clock(),
    )
    spool._transitions.apply(
        State.NEW,
        Event.ACCEPTED,
        Change(id=ours.id, message=b"Subject: x\r\n\r\nx\r\n", envelope=ours),
    )
    for name in (IIS_FILE, "ntfs_00ff.eml", "NTFS_1.EML.tmp", "README.txt", "NTFS_.EML"):
        spool._store.write("Queue", name, QUEUED_BY_IIS)
    assert iis.stranded_queue_files(spool._store) == [IIS_FILE, "ntfs_00ff.eml"]
    # They are not queued messages, and a rescan neither delivers nor BadMails them.
    running = service(spool, clock)
    assert [q.id for q in spool.queued()] == [ours.id]
    running.rescan()
    assert list(spool.badmail()) == []
    assert iis.stranded_queue_files(spool._store) == [IIS_FILE, "ntfs_00ff.eml"]


def test_each_is_logged_once_per_call(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    spool._store.write("Queue", IIS_FILE, QUEUED_BY_IIS)
    with caplog.at_level(logging.WARNING, logger="spoolmail"):
        assert iis.warn_stranded(spool._store) == [IIS_FILE]
    [record] = caplog.records
    assert f"Queue/{IIS_FILE} is an IIS queue file" in record.getMessage()
    assert "spoolmail queue import-iis" in record.getMessage()


def test_import_derives_the_envelope_and_the_service_delivers_it(
    spool: Spool, clock: FakeClock
) -> None:
    spool._store.write("Queue", IIS_FILE, QUEUED_BY_IIS)
    done = import_one(spool, clock)
    assert done == iis.Imported(
        IIS_FILE,
        IIS_FILE,
        "robot@example.com",  # Sender: before From: (KB Q201314)
        ("bob@example.com", "dan@remote.test", "carol@example.com"),
    )
    assert iis.stranded_queue_files(spool._store) == []
    assert spool.pickup() == [IIS_FILE]
    assert spool.fs.readbytes(f"Pickup/{IIS_FILE}").startswith(
        b"x-sender: <robot@example.com>\r\nx-receiver: <bob@example.com>\r\n"
    )
    running = service(spool, clock)
    report = running.run_once()
    [queue_id] = report.picked_up
    assert sorted(a for _, a in report.delivered) == [
        "bob@example.com",
        "carol@example.com",
        "dan@remote.test",
    ]
    assert b"\r\n..two dots stay two\r\n.one dot stays one\r\n" in spool.drop_message(queue_id)
    running.close()


def test_a_bcc_header_left_in_the_file_is_a_recipient_and_removed(
    spool: Spool, clock: FakeClock
) -> None:
    raw = QUEUED_BY_IIS.replace(b"Subject:", b"Bcc: eve@example.com\r\nSubject:")
    spool._store.write("Queue", IIS_FILE, raw)
    assert "eve@example.com" in import_one(spool, clock).recipients
    running = service(spool, clock)
    [queue_id] = running.run_once().picked_up
    assert b"Bcc:" not in spool.drop_message(queue_id)
    running.close()


def test_a_dot_stuffing_service_gets_the_dots_back(spool: Spool, clock: FakeClock) -> None:
    """A Queue file is the message itself; a service that un-stuffs Pickup files (IIS 5+'s
    DisablePickupDotStuff=0) must not eat its leading dots."""
    spool._store.write("Queue", IIS_FILE, QUEUED_BY_IIS)
    import_one(spool, clock, dot_stuffed=True)
    assert b"\r\n...two dots stay two\r\n..one dot" in spool.fs.readbytes(f"Pickup/{IIS_FILE}")
    running = service(spool, clock, pickup_dot_stuffed=True)
    [queue_id] = running.run_once().picked_up
    assert b"\r\n..two dots stay two\r\n.one dot stays one\r\n" in spool.drop_message(queue_id)
    running.close()


def test_a_file_without_an_envelope_to_derive_stays(spool: Spool, clock: FakeClock) -> None:
    spool._store.write("Queue", IIS_FILE, b"Subject: nobody\r\n\r\nbody\r\n")
    with pytest.raises(MessageError, match=f"Queue/{IIS_FILE}: .*no sender"):
        import_one(spool, clock)
    with pytest.raises(MessageError, match="over max_message_size"):
        import_one(spool, clock, max_message_size=10)
    assert iis.stranded_queue_files(spool._store) == [IIS_FILE]
    assert spool.pickup() == []
    with pytest.raises(NotFound, match="not an IIS queue file"):
        import_one(spool, clock, name="19ac9b2f1c0-000000000001.eml")
    with pytest.raises(NotFound, match="no IIS queue file"):
        import_one(spool, clock, name="NTFS_00.EML")


def test_a_file_of_gigabytes_is_refused_by_its_size_not_read(
    tmp_path: Path, clock: FakeClock
) -> None:
    # It was read whole before its size was looked at: a 4 GiB file, 4 GiB of memory.
    with Spool(str(tmp_path), clock=clock) as spool:
        with open(tmp_path / "Queue" / IIS_FILE, "wb") as huge:
            huge.write(QUEUED_BY_IIS)
            huge.truncate(4 << 30)  # sparse: no disk taken
        tracemalloc.start()
        try:
            with pytest.raises(MessageError, match=r"is 4294967296 bytes, over max_message_size"):
                import_one(spool, clock)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20
        assert iis.stranded_queue_files(spool._store) == [IIS_FILE]


def test_dry_run_moves_nothing(spool: Spool, clock: FakeClock) -> None:
    spool._store.write("Queue", IIS_FILE, QUEUED_BY_IIS)
    assert import_one(spool, clock, dry_run=True).sender == "robot@example.com"
    assert (iis.stranded_queue_files(spool._store), spool.pickup()) == ([IIS_FILE], [])


def test_the_queue_file_goes_only_after_the_pickup_file_is_written(
    spool: Spool, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool._store.write("Queue", IIS_FILE, QUEUED_BY_IIS)

    def full_disk(folder: str, name: str, data: Any, **options: Any) -> int:
        raise StorageError(f"cannot write {folder}/{name}: [Errno 28] No space left on device")

    monkeypatch.setattr(spool._store, "write", full_disk)
    with pytest.raises(StorageError):
        import_one(spool, clock)
    assert iis.stranded_queue_files(spool._store) == [IIS_FILE]
