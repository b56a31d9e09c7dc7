"""Hostile files in BadMail, Drop and IIS's Queue leftovers, read by an operator's commands.

What another local user, a crash or a copy from Windows could leave there: reports and envelopes
of gigabytes (sparse files: no disk), control characters, names that are no ids or not UTF-8,
Queue files hard-linked to files outside the MailRoot. For each: memory stays bounded, nothing
outside the MailRoot is read, one bad entry does not stop a listing, and a command ends with a
clear line or its output, never a traceback. On real MailRoots (OSFS, temp dirs), through
``main(argv)`` and the ``Spool`` API.
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from spoolmail import Spool
from spoolmail._cli.main import EX_FAILED, EX_OK, EX_USAGE, main
from spoolmail._core.envelope import Envelope, Recipient, RecipientState, encode_envelope
from spoolmail._core.reply import Reply
from spoolmail.exceptions import StorageError
from tests.cli.test_hostile_operator_input import Cli, cli, one_line, secret, spoolmail

__all__ = ["cli", "secret"]  # fixtures, used by name

ID = "1a24def59ae-0000aaaaaaaaaaaa"
OTHER = "1a24def59ae-0000bbbbbbbbbbbb"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HUGE = 512 * 1024 * 1024  # sparse: no disk, but half a GiB of memory if read whole
BOUND = 64 * 1024 * 1024  # what reading one entry may take at the most
DROPPED = b"x-sender: alice@example.net\r\nx-receiver: bob@example.com\r\n\r\nhello\r\n"
IIS_FILE = "NTFS_6f7f0ab401c8a4b900000001.EML"
IIS_MESSAGE = b"From: reports@example.com\r\nTo: bob@example.com\r\nSubject: s\r\n\r\nbody\r\n"


def sparse(path: Path, size: int = HUGE) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)


def peak_of(work: Callable[[], object]) -> tuple[object, int]:
    """What ``work`` returned, and the most memory Python allocated while it ran."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class Sink(io.RawIOBase):
    """A real stdout's byte stream that keeps only how much went through it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.start = b""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        if len(self.start) < 256:
            self.start += bytes(view[: 256 - len(self.start)])
        self.count += len(view)
        return len(view)


def run_to_sink(root: Path, *argv: str) -> tuple[int, Sink]:
    sink = Sink()
    out = io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8")
    status = main(["--root", str(root), *argv], out=out)
    out.flush()
    return status, sink


# -- BadMail ---------------------------------------------------------------------------------------


def test_a_huge_badmail_report_is_listed_and_shown_in_bounded_memory(cli: Cli) -> None:
    """A .BDR of 512 MiB (sparse NULs) was read whole by the listing and by ``show``, into
    twice its size, and its one "line" of NULs printed as the reason. Its beginning is read,
    the rest left out with a note, and the other entries are listed as before."""
    badmail = cli.folder("BadMail")
    sparse(badmail / f"{ID}.BDR")
    (badmail / f"{OTHER}.BDR").write_bytes(b"550 5.1.1 no such user\n")
    (status, out, err), peak = peak_of(lambda: cli("badmail", "list"))
    assert (status, err) == (EX_OK, "")
    assert peak < BOUND
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "REASON"]
    assert lines[1].startswith(ID)
    assert len(lines[1]) < 8 * 1024
    assert f"{OTHER}  550 5.1.1 no such user" in lines
    assert lines[-1] == "-- 2 entries"
    with Spool(str(cli.root)) as spool:
        item, peak = peak_of(lambda: spool.badmail_item(ID))
    assert peak < BOUND
    assert item.report.endswith(f"(the rest left out: over {4 * 1024 * 1024} bytes)\n")
    assert len(item.reason) <= 1003
    (status, out, err), peak = peak_of(lambda: cli("badmail", "show", ID))
    assert (status, err) == (EX_OK, "")
    assert peak < BOUND


def test_a_huge_badmail_envelope_is_not_read_and_the_entry_stays_usable(cli: Cli) -> None:
    """A .BDP of 512 MiB was read whole (and handed to the JSON parser) by every listing.
    Over 16 MiB, an envelope is not read: the entry is listed without one."""
    badmail = cli.folder("BadMail")
    (badmail / f"{ID}.BDR").write_bytes(b"5.4.6 routing loop\n")
    (badmail / f"{ID}.BAD").write_bytes(IIS_MESSAGE)
    sparse(badmail / f"{ID}.BDP")
    (status, out, err), peak = peak_of(lambda: cli("badmail", "list", "--json"))
    assert (status, err) == (EX_OK, "")
    assert peak < BOUND
    assert json.loads(out)["sender"] is None
    (status, out, _), peak = peak_of(lambda: cli("badmail", "show", ID))
    assert status == EX_OK
    assert peak < BOUND
    assert "Envelope:     unknown (no readable .BDP)" in out
    assert cli("badmail", "delete", ID)[:2] == (EX_OK, f"{ID}: deleted\n")
    assert os.listdir(badmail) == []


def test_a_huge_badmail_message_is_shown_in_bounded_memory(cli: Cli) -> None:
    """``badmail show --message`` read the .BAD whole before writing it: streamed now."""
    badmail = cli.folder("BadMail")
    (badmail / f"{ID}.BDR").write_bytes(b"reason\n")
    sparse(badmail / f"{ID}.BAD")
    (status, sink), peak = peak_of(
        lambda: run_to_sink(cli.root, "badmail", "show", "--message", ID)
    )
    assert status == EX_OK
    assert sink.count == HUGE  # every byte, as it is
    assert peak < BOUND


def test_control_characters_of_a_report_are_shown_escaped(cli: Cli) -> None:
    """A report's first line is printed in the listing: its escape sequences cleared the
    operator's screen and retitled the terminal, its CR and NUL broke the table."""
    badmail = cli.folder("BadMail")
    (badmail / f"{ID}.BDR").write_bytes(b"\x1b[2J\x1b]0;owned\x07bad\rover\x00x\nline\ttwo\n")
    status, out, err = cli("badmail", "list")
    assert (status, err) == (EX_OK, "")
    assert "\\x1b[2J\\x1b]0;owned\\x07bad\\x0dover\\x00x" in out
    assert not any(c in out for c in "\x1b\x07\r\x00")
    status, out, _ = cli("badmail", "show", ID)
    assert status == EX_OK
    assert not any(c in out for c in "\x1b\x07\r\x00")
    assert "line\ttwo" in out  # lines and tabs are text
    status, out, _ = cli("badmail", "list", "--json")
    assert json.loads(out)["reason"] == "\x1b[2J\x1b]0;owned\x07bad\rover\x00x"  # data stays


def test_badmail_entries_of_every_odd_kind_do_not_hide_each_other(
    cli: Cli, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``.BAD`` whose name is no queue id (not even UTF-8) was listed all the same, as a
    message without report (the id check's NotFound was taken for a missing report): an id
    ``badmail show`` refuses, and a name a UTF-8 stdout cannot print, a traceback that ended
    the listing. Now passed over, as a ``.BDR`` of such a name was. Guard (correct before):
    a report without message and the reverse, a directory, a FIFO, an empty report, a binary
    envelope, a link out: each listed, nothing outside read, nothing waited on."""
    badmail = cli.folder("BadMail")
    ids = [f"1a24def59ae-00000000000000{n:02x}" for n in range(6)]
    (badmail / f"{ids[0]}.BDR").write_bytes(b"report without message\n")
    (badmail / f"{ids[1]}.BAD").write_bytes(IIS_MESSAGE)  # message without report
    (badmail / f"{ids[2]}.BDR").mkdir()
    os.mkfifo(badmail / f"{ids[3]}.BDR")
    (badmail / f"{ids[4]}.BDR").write_bytes(b"")
    (badmail / f"{ids[4]}.BDP").write_bytes(b"\xff\x00" * 100)
    (badmail / f"{ids[5]}.BDR").symlink_to(secret)
    (badmail / "{5E3A-NOT-AN-ID}.BDR").write_bytes(b"x\n")
    (badmail / "{5E3A-NOT-AN-ID}.BAD").write_bytes(IIS_MESSAGE)
    (badmail / "notes.txt").write_bytes(b"x\n")
    os.mkdir(os.fsencode(badmail) + b"/\xff\xfe.BAD")
    with open(os.fsencode(badmail) + b"/\xfe\xff.BDR", "wb") as handle:
        handle.write(b"x\n")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # strict, as under a UTF-8 locale
    done = spoolmail("--root", str(cli.root), "badmail", "list")  # no hang
    assert done.returncode == EX_OK
    assert done.stdout.endswith(b"-- 6 entries\n")
    # The names passed over are said on stderr without -v (only logged before), escaped.
    assert done.stderr.decode() == (
        "spoolmail: 3 names in BadMail are not listed: BadMail/'{5E3A-NOT-AN-ID}' (not named "
        "by a queue id), BadMail/'\\udcfe\\udcff' (not named by a queue id), "
        "BadMail/'\\udcff\\udcfe' (not named by a queue id)\n"
    )
    done = spoolmail("--root", str(cli.root), "badmail", "list", "--json")
    assert done.returncode == EX_OK
    assert done.stderr.decode().startswith("spoolmail: 3 names in BadMail are not listed: ")
    rows = {row["id"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert sorted(rows) == ids
    assert rows[ids[0]]["has_message"] is False
    assert rows[ids[1]]["reason"] == "(no report: its .BDR file is missing)"
    assert "directory" in rows[ids[2]]["reason"]
    assert "FIFO" in rows[ids[3]]["reason"]
    assert rows[ids[4]]["reason"] == ""
    assert "symbolic link" in rows[ids[5]]["reason"]
    assert b"TOPSECRET" not in done.stdout


# -- Drop ------------------------------------------------------------------------------------------


def test_a_drop_name_that_is_not_utf8_stops_no_listing(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Drop file named with bytes that are not UTF-8 was listed under that name, which a
    UTF-8 stdout cannot print: a traceback, and the files after it never listed. Only
    ``ID.eml`` files are listed, the names ``drop show`` takes; others are passed over."""
    drop = cli.folder("Drop")
    (drop / f"{ID}.eml").write_bytes(DROPPED)
    (drop / f"{OTHER}.eml").write_bytes(DROPPED)
    with open(os.fsencode(drop) + b"/1a24def59ae-\xff\xfe.eml", "wb") as handle:
        handle.write(DROPPED)
    (drop / "notes.txt").write_bytes(b"not mail")
    (drop / "{B3A1-GUID}.eml").write_bytes(DROPPED)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # strict, as under a UTF-8 locale
    for command in (["drop", "list"], ["drop", "list", "--json"]):
        done = spoolmail("--root", str(cli.root), *command)
        assert done.returncode == EX_OK, command
        # Said on stderr without -v: the count and each name, escaped.
        assert done.stderr.decode() == (
            "spoolmail: 3 names in Drop are not listed: Drop/'1a24def59ae-\\udcff\\udcfe.eml' "
            "(not named ID.eml), Drop/'notes.txt' (not named ID.eml), "
            "Drop/'{B3A1-GUID}.eml' (not named ID.eml)\n"
        ), command
        assert done.stdout.count(b"alice@example.net") == 2
        assert ID.encode() in done.stdout
        assert OTHER.encode() in done.stdout
        assert b"notes" not in done.stdout
        assert b"GUID" not in done.stdout
    with Spool(str(cli.root)) as spool:
        assert [item.id for item in spool.drop()] == [ID, OTHER]
        for item in spool.drop():
            assert spool.drop_item(item.id) == item  # each one listed can be shown


def test_a_huge_drop_file_is_listed_and_shown_in_bounded_memory(cli: Cli) -> None:
    """``drop show`` read the file whole before writing it out: streamed now. The listing
    (Guard: correct before) reads only the head."""
    drop = cli.folder("Drop")
    sparse(drop / f"{ID}.eml")
    (drop / f"{OTHER}.eml").write_bytes(DROPPED)
    (status, out, err), peak = peak_of(lambda: cli("drop", "list"))
    assert (status, err) == (EX_OK, "")
    assert peak < BOUND
    assert str(HUGE) in out
    assert "alice@example.net" in out
    (status, sink), peak = peak_of(lambda: run_to_sink(cli.root, "drop", "show", ID))
    assert status == EX_OK
    assert sink.count == HUGE
    assert peak < BOUND
    status, sink = run_to_sink(cli.root, "drop", "show", OTHER)
    assert (status, sink.start) == (EX_OK, DROPPED)


def test_drop_addresses_with_control_characters_are_shown_escaped(cli: Cli) -> None:
    """A Drop file's x-sender / x-receiver values were printed into the table as they were."""
    (cli.folder("Drop") / f"{ID}.eml").write_bytes(
        b"x-sender: \x1b]0;owned\x07@example.net\r\nx-receiver: b\x1b[2J@example.com\r\n\r\n"
    )
    status, out, err = cli("drop", "list")
    assert (status, err) == (EX_OK, "")
    assert "\\x1b]0;owned\\x07@example.net" in out
    assert "b\\x1b[2J@example.com" in out
    assert "\x1b" not in out


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda path, secret: path.symlink_to("/dev/zero"), id="link-dev-zero"),
        pytest.param(lambda path, secret: path.symlink_to(secret), id="link-out"),
        pytest.param(lambda path, secret: os.mkfifo(path), id="fifo"),
        pytest.param(lambda path, secret: path.mkdir(), id="directory"),
    ],
)
def test_a_drop_file_that_is_no_file_is_one_line_and_hides_no_other(
    cli: Cli, secret: Path, plant: Callable[[Path, Path], None]
) -> None:
    """Guard (correct before): ``drop show`` says what it is in one line, reads nothing
    through it and waits on nothing; the listing goes on without it."""
    drop = cli.folder("Drop")
    plant(drop / f"{ID}.eml", secret)
    (drop / f"{OTHER}.eml").write_bytes(DROPPED)
    done = spoolmail("--root", str(cli.root), "drop", "show", ID)
    assert done.returncode == EX_FAILED
    line = one_line(done.stderr.decode())
    assert "spoolmail reads only regular files" in line
    assert done.stdout == b""
    done = spoolmail("--root", str(cli.root), "drop", "list", "--json")
    assert (done.returncode, done.stderr) == (EX_OK, b"")
    assert [json.loads(row)["id"] for row in done.stdout.splitlines()] == [OTHER]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\xff\xfe" * 1000, id="binary"),
        pytest.param(b"x-sender: " + b"a" * (3 << 20) + b"\r\n\r\n", id="3MB-line"),
        pytest.param(b"X-H: v\r\n" * 300_000, id="head-never-ends"),
        pytest.param(b"x-sender: \xff\xfe@b.c\r\nx-receiver: d@e.f\r\n\r\n", id="not-utf8"),
    ],
)
def test_odd_drop_contents_list_and_show_without_error(cli: Cli, content: bytes) -> None:
    """Guard (correct before): whatever the bytes, listed (from its first MiB) and shown."""
    (cli.folder("Drop") / f"{ID}.eml").write_bytes(content)
    (status, out, err), peak = peak_of(lambda: cli("drop", "list", "--json"))
    assert (status, err) == (EX_OK, "")
    assert peak < BOUND
    assert json.loads(out)["size"] == len(content)
    status, sink = run_to_sink(cli.root, "drop", "show", ID)
    assert (status, sink.count) == (EX_OK, len(content))


# -- IIS Queue files (queue import-iis) -----------------------------------------------------------


def test_import_iis_refuses_a_queue_file_hard_linked_from_outside(cli: Cli, tmp_path: Path) -> None:
    """A Queue file that is a second link to a file elsewhere on the filesystem was read and
    written into Pickup as mail: a way around Pickup's one-link rule, mailing a file of
    someone else's. A copy from Windows has one link: a second one is refused."""
    outside = tmp_path / "private.eml"
    outside.write_bytes(b"From: carol@example.com\r\nTo: eve@remote.test\r\n\r\nPRIVATE\r\n")
    os.link(outside, cli.folder("Queue") / IIS_FILE)
    status, out, err = cli("queue", "import-iis", IIS_FILE)
    assert status == EX_FAILED
    assert "2 links" in one_line(err)
    assert "eve@remote.test" not in out
    assert os.listdir(cli.folder("Pickup")) == []
    assert os.listdir(cli.folder("Queue")) == [IIS_FILE]
    assert outside.read_bytes().endswith(b"PRIVATE\r\n")


@pytest.mark.parametrize(
    ("plant", "says"),
    [
        pytest.param(lambda p: p.symlink_to("/dev/zero"), "symbolic link", id="link-dev-zero"),
        pytest.param(lambda p: p.symlink_to("/etc/passwd"), "symbolic link", id="link-out"),
        pytest.param(os.mkfifo, "FIFO", id="fifo"),
        pytest.param(lambda p: p.mkdir(), "directory", id="directory"),
        pytest.param(lambda p: sparse(p, 10 << 30), "over max_message_size", id="10GB"),
        pytest.param(lambda p: p.write_bytes(b""), "empty", id="empty"),
        pytest.param(lambda p: p.write_bytes(b"a body, no header\r\n"), "header", id="no-head"),
        pytest.param(
            lambda p: p.write_bytes(b"From: a@b.c\r\nSubject: s\r\n\r\nx\r\n"),
            "no recipient",
            id="no-recipient",
        ),
        pytest.param(
            lambda p: p.write_bytes(b"From: a@b.c\r\nTo: d@e.f\r\nX: \x00\r\n\r\n"), "NUL", id="nul"
        ),
    ],
)
def test_a_hostile_iis_queue_file_is_one_line_and_the_others_are_imported(
    cli: Cli, plant: Callable[[Path], None], says: str
) -> None:
    """Guard (correct before): each bad Queue file is one line naming it and stays where
    it is; the good one beside it is imported all the same. In a subprocess: nothing hangs."""
    queue = cli.folder("Queue")
    bad = "NTFS_00000000000000000000000.EML"
    plant(queue / bad)
    (queue / IIS_FILE).write_bytes(IIS_MESSAGE)
    done = spoolmail("--root", str(cli.root), "queue", "import-iis")
    err = done.stderr.decode()
    assert done.returncode in (EX_FAILED, EX_USAGE), err
    line = one_line(err)
    assert f"Queue/{bad}" in line
    assert says in line
    assert f"Queue/{IIS_FILE}: to Pickup/{IIS_FILE}".encode() in done.stdout
    assert os.listdir(cli.folder("Pickup")) == [IIS_FILE]
    assert os.path.lexists(queue / bad)


def test_a_huge_queued_message_is_shown_in_bounded_memory(cli: Cli) -> None:
    """``queue show --message`` read the stored message whole before writing it out (the
    Queue's files, like Drop's, may be what another user planted): streamed now."""
    with Spool(cli.root) as spool:
        queue_id = spool.admit(
            [b"Subject: s\r\n\r\nbody\r\n"],
            sender="alice@example.net",
            recipients=["bob@example.com"],
            origin="test",
        )
    message = cli.folder("Queue") / f"{queue_id}.eml"
    with message.open("r+b") as handle:
        handle.truncate(HUGE)
    (status, sink), peak = peak_of(
        lambda: run_to_sink(cli.root, "queue", "show", "--message", queue_id)
    )
    assert status == EX_OK
    assert sink.count == HUGE
    assert sink.start.startswith(b"Subject: s\r\n")
    assert peak < BOUND


def test_a_drop_file_unreadable_at_its_open_is_passed_over_and_the_listing_goes_on(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the service cannot read (its mode: not testable as root), or one swapped for a
    FIFO between the listing's look and its open, raised out of ``Spool.drop`` and ended the
    listing. The open's refusal stands in for both (the race cannot be timed)."""
    drop = cli.folder("Drop")
    (drop / f"{ID}.eml").write_bytes(DROPPED)
    (drop / f"{OTHER}.eml").write_bytes(DROPPED)
    opened = Spool._drop_item

    def refusing(self: Spool, name: str) -> object:
        if name.startswith(ID):
            raise StorageError(f"cannot open Drop/{name}: [Errno 13] Permission denied")
        return opened(self, name)

    monkeypatch.setattr(Spool, "_drop_item", refusing)
    with Spool(cli.root) as spool:
        assert [item.id for item in spool.drop()] == [OTHER]


def test_badmail_names_that_are_no_ids_are_passed_over_with_a_warning(
    cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    """IIS's ``{GUID}.BAD`` (a MailRoot copied over) has no id to show it by: not listed, and
    said (it was passed over without a word)."""
    badmail = cli.folder("BadMail")
    (badmail / f"{ID}.BDR").write_bytes(b"a reason\n")
    (badmail / "{5E3A-NOT-AN-ID}.BAD").write_bytes(IIS_MESSAGE)
    caplog.set_level("WARNING", logger="spoolmail")
    with Spool(cli.root) as spool:
        assert [item.id for item in spool.badmail()] == [ID]
    assert "BadMail/'{5E3A-NOT-AN-ID}' is not listed: not named by a queue id" in caplog.text


def test_a_listing_says_how_many_names_it_passed_over_and_shows_the_first_few(
    cli: Cli,
) -> None:
    """A BadMail copied from IIS can hold thousands of ``{GUID}.BAD``: one line on stderr,
    the count and the first five, not a line each."""
    badmail = cli.folder("BadMail")
    for n in range(7):
        (badmail / f"{{GUID-{n}}}.BAD").write_bytes(IIS_MESSAGE)
    done = spoolmail("--root", str(cli.root), "badmail", "list")
    assert (done.returncode, done.stdout) == (EX_OK, b"BadMail is empty.\n")
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("spoolmail: 7 names in BadMail are not listed: BadMail/'{GUID-0}'")
    assert "{GUID-4}" in line
    assert "{GUID-5}" not in line
    assert line.endswith(", and 2 more")
    (badmail / "{GUID-6}.BAD").unlink()
    for n in range(1, 6):
        (badmail / f"{{GUID-{n}}}.BAD").unlink()
    done = spoolmail("--root", str(cli.root), "badmail", "list")
    assert done.stderr.decode() == (
        "spoolmail: 1 name in BadMail is not listed: BadMail/'{GUID-0}' (not named by a queue id)\n"
    )


def test_a_partial_requeue_keeps_the_whole_of_a_report_over_the_read_limit(cli: Cli) -> None:
    """Requeueing some of an entry's recipients rewrote its ``.BDR`` from the report as read,
    which stops at 4 MiB: a longer report lost its tail there. Now copied whole, the note after
    it. Guard: a report under the limit is rewritten as before."""
    badmail = cli.folder("BadMail")
    entry = Envelope(
        id=ID,
        sender="",
        recipients=(
            Recipient("a@example.com", RecipientState.FAILED, Reply(550, "5.1.1", "no")),
            Recipient("b@example.com", RecipientState.FAILED, Reply(550, "5.1.1", "no")),
        ),
        arrival=NOW,
        next_attempt=NOW,
        attempts=1,
    )
    report = b"5.1.1 failed\n" + b"a line of the transcript\n" * 200_000 + b"THE LAST LINE\n"
    assert len(report) > 4 << 20
    (badmail / f"{ID}.BAD").write_bytes(IIS_MESSAGE)
    (badmail / f"{ID}.BDR").write_bytes(report)
    (badmail / f"{ID}.BDP").write_bytes(encode_envelope(entry))
    with Spool(cli.root) as spool:
        new_id = spool.requeue_badmail(ID, recipients=["b@example.com"])
    kept = (badmail / f"{ID}.BDR").read_bytes()
    assert kept.startswith(report)
    assert f"Requeued as {new_id} for: b@example.com".encode() in kept[len(report) :]
    # Guard: a short report is rewritten with the note after it.
    (badmail / f"{OTHER}.BAD").write_bytes(IIS_MESSAGE)
    (badmail / f"{OTHER}.BDR").write_bytes(b"5.1.1 failed\n")
    (badmail / f"{OTHER}.BDP").write_bytes(encode_envelope(attrs.evolve(entry, id=OTHER)))
    with Spool(cli.root) as spool:
        other_new = spool.requeue_badmail(OTHER, recipients=["a@example.com"])
    kept = (badmail / f"{OTHER}.BDR").read_bytes()
    assert kept.startswith(b"5.1.1 failed\n")
    assert f"Requeued as {other_new} for: a@example.com".encode() in kept
