"""Files another user could plant in the MailRoot's own folders (a link, a second hard link, a
FIFO) in place of spoolmail's files: never followed out of the MailRoot, never written through,
never waited on. On OSFS in a temp dir (links and FIFOs are the OS's)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spoolmail import Reply, Spool, SuppressionList
from spoolmail._store.maillog import MailLog, log_file_name
from spoolmail.events import Queued
from spoolmail.exceptions import StorageError
from spoolmail.testing import FakeClock
from tests.store.test_store import os_store

ID = "19ac9b2f1c0-00005e1f0c2a9b7d"
NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def finished_within(seconds: float, work: object) -> bool:
    """Run ``work`` in a daemon thread; whether it ended in time (a blocked open does not)."""
    assert callable(work)
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_link_is_deleted_never_kept_as_a_spare_and_written_through(
    tmp_path: Path, clock: FakeClock, kind: str
) -> None:
    """A deleted file becomes a spare that the next file is written over: a link planted in its
    place (to a file outside, or a second name of one) must be unlinked, not kept."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (tmp_path / "root").mkdir()
    store = os_store(tmp_path / "root", clock)
    planted = tmp_path / "root" / "Queue" / "x.eml"
    if kind == "symlink":
        planted.symlink_to(outside)
    else:
        os.link(outside, planted)
    assert store.recycle("Queue", "x.eml")
    assert store.spares == ()
    assert not planted.exists()
    for number in range(3):
        store.write("Queue", f"{number}.eml", b"y" * 100)
    assert outside.read_bytes() == b"precious"


def test_a_fifo_under_todays_log_name_blocks_no_writer_and_no_reader(
    tmp_path: Path, clock: FakeClock
) -> None:
    clock.set(NOON)
    spool = Spool(str(tmp_path), clock=clock)
    (tmp_path / "Log").mkdir()
    fifo = tmp_path / "Log" / log_file_name(NOON.date())
    os.mkfifo(fifo)
    log = MailLog(spool._store)
    event = Queued(
        queue_id=ID, time=NOON, origin="pickup:a", sender="a@b.c", recipients=("d@e.f",), size=1
    )
    assert finished_within(3, lambda: log.append(event))  # refused, with a warning, not waited on
    assert finished_within(3, lambda: list(log.read(ID)))
    assert list(log.read(ID)) == []
    log.close()
    spool.close()


def test_a_log_file_linked_out_of_the_mailroot_is_not_read(
    tmp_path: Path, clock: FakeClock
) -> None:
    clock.set(NOON)
    outside = tmp_path / "outside.jsonl"
    spool = Spool(str(tmp_path / "root"), clock=clock)
    log = MailLog(spool._store)
    log.append(
        Queued(
            queue_id=ID, time=NOON, origin="pickup:a", sender="a@b.c", recipients=("d@e.f",), size=1
        )
    )
    today = tmp_path / "root" / "Log" / log_file_name(NOON.date())
    os.replace(today, outside)
    (tmp_path / "root" / "Log" / "spoolmail-2026-12-04.jsonl").symlink_to(outside)
    assert list(log.read(ID)) == []  # the line is there, behind a link: not followed
    log.close()
    spool.close()


def test_a_fifo_as_the_suppression_list_is_an_error_not_a_hang(
    tmp_path: Path, clock: FakeClock
) -> None:
    spool = Spool(str(tmp_path), clock=clock)
    (tmp_path / "Suppression").mkdir()
    os.mkfifo(tmp_path / "Suppression" / "suppressed.jsonl")
    suppression = SuppressionList(spool, days=30)
    failures: list[Exception] = []

    def look() -> None:
        try:
            suppression.get("bob@remote.test")
        except StorageError as exc:
            failures.append(exc)

    def add() -> None:
        try:
            suppression.add("bob@remote.test", Reply(550, "5.1.1", "no"), queue_id="q")
        except StorageError as exc:
            failures.append(exc)

    assert finished_within(3, look)
    assert finished_within(3, add)
    assert len(failures) == 2
    assert all("Suppression/suppressed.jsonl" in str(exc) for exc in failures)
    assert "FIFO" in str(failures[0])
    assert not failures[0].temporary  # a command says 1, not "try again later" (75)
    spool.close()


def test_a_suppression_list_linked_out_of_the_mailroot_is_not_read(
    tmp_path: Path, clock: FakeClock
) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(
        b'{"address": "bob@remote.test", "time": "2099-01-01T00:00:00+00:00", '
        b'"reply": {"code": 550, "text": "no"}, "queue_id": "q"}\n'
    )
    spool = Spool(str(tmp_path / "root"), clock=clock)
    (tmp_path / "root" / "Suppression").mkdir()
    (tmp_path / "root" / "Suppression" / "suppressed.jsonl").symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        SuppressionList(spool, days=30).entries()
    spool.close()
