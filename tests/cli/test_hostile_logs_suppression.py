"""Reading back the mail log (``Log/``) and the suppression list (``Suppression/``) when their
files were damaged by a crash, edited by hand or planted by another local user.

What it guards: memory stays bounded whatever a line's length (sparse files of hundreds of
megabytes, no line end at all); a line cut short by a crash costs that line, never the next one
appended; numbers and dates out of range, values of the wrong type and entries that are no
regular file cost their own line or file only; the mail log keeps being written whatever else
``Log/`` holds; a damaged suppression list never stops delivery nor suppresses anyone it should
not; ``spoolmail log`` and ``spoolmail suppress list`` end without a traceback and print control
characters escaped. Links and FIFOs as such are covered by tests/store/test_planted_entries.py
and tests/cli/test_hostile_operator_input.py; this file does not repeat them.
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from spoolmail import MailService, Reply, Spool, SuppressionList
from spoolmail._store import maillog, pyfs
from spoolmail._store.maillog import MailLog, log_file_name
from spoolmail.events import Delivered, Removed
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.cli.test_hostile_operator_input import Cli, one_line

ID = "19ac9b2f1c0-00005e1f0c2a9b7d"
NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
# In force when the tests run (the suppress command reads the real clock): now.
LATER = datetime.now(UTC).isoformat()
TIME = '"time":"2026-12-05T12:00:00+00:00"'
REMOVED = f'{{"v":1,"event":"removed","queue_id":"{ID}",{TIME}}}\n'
HUGE = 200 << 20  # bytes of a sparse file: costs no disk, only reading time
MOST_MEMORY = 64 << 20  # what reading a huge file may hold at once
# Characters a terminal acts on: C0 (but the line end), DEL, C1.
CONTROLS = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))} - {"\n"}


def entry_line(address: str, *, time: str = "2026-12-01T00:00:00+00:00", code: str = "550") -> str:
    return (
        f'{{"address": {json.dumps(address)}, "time": "{time}", '
        f'"reply": {{"code": {code}, "enhanced": "5.1.1", "text": "no such user"}}, '
        f'"queue_id": "q"}}\n'
    )


def peak_memory(work: Callable[[], object]) -> int:
    """The most bytes Python held at once while ``work`` ran."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """A new MailRoot, as tests/cli/test_hostile_operator_input.py's ``cli`` makes one."""
    made = Cli(tmp_path / "MailRoot", capsys)
    with Spool(str(made.root)):
        pass
    return made


@pytest.fixture
def os_spool(tmp_path: Path, clock: FakeClock) -> Spool:
    clock.set(NOON)
    return Spool(str(tmp_path / "root"), clock=clock)


def log_path(spool: Spool, day: datetime = NOON) -> Path:
    return Path(spool.fs.getsyspath("/")) / "Log" / log_file_name(day.date())


def suppression_path(spool: Spool) -> Path:
    folder = Path(spool.fs.getsyspath("/")) / "Suppression"
    folder.mkdir(exist_ok=True)
    return folder / "suppressed.jsonl"


# -- the mail log: huge and cut lines --------------------------------------------------------------


def test_a_huge_log_line_is_passed_over_in_bounded_memory(os_spool: Spool) -> None:
    """200 MB of NULs without a line end (a planted file, a crash on a filesystem that leaves
    zeros), then a good line: the good line is read, and the huge one never held whole."""
    path = log_path(os_spool)
    path.parent.mkdir()
    with path.open("wb") as handle:
        handle.truncate(HUGE)
    with path.open("ab") as handle:
        handle.write(b"\n" + REMOVED.encode())
    mail_log = MailLog(os_spool._store)
    found: list[object] = []
    assert peak_memory(lambda: found.extend(mail_log.read(ID))) < MOST_MEMORY
    assert [type(event) for _, event in found] == [Removed]


def test_the_line_after_one_cut_short_by_a_crash_is_read(os_spool: Spool) -> None:
    """A crash (or a full disk) cut the last line; the service started again appends: its line
    must not be glued to the cut one and skipped with it."""
    path = log_path(os_spool)
    path.parent.mkdir()
    path.write_bytes(REMOVED.encode() + REMOVED.encode()[:40])  # cut, no line end
    mail_log = MailLog(os_spool._store)  # a new process: the day's file is opened anew
    mail_log.append(Removed(queue_id=ID, time=NOON))
    mail_log.close()
    assert [type(event) for _, event in mail_log.read(ID)] == [Removed, Removed]
    with path.open("wb") as handle:  # a planted file of NULs, no line end at all
        handle.truncate(HUGE)
    mail_log = MailLog(os_spool._store)
    mail_log.append(Removed(queue_id=ID, time=NOON))
    mail_log.close()
    assert [type(event) for _, event in mail_log.read(ID)] == [Removed]


# -- the mail log: values out of range, of the wrong type, for a terminal -------------------------


@pytest.mark.parametrize(
    "damaged",
    [
        pytest.param('"delay":1e400', id="delay-infinite"),
        pytest.param('"delay":Infinity', id="delay-Infinity"),
        pytest.param('"delay":1e18', id="delay-too-many-days"),
        pytest.param('"delay":1,"reply":{"code":1e400,"text":"x"}', id="code-infinite"),
    ],
)
def test_a_log_line_with_numbers_out_of_range_costs_that_line(
    filesystem: pyfs.FS, clock: FakeClock, damaged: str
) -> None:
    spool = Spool(filesystem, clock=clock)
    mail_log = MailLog(spool._store)
    mail_log.append(Removed(queue_id=ID, time=NOON))
    reply = '"reply":{"code":250,"enhanced":"2.0.0","text":"ok","host":null}'
    line = (
        f'{{"v":1,"event":"delivered","queue_id":"{ID}",{TIME},"recipient":"b@x.test",'
        f'{reply},"relay":null,"drop_file":null,{damaged}}}\n'
    )
    spool.fs.appendbytes(f"Log/{log_file_name(NOON.date())}", line.encode())
    mail_log.append(Removed(queue_id=ID, time=NOON))
    assert [type(event) for _, event in mail_log.read(ID)] == [Removed, Removed]


WRONG_TYPES = [
    f'{{"v":1,"event":"removed","queue_id":"{ID}","time":null}}',
    f'{{"v":1,"event":"delivered","queue_id":"{ID}",{TIME},"recipient":5,'
    '"reply":{"code":250,"text":"ok"},"delay":1}',
    f'{{"v":1,"event":"delivered","queue_id":"{ID}",{TIME},"recipient":"b@x",'
    '"reply":{"code":250,"text":"ok"},"delay":null}',
    f'{{"v":1,"event":"dsn-queued","queue_id":"other",{TIME},"dsn_id":"{ID}","action":[1],'
    '"recipients":[]}',
    f'{{"v":1,"event":"dsn-queued","queue_id":[1],{TIME},"dsn_id":"{ID}","action":"failed",'
    '"recipients":[]}',
    # A size that is text (it was shown as it was, control characters and all).
    f'{{"v":1,"event":"queued","queue_id":"{ID}",{TIME},"origin":"o","sender":"s",'
    '"recipients":[],"size":"\\u009b2J\\u007f"}',
    # A reply whose text is a list, a host that is a number.
    f'{{"v":1,"event":"failed","queue_id":"{ID}",{TIME},"recipient":"b@x",'
    '"reply":{"code":550,"text":["x"]},"delay":1}',
    f'{{"v":1,"event":"failed","queue_id":"{ID}",{TIME},"recipient":"b@x",'
    '"reply":{"code":550,"text":"x","host":5},"delay":1}',
    # A count that is a boolean, a delay of 1e400 seconds.
    f'{{"v":1,"event":"dropped","queue_id":"{ID}",{TIME},"file":"f","recipients":[],"size":true}}',
    f'{{"v":1,"event":"deferred","queue_id":"{ID}",{TIME},"recipient":"b@x",'
    '"reply":{"code":450,"text":"x"},"delay":1e400,"next_attempt":"2026-12-05T13:00:00+00:00"}',
]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_log_lines_with_values_of_the_wrong_type_are_left_out_with_a_note(
    cli: Cli, as_json: bool
) -> None:
    """Hand-edited lines that are JSON, and an event, but hold a null, a number or a list where
    text or a time goes: ``spoolmail log`` said nothing more than a traceback. Now each is left
    out (in both forms, which list the same lines), the good ones after it shown, and one line on
    stderr says how many were left out."""
    folder = cli.folder("Log")
    folder.mkdir()
    (folder / log_file_name(NOON.date())).write_text("\n".join([*WRONG_TYPES, REMOVED]))
    status, out, err = cli("log", *(["--json"] if as_json else []), ID)
    assert status == 0
    assert len(out.splitlines()) == 1
    assert out.rstrip("\n").endswith(REMOVED.rstrip("\n") if as_json else f"{ID}: removed")
    assert "10 damaged lines" in one_line(err)


HOSTILE_TEXT_LINES = [
    # Fields the daemon-style line shows as they are: the file Drop wrote, a BadMail status, a
    # sender.
    f'{{"v":1,"event":"dropped","queue_id":"{ID}",{TIME},'
    '"file":"Drop/x\\u001b[2J\\n2026-01-01 forged: removed","recipients":[],"size":1}',
    f'{{"v":1,"event":"badmail","queue_id":"{ID}",{TIME},'
    '"status":"\\u001b]0;owned\\u0007","reason":"r"}',
    f'{{"v":1,"event":"queued","queue_id":"{ID}",{TIME},"origin":"o",'
    '"sender":"s\\u009b2J\\u007f","recipients":[],"size":1}',
]


def test_control_characters_in_log_fields_are_escaped(cli: Cli) -> None:
    folder = cli.folder("Log")
    folder.mkdir()
    (folder / log_file_name(NOON.date())).write_text("\n".join(HOSTILE_TEXT_LINES) + "\n")
    status, out, _ = cli("log", ID)
    assert status == 0
    assert not CONTROLS & set(out)
    lines = out.splitlines()
    assert len(lines) == 3  # the forged line stays inside its own
    assert "file=Drop/x\\x1b[2J\\x0a2026-01-01 forged: removed" in lines[0]
    assert lines[1].endswith("moved to BadMail: \\x1b]0;owned\\x07 r")
    assert "from=<s\\x9b2J\\x7f>," in lines[2]


def test_the_json_lines_printed_are_escaped_and_still_the_same_json(cli: Cli) -> None:
    """Raw C1 characters and DEL inside a JSON string, a CR and a tab between its tokens: JSON
    takes them as they are, a terminal acts on them. Printed, each line still decodes to the
    value stored."""
    stored = [
        f'{{"v":1,"event":"picked-up","queue_id":"{ID}",{TIME},"file":"a\u009b2J\u007fb"}}',
        f'{{"v":1,\t"event":"removed",\r"queue_id":"{ID}",{TIME}}}\r',
    ]
    folder = cli.folder("Log")
    folder.mkdir()
    (folder / log_file_name(NOON.date())).write_bytes(("\n".join(stored) + "\n").encode())
    status, out, _ = cli("log", "--json", ID)
    assert status == 0
    assert not CONTROLS & set(out)
    printed = out.splitlines()
    assert [json.loads(line) for line in printed] == [json.loads(line) for line in stored]


# -- the mail log: what else Log/ holds ------------------------------------------------------------


def test_a_folder_under_an_old_log_name_does_not_stop_the_mail_log(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    """Pruning met a folder it cannot remove, and the day's first line was never written: nor
    any line after it, every later one trying the same prune."""
    spool = Spool(filesystem, clock=clock)
    filesystem.makedirs(f"Log/{log_file_name((NOON - timedelta(days=400)).date())}")
    filesystem.makedirs(f"Log/{log_file_name((NOON - timedelta(days=1)).date())}")  # read too
    mail_log = MailLog(spool._store)
    mail_log.append(Removed(queue_id=ID, time=NOON))
    mail_log.append(Removed(queue_id=ID, time=NOON + timedelta(days=1)))  # a new day: prunes
    assert [event.time for _, event in mail_log.read(ID)] == [NOON, NOON + timedelta(days=1)]
    mail_log.close()


def two_days(spool: Spool) -> tuple[MailLog, str]:
    """A mail log with a line about ``ID`` on the day before ``NOON`` and on its day, and
    the earlier day's file name."""
    mail_log = MailLog(spool._store)
    mail_log.append(Removed(queue_id=ID, time=NOON - timedelta(days=1)))
    mail_log.append(Removed(queue_id=ID, time=NOON))
    mail_log.close()
    return mail_log, log_file_name((NOON - timedelta(days=1)).date())


def test_a_log_file_that_cannot_be_opened_does_not_hide_the_next_day(
    os_spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No permission to read one day's file (root reads anything, so the refusal is injected):
    the days after it are read all the same."""
    mail_log, refused = two_days(os_spool)
    real_open = maillog.open_regular

    def open_regular(path: str, *args: object, **kwargs: bool) -> int:
        if path.endswith(refused):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(maillog, "open_regular", open_regular)
    assert [event.time for _, event in mail_log.read(ID)] == [NOON]


def test_a_read_error_in_the_middle_of_a_log_file_does_not_hide_the_next_day(
    os_spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing disk in the middle of one day's file (injected: no disk here fails on cue)
    raised out of the reading, a traceback in `spoolmail log`: what was read stands, and the
    days after it are read all the same."""
    mail_log, failing_day = two_days(os_spool)
    real_open = mail_log._open

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError(5, "Input/output error")

    def opening(name: str) -> IO[bytes]:
        if name == failing_day:
            return io.BufferedReader(Failing())
        return real_open(name)

    monkeypatch.setattr(mail_log, "_open", opening)
    assert [event.time for _, event in mail_log.read(ID)] == [NOON]


def test_thousands_of_files_and_odd_names_in_log_are_left_alone(os_spool: Spool) -> None:
    """Guard (correct before): only ``spoolmail-YYYY-MM-DD.jsonl`` of a real date is read or
    pruned; names that look like it (a line end, a wrong date, a suffix, bytes that are no
    UTF-8) are neither read nor removed."""
    folder = log_path(os_spool).parent
    folder.mkdir()
    odd = [
        "spoolmail-2026-12-05.jsonl\n",
        "spoolmail-2026-02-30.jsonl",
        "spoolmail-2026-12-05.jsonl.bak",
        ".spoolmail-2026-12-05.jsonl",
        "SPOOLMAIL-2026-12-05.JSONL",
        "spoolmail-2000-01-01.jsonl ",
        "spoolmail-\u0662\u0660\u0662\u0666-12-05.jsonl",  # Arabic-Indic digits
    ]
    for name in odd:
        (folder / name).write_text(REMOVED)
    os.close(os.open(bytes(folder) + b"/spoolmail-\xff.jsonl", os.O_CREAT | os.O_WRONLY))
    for number in range(3000):
        (folder / f"x{number}.jsonl").write_text(REMOVED)
    mail_log = MailLog(os_spool._store)
    mail_log.append(
        Delivered(
            queue_id=ID,
            time=NOON,
            recipient="b@x.test",
            reply=Reply(250, "2.0.0", "ok"),
        )
    )
    mail_log.close()
    assert [type(event) for _, event in mail_log.read(ID)] == [Delivered]
    assert len(os.listdir(folder)) == len(odd) + 1 + 3000 + 1


# -- the suppression list ------------------------------------------------------------------------


def out_of_range_lines() -> str:
    return (
        entry_line("inf@remote.test", code="Infinity")
        + entry_line("huge@remote.test", code="1e400")
        + entry_line("late@remote.test", time="9999-12-31T00:00:00+00:00")
        + entry_line("bob@remote.test")
    )


def test_suppression_numbers_and_dates_out_of_range_cost_their_line(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    """A reply code of 1e400 and an entry whose expiry is past the year 9999 raised
    OverflowError from every look at the list: listing, pruning, and each recipient's check."""
    spool = Spool(filesystem, clock=clock)
    clock.set(NOON)
    filesystem.makedirs("Suppression")
    filesystem.writetext("Suppression/suppressed.jsonl", out_of_range_lines())
    suppression = SuppressionList(spool, days=30)
    assert [e.address for e in suppression.entries()] == ["bob@remote.test"]
    assert suppression.get("bob@remote.test") is not None
    assert suppression.get("late@remote.test") is None
    assert suppression.prune() == 0
    assert [e.address for e in SuppressionList(spool, days=30).entries()] == ["bob@remote.test"]


def test_a_damaged_suppression_list_never_stops_delivery(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    spool = Spool(filesystem, clock=clock)
    clock.set(NOON)
    filesystem.makedirs("Suppression")
    filesystem.writetext("Suppression/suppressed.jsonl", out_of_range_lines())
    transport = CapturingTransport()
    service = MailService(
        spool,
        transport=transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
    )
    try:
        for to in ("carol@remote.test", "bob@remote.test"):
            spool.submit(
                f"From: a@example.com\r\nTo: {to}\r\n\r\nhi\r\n".encode(),
                sender="a@example.com",
                recipients=[to],
            )
        report = service.run_once()
    finally:
        service.close()
    sent = [to for _, to in transport.attempts]
    assert ("carol@remote.test",) in sent
    assert ("bob@remote.test",) not in sent
    assert [to for _, to in report.delivered][:1] == ["carol@remote.test"]
    assert [to for _, to in report.failed] == ["bob@remote.test"]  # the good entry holds


def test_a_huge_suppression_file_is_read_in_bounded_memory(os_spool: Spool) -> None:
    path = suppression_path(os_spool)
    with path.open("wb") as handle:
        handle.truncate(HUGE)
    with path.open("ab") as handle:
        handle.write(b"\n" + entry_line("bob@remote.test").encode())
    suppression = SuppressionList(os_spool, days=30)
    found: list[object] = []
    assert peak_memory(lambda: found.extend(suppression.entries())) < MOST_MEMORY
    assert [e.address for e in found] == ["bob@remote.test"]  # type: ignore[attr-defined]


def test_an_entry_added_after_a_cut_line_is_in_force(os_spool: Spool) -> None:
    """A crash cut the last line; the next hard bounce appended must start a line of its own,
    or it is skipped with the cut one and the recipient is tried again and again."""
    path = suppression_path(os_spool)
    path.write_bytes(entry_line("dan@remote.test").encode()[:30])
    SuppressionList(os_spool, days=30).add(
        "bob@remote.test", Reply(550, "5.1.1", "no", host="mx.remote.test"), queue_id="q"
    )
    assert SuppressionList(os_spool, days=30).get("bob@remote.test") is not None


def test_damaged_entries_never_suppress_a_recipient(os_spool: Spool) -> None:
    """Guard (correct before): an entry without a UTC offset, an expired one, one for another
    spelling (a space, a NUL), one whose address is a list: none suppresses bob."""
    suppression_path(os_spool).write_text(
        entry_line("bob@remote.test", time="2026-12-01T00:00:00")
        + entry_line("bob@remote.test", time="2026-01-01T00:00:00+00:00")
        + entry_line("bob@remote.test ")
        + entry_line("bob@remote.test\x00")
        + entry_line("bob@remote.test").replace('"bob@remote.test"', '["bob@remote.test"]')
    )
    suppression = SuppressionList(os_spool, days=30)
    assert suppression.get("bob@remote.test") is None
    assert "bob@remote.test" not in [e.address for e in suppression.entries()]


def test_suppress_list_escapes_control_characters(cli: Cli) -> None:
    """Addresses, queue ids and replies from the file go to a terminal (the command has no
    clock to inject: the entries are dated now, in force)."""
    path = cli.folder("Suppression") / "suppressed.jsonl"
    path.parent.mkdir()
    path.write_text(
        entry_line("bob\x1b[2J@remote.test", time=LATER)
        + entry_line("eve\u009b31m\x7f@remote.test", time=LATER).replace(
            '"q"', '"q\\n\\u001b]0;x\\u0007"'
        )
        + entry_line("dan@remote.test", time=LATER).replace("no such user", "no\\rsuch\\u0085user")
    )
    status, out, _ = cli("suppress", "list")
    assert status == 0
    assert not CONTROLS & set(out)
    assert len(out.splitlines()) == 4
    assert "bob\\x1b[2J@remote.test" in out
    status, out, _ = cli("suppress", "list", "--json")
    assert status == 0
    assert not CONTROLS & set(out)
    listed = [json.loads(line) for line in out.splitlines()]
    assert {entry["address"] for entry in listed} == {
        "bob\x1b[2J@remote.test",
        "eve\u009b31m\x7f@remote.test",
        "dan@remote.test",
    }


def test_an_entry_dated_ahead_of_the_clock_suppresses_no_one(
    os_spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand edit's typo (2062 for 2026) suppressed its recipient for decades: an entry more
    than a day ahead of the clock is not in force (one a little ahead, another machine's
    clock, still is), and the next rewrite of the list (a removal, a prune) drops it."""
    now = os_spool.clock()
    suppression_path(os_spool).write_text(
        entry_line("bob@remote.test", time=(now + timedelta(days=36 * 365)).isoformat())
        + entry_line("carol@remote.test", time=(now + timedelta(hours=2)).isoformat())
    )
    caplog.set_level("WARNING", logger="spoolmail")
    suppression = SuppressionList(os_spool, days=30)
    assert suppression.get("bob@remote.test") is None
    assert suppression.get("carol@remote.test") is not None
    assert "the entry for 'bob@remote.test' is dated" in caplog.text
    suppression.remove("carol@remote.test")  # a rewrite of the list
    assert "bob@remote.test" not in suppression_path(os_spool).read_text()
