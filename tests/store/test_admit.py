"""``Spool.admit``: the Queue's door for a message that arrives with its envelope (the listener).

It commits into the Queue through the same admission as Pickup intake, durable when it returns;
a service in this process schedules the message at once and is woken for it, one in another
process learns of it through a trigger. A fault leaves nothing queued and raises.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import spoolmail._store.spool as spool_module
import spoolmail._store.store as store_module
from spoolmail import (
    Durability,
    MailService,
    Notify,
    Recipient,
    Ret,
    Router,
    Spool,
)
from spoolmail._store.spool import Admission
from spoolmail.exceptions import MessageError, StorageError
from spoolmail.testing import FakeClock

MESSAGE = (
    b"Received: from client.test ([127.0.0.1]) by mail.example.com\r\n"
    b"From: app@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_admit_queues_the_message_with_its_envelope(clock: FakeClock) -> None:
    with Spool("mem://", clock=clock) as spool:
        queue_id = spool.admit(
            MESSAGE,
            sender="app@example.com",
            recipients=[
                "bob@example.com",
                Recipient("carol@example.com", notify=Notify.FAILURE, orcpt="rfc822;c@x.test"),
            ],
            origin="smtp:127.0.0.1",
            envid="abc123",
            ret=Ret.HDRS,
            eight_bit=False,
        )
        queued = spool.queued_message(queue_id)
        envelope = queued.envelope
        assert spool.message(queue_id) == MESSAGE
        assert (envelope.sender, envelope.origin, envelope.envid, envelope.ret) == (
            "app@example.com",
            "smtp:127.0.0.1",
            "abc123",
            Ret.HDRS,
        )
        assert [r.address for r in envelope.recipients] == ["bob@example.com", "carol@example.com"]
        assert envelope.recipients[1].notify == Notify.FAILURE
        assert envelope.recipients[1].orcpt == "rfc822;c@x.test"
        assert (envelope.size, envelope.hops, envelope.arrival) == (len(MESSAGE), 1, clock())


def test_admit_streams_chunks(clock: FakeClock) -> None:
    with Spool("mem://", clock=clock) as spool:
        chunks = [MESSAGE[:10], MESSAGE[10:]]
        queue_id = spool.admit(iter(chunks), sender="", recipients=["bob@example.com"], origin="x")
        assert spool.message(queue_id) == MESSAGE
        assert spool.queued_message(queue_id).envelope.size == len(MESSAGE)


@pytest.mark.parametrize(
    ("sender", "recipients", "fragment"),
    [
        ("app@example.com", [], "at least one recipient"),
        ("not an address", ["bob@example.com"], "not an address"),
        ("app@example.com", ["bob@"], "bob@"),
    ],
)
def test_admit_refuses_what_is_not_an_envelope(
    clock: FakeClock, sender: str, recipients: list[str], fragment: str
) -> None:
    with Spool("mem://", clock=clock) as spool:
        with pytest.raises(MessageError) as raised:
            spool.admit(MESSAGE, sender=sender, recipients=recipients, origin="smtp:x")
        assert fragment in str(raised.value)
        assert list(spool.queued()) == []


def test_a_full_disk_leaves_nothing_queued(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener answers 4xx on this error: nothing may be queued that it did not accept."""
    with Spool(tmp_path / "MailRoot", clock=clock, durability=Durability.FSYNC) as spool:
        real = os.fsync

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_module.os, "fsync", full)
        with pytest.raises(StorageError) as raised:
            spool.admit(MESSAGE, sender="", recipients=["bob@example.com"], origin="smtp:x")
        assert raised.value.temporary
        monkeypatch.setattr(store_module.os, "fsync", real)
        assert list(spool.queued()) == []
        assert sorted(p.name for p in (tmp_path / "MailRoot" / "Queue").iterdir()) == []


def test_a_service_in_this_process_is_woken_for_an_admitted_message(tmp_path: Path) -> None:
    """No poll interval to wait through: run_forever waits an hour, the message goes at once."""
    with Spool(tmp_path / "MailRoot") as spool:
        service = MailService(spool, router=Router(local_domains=["example.com"]))
        delivered = threading.Event()

        def seen(report: object) -> None:
            if getattr(report, "finished", ()):
                delivered.set()

        loop = threading.Thread(
            target=service.run_forever, kwargs={"poll_interval": 3600, "on_report": seen}
        )
        loop.start()
        try:
            queue_id = spool.admit(
                MESSAGE, sender="app@example.com", recipients=["bob@example.com"], origin="t"
            )
            assert delivered.wait(30), "the service was not woken for the admitted message"
            assert spool.drop_item(queue_id).recipients == ("bob@example.com",)
        finally:
            service.stop()
            loop.join(30)
            service.close()
        assert not loop.is_alive()


def test_without_a_service_here_a_trigger_tells_one_in_another_process(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "MailRoot"
    with Spool(root, clock=clock) as other:
        service = MailService(other, router=Router(local_domains=["example.com"]))
        service.run_once()  # its first tick rescans; later ticks read only triggers
        clock.advance(seconds=1)
        with Spool(root, clock=clock) as listener_side:
            queue_id = listener_side.admit(
                MESSAGE, sender="", recipients=["bob@example.com"], origin="t"
            )
        report = service.run_once()
        service.close()
        assert queue_id in report.finished
        assert other.drop_item(queue_id).recipients == ("bob@example.com",)


def test_admit_takes_an_id_given_in_advance_once(clock: FakeClock) -> None:
    """A listener names the id in its Received: field before the message is committed."""
    with Spool("mem://", clock=clock) as spool:
        queue_id = spool.new_id()
        assert (
            spool.admit(MESSAGE, sender="", recipients=["b@x.test"], origin="t", queue_id=queue_id)
            == queue_id
        )
        for bad in (queue_id, "../../etc/passwd", "NOTANID"):
            with pytest.raises(ValueError, match="not a fresh id"):
                spool.admit(MESSAGE, sender="", recipients=["b@x.test"], origin="t", queue_id=bad)
        assert [m.id for m in spool.queued()] == [queue_id]


def test_an_id_handed_out_is_admitted_without_a_look_and_only_once(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """new_id's own ids, unused, are fresh by construction: no look for a message of that name.
    Any other id (used once, or never handed out here) is looked for, as before."""
    with Spool("mem://", clock=clock) as spool:
        looked: list[str] = []
        has_message = spool._transitions.has_message

        def counted(queue_id: str) -> bool:
            looked.append(queue_id)
            return has_message(queue_id)

        monkeypatch.setattr(spool._transitions, "has_message", counted)
        given = spool.new_id()
        spool.admit(MESSAGE, sender="", recipients=["b@x.test"], origin="t", queue_id=given)
        assert looked == []
        with pytest.raises(ValueError, match="not a fresh id"):
            spool.admit(MESSAGE, sender="", recipients=["b@x.test"], origin="t", queue_id=given)
        assert looked == [given]
        with Spool("mem://", clock=clock) as other:
            elsewhere = other.new_id()
        spool.admit(MESSAGE, sender="", recipients=["b@x.test"], origin="t", queue_id=elsewhere)
        assert looked == [given, elsewhere]


def test_ids_handed_out_are_remembered_up_to_a_cap(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_ISSUED_CAP", 3)
    with Spool("mem://", clock=clock) as spool:
        made = [spool.new_id() for _ in range(5)]
        assert [spool._issued.take(queue_id) for queue_id in made] == [False] * 2 + [True] * 3
        assert not spool._issued.take(made[-1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_forgets_the_ids_its_parent_handed_out(clock: FakeClock) -> None:
    with Spool("mem://", clock=clock) as spool:
        queue_id = spool.new_id()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0 if not spool._issued.take(queue_id) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert spool._issued.take(queue_id)


# -- admit_group: several messages made durable with one sync (the listener's group commit) --------


def group_of(count: int, *, bad: int | None = None) -> list[Admission]:
    return [
        Admission(
            message=MESSAGE,
            sender="app@example.com",
            recipients=["bob@" if index == bad else f"user{index}@example.com"],
            origin=f"smtp:192.0.2.{index}",
        )
        for index in range(count)
    ]


@pytest.mark.parametrize("where", ["mem", "os"])
def test_admit_group_queues_each_and_refuses_only_the_bad_one(
    tmp_path: Path, clock: FakeClock, where: str
) -> None:
    with Spool("mem://" if where == "mem" else tmp_path / "MailRoot", clock=clock) as spool:
        results = spool.admit_group(group_of(4, bad=2))
        assert isinstance(results[2], MessageError)
        ids = [r for r in results if isinstance(r, str)]
        assert len(ids) == 3
        assert sorted(m.id for m in spool.queued()) == sorted(ids)
        for index, queue_id in zip((0, 1, 3), ids, strict=True):
            envelope = spool.queued_message(queue_id).envelope
            assert [r.address for r in envelope.recipients] == [f"user{index}@example.com"]
            assert envelope.origin == f"smtp:192.0.2.{index}"
            assert spool.message(queue_id) == MESSAGE


def test_a_group_is_synced_once_and_queued_only_after_the_sync(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "MailRoot"
    with Spool(root, clock=clock, durability=Durability.FSYNC) as spool:
        store = spool._store
        if store._syncfs is None:
            pytest.skip("no syncfs here: each file is fsync'd as it is written")
        seen: list[list[str]] = []
        real = store._sync_file_system

        def sync() -> None:
            seen.append(sorted(p.name for p in (root / "Queue").iterdir()))
            real()

        monkeypatch.setattr(store, "_sync_file_system", sync)
        ids = spool.admit_group(group_of(5))
        assert seen == [[]]  # one sync, and nothing in the Queue before it
        assert sorted(m.id for m in spool.queued()) == sorted(map(str, ids))


def test_a_failed_group_sync_leaves_nothing_queued(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sender of the group hears 4xx and tries again: nothing may stay to go twice."""
    root = tmp_path / "MailRoot"
    with Spool(root, clock=clock, durability=Durability.FSYNC) as spool:

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_module.os, "fsync", full)
        results = spool.admit_group(group_of(3))
        monkeypatch.undo()
        assert all(isinstance(r, StorageError) and r.temporary for r in results)
        assert list(spool.queued()) == []
        assert sorted(p.name for p in (root / "Queue").iterdir()) == []


def test_a_group_admitted_without_a_service_here_leaves_one_trigger(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "MailRoot"
    with Spool(root, clock=clock) as spool:
        spool.admit_group(group_of(4))
        assert len(list((root / "SortTemp").glob("*.trigger"))) == 1
