"""The mail log in ``Log/``: daily JSON-lines files, appended, pruned, read back by queue id.

Runs on MemoryFS and on OSFS in a temp dir (the ``filesystem`` fixture); the OS-only tests
append from several threads and from several processes at once and check that every line
arrives whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from spoolmail import Reply, Spool, State
from spoolmail._store import pyfs
from spoolmail._store.maillog import MailLog, log_file_name
from spoolmail.events import (
    Delivered,
    DsnQueued,
    MailEvent,
    Queued,
    Removed,
    Requeued,
    decode_event,
)
from spoolmail.testing import FakeClock

ID = "19ac9b2f1c0-00005e1f0c2a9b7d"
OTHER = "19ac9b2f1c0-00015e1f0c2a9b7e"
NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def delivered(queue_id: str, time: datetime, recipient: str = "bob@example.net") -> Delivered:
    return Delivered(
        queue_id=queue_id,
        time=time,
        recipient=recipient,
        reply=Reply(250, "2.0.0", "queued as X", host="192.0.2.1"),
        relay="mx.example.net[192.0.2.1]:25",
        delay=timedelta(seconds=1.5),
    )


@pytest.fixture
def spool(filesystem: pyfs.FS, clock: FakeClock) -> Spool:
    return Spool(filesystem, clock=clock)


def lines(spool: Spool, day: datetime) -> list[str]:
    text: str = spool.fs.readtext(f"Log/{log_file_name(day.date())}")
    return text.splitlines()


def test_no_log_folder_until_a_line_is_written(spool: Spool) -> None:
    assert not spool.fs.exists("Log")
    MailLog(spool._store).append(delivered(ID, NOON))
    assert spool.fs.listdir("Log") == ["spoolmail-2026-12-05.jsonl"]


def test_an_event_is_one_json_line_and_reads_back_equal(spool: Spool) -> None:
    mail_log = MailLog(spool._store)
    event = delivered(ID, NOON)
    mail_log.append(event)
    mail_log.append(delivered(OTHER, NOON))
    mail_log.append(Removed(queue_id=ID, time=NOON + timedelta(seconds=1)))
    [first, _, _] = lines(spool, NOON)
    data = json.loads(first)
    assert data["v"] == 1
    assert data["event"] == "delivered"
    assert data["queue_id"] == ID
    assert data["reply"] == {
        "code": 250,
        "enhanced": "2.0.0",
        "text": "queued as X",
        "host": "192.0.2.1",
    }
    assert data["relay"] == "mx.example.net[192.0.2.1]:25"
    assert data["delay"] == 1.5
    found = [found for _, found in mail_log.read(ID)]
    assert found == [event, Removed(queue_id=ID, time=NOON + timedelta(seconds=1))]
    assert next(line for line, _ in mail_log.read(ID)) == first


def test_one_file_per_utc_day_and_read_across_them(spool: Spool) -> None:
    mail_log = MailLog(spool._store)
    late = datetime(2026, 12, 5, 23, 59, 59, tzinfo=UTC)
    # 00:30 on the 6th in UTC+2 is 22:30 on the 5th in UTC: the day is the UTC one.
    east = datetime(2026, 12, 6, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    next_day = datetime(2026, 12, 6, 0, 0, 1, tzinfo=UTC)
    mail_log.append(delivered(ID, late))
    mail_log.append(delivered(ID, east, "carol@example.net"))
    mail_log.append(Removed(queue_id=ID, time=next_day))
    assert sorted(spool.fs.listdir("Log")) == [
        "spoolmail-2026-12-05.jsonl",
        "spoolmail-2026-12-06.jsonl",
    ]
    assert len(lines(spool, late)) == 2
    assert len(lines(spool, next_day)) == 1
    assert [type(e) for _, e in mail_log.read(ID)] == [Delivered, Delivered, Removed]


def test_old_days_are_pruned_once_a_new_day_begins(spool: Spool) -> None:
    spool.fs.makedirs("Log")
    for day in range(1, 6):
        spool.fs.writetext(f"Log/spoolmail-2026-12-0{day}.jsonl", "")
    spool.fs.writetext("Log/notes.txt", "an operator's file")
    spool.fs.writetext("Log/spoolmail-2026-13-01.jsonl", "not a date: left alone")
    mail_log = MailLog(spool._store, days=3)
    mail_log.append(delivered(ID, NOON))  # the 5th: keeps the 3rd, 4th and 5th
    assert sorted(spool.fs.listdir("Log")) == [
        "notes.txt",
        "spoolmail-2026-12-03.jsonl",
        "spoolmail-2026-12-04.jsonl",
        "spoolmail-2026-12-05.jsonl",
        "spoolmail-2026-13-01.jsonl",
    ]
    spool.fs.writetext("Log/spoolmail-2026-12-02.jsonl", "")  # appears later: not looked at
    mail_log.append(delivered(ID, NOON + timedelta(hours=1)))  # same day: no second prune
    assert spool.fs.exists("Log/spoolmail-2026-12-02.jsonl")
    mail_log.append(delivered(ID, NOON + timedelta(days=1)))  # the 6th
    assert mail_log.days_kept() == [datetime(2026, 12, d, tzinfo=UTC).date() for d in (4, 5, 6)]


def test_days_must_be_one_or_more(spool: Spool) -> None:
    with pytest.raises(ValueError, match="at least one day"):
        MailLog(spool._store, days=0)


def test_read_follows_a_dsn_and_a_requeue_to_their_parent_s_line(spool: Spool) -> None:
    mail_log = MailLog(spool._store)
    dsn = DsnQueued(
        queue_id=ID, time=NOON, dsn_id=f"{ID}-d1", action="failed", recipients=("b@x.test",)
    )
    requeue = Requeued(queue_id=OTHER, time=NOON, new_id=f"{ID}-d1", to=State.QUEUED)
    for event in (dsn, requeue, Removed(queue_id=f"{ID}-d1", time=NOON)):
        mail_log.append(event)
    assert [e for _, e in mail_log.read(f"{ID}-d1")] == [
        dsn,
        requeue,
        Removed(queue_id=f"{ID}-d1", time=NOON),
    ]
    # ID itself: only its own line, not the DSN's later story although the id is a prefix.
    assert [e for _, e in mail_log.read(ID)] == [dsn]


def test_damaged_and_foreign_lines_are_skipped(spool: Spool) -> None:
    mail_log = MailLog(spool._store)
    mail_log.append(delivered(ID, NOON))
    name = f"Log/{log_file_name(NOON.date())}"
    with spool.fs.open(name, "ab") as handle:
        handle.write(f'{{"v":1,"event":"delivered","queue_id":"{ID}","ti'.encode())  # cut short
        handle.write(b"\n\xff\xfe garbage " + ID.encode() + b"\n")
        handle.write(f'{{"v":2,"event":"delivered","queue_id":"{ID}"}}\n'.encode())
        handle.write(f'{{"v":1,"event":"teleported","queue_id":"{ID}"}}\n'.encode())
        handle.write(f'{{"v":1,"event":"removed","queue_id":"{ID}","time":"x"}}\n'.encode())
    mail_log.append(Removed(queue_id=ID, time=NOON))
    assert [type(e) for _, e in mail_log.read(ID)] == [Delivered, Removed]


def test_hostile_values_stay_inside_their_line(spool: Spool) -> None:
    mail_log = MailLog(spool._store)
    queued = Queued(
        queue_id=ID,
        time=NOON,
        origin='smtp:192.0.2.7\n{"v":1,"event":"removed"}',
        sender='"a\\"\r\n"@x.test',
        recipients=("b\u2028@x.test", "zo\u00eb\x85@x.test"),
        size=10,
    )
    mail_log.append(queued)
    [line] = lines(spool, NOON)  # splitlines: the strictest reader of line ends
    assert decode_event(line) == queued
    assert "zoë" in line  # UTF-8 stays readable


def test_an_unwritable_log_is_reported_once_and_never_raises(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    spool.fs.writetext("Log", "a file where the folder should be")
    mail_log = MailLog(spool._store)
    with caplog.at_level("WARNING", logger="spoolmail"):
        mail_log.append(delivered(ID, NOON))
        mail_log.append(delivered(ID, NOON))
    assert sum("cannot write the mail log in Log/" in r.getMessage() for r in caplog.records) == 1
    spool.fs.remove("Log")
    with caplog.at_level("INFO", logger="spoolmail"):
        mail_log.append(delivered(ID, NOON))
    assert "writing the mail log in Log/ again" in caplog.text
    assert len([e for _, e in mail_log.read(ID)]) == 1


# -- on the disk: threads and processes at once ---------------------------------------------------


def test_threads_append_whole_lines(tmp_path: Path, clock: FakeClock) -> None:
    with Spool(tmp_path, clock=clock) as spool:
        mail_log = MailLog(spool._store)
        big = "x" * 900  # lines of about 1.3 KB

        def write(n: int) -> None:
            for i in range(200):
                mail_log.append(delivered(f"{ID}-{n}", NOON, f"{i}.{big}@x.test"))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        mail_log.close()
        written = (tmp_path / "Log" / log_file_name(NOON.date())).read_text().splitlines()
    events = [decode_event(line) for line in written]
    assert len(events) == 800
    for n in range(4):
        mine = [e for e in events if e.queue_id == f"{ID}-{n}"]
        assert [e.recipient for e in mine if isinstance(e, Delivered)] == [
            f"{i}.{big}@x.test" for i in range(200)
        ]


WRITER = """
import sys
from datetime import UTC, datetime
from spoolmail import Reply, Spool
from spoolmail._store.maillog import MailLog
from spoolmail.events import Failed

root, tag = sys.argv[1], sys.argv[2]
with Spool(root) as spool:
    mail_log = MailLog(spool._store)
    for i in range(300):
        mail_log.append(Failed(
            queue_id=tag, time=datetime(2026, 12, 5, 12, tzinfo=UTC), recipient=f"r{i}@x.test",
            reply=Reply(550, "5.1.1", "no " * 300, host="192.0.2.1"),
        ))
"""


def test_processes_append_whole_lines(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"writer{n}"])
        for n in range(3)
    ]
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    written = (tmp_path / "Log" / log_file_name(NOON.date())).read_text().splitlines()
    events: list[MailEvent] = [decode_event(line) for line in written]
    assert len(events) == 900
    for n in range(3):
        assert sum(e.queue_id == f"writer{n}" for e in events) == 300


# -- events fired together ------------------------------------------------------------------------


def test_events_fired_together_are_the_lines_one_by_one_would_be(
    spool: Spool, clock: FakeClock
) -> None:
    late = datetime(2026, 12, 5, 23, 59, 59, tzinfo=UTC)
    batch: list[MailEvent] = [
        delivered(ID, late),
        Removed(queue_id=ID, time=late),
        delivered(OTHER, late + timedelta(seconds=2)),  # the next UTC day
        Removed(queue_id=OTHER, time=late + timedelta(seconds=2)),
    ]
    MailLog(spool._store).append_all(batch)
    together = {name: spool.fs.readbytes(f"Log/{name}") for name in spool.fs.listdir("Log")}
    spool.fs.removetree("Log")
    one_by_one = MailLog(spool._store)
    for event in batch:
        one_by_one.append(event)
    assert together == {name: spool.fs.readbytes(f"Log/{name}") for name in spool.fs.listdir("Log")}
    assert len(together) == 2


def test_the_lines_of_a_day_fired_together_are_one_write(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with Spool(tmp_path, clock=clock) as spool:
        mail_log = MailLog(spool._store)
        monkeypatch.setattr(os, "write", write)
        mail_log.append_all([delivered(ID, NOON), Removed(queue_id=ID, time=NOON)])
        mail_log.observe_all([delivered(OTHER, NOON)])
        monkeypatch.undo()
        mail_log.close()
    assert [data.count(b"\n") for data in writes] == [2, 1]
    written = (tmp_path / "Log" / log_file_name(NOON.date())).read_bytes()
    assert written == b"".join(writes)
