"""A hostile Pickup on a real OSFS MailRoot: links, FIFOs, devices, swaps, files that never end.

Pickup is writable by other programs. Whatever they put there, the service must not read outside
the MailRoot, block, or lose a real message, and every refused entry is accounted for in BadMail.
Each tick runs in a daemon thread with a deadline, so a regression fails here instead of hanging.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from spoolmail import Durability, Limits, MailService, Report, Router, Spool
from spoolmail._cli.main import main
from spoolmail._store.entries import (
    CappedReader,
    EntryKind,
    UnsafeEntry,
    facts_from_stat,
    open_regular,
)
from spoolmail.exceptions import StorageError
from spoolmail.testing import CapturingTransport, FakeClock

DEADLINE = 20.0
SECRET = (
    b"From: root@example.com\r\nTo: bob@example.com\r\nSubject: shadow\r\n\r\nroot:$6$secret\r\n"
)


def message(number: int) -> bytes:
    return (
        f"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: real {number}\r\n\r\n"
        f"body {number}\r\n"
    ).encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "MailRoot"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the MailRoot that looks like mail: it must never be read or changed."""
    path = tmp_path / "shadow"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def service(root: Path) -> Iterator[MailService]:
    clock = FakeClock()
    spool = Spool(str(root), clock=clock, durability=Durability.NONE)
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"]),
        transport=CapturingTransport(),
        clock=clock,
        fqdn="mail.example.com",
        limits=Limits(max_message_size=64 * 1024),
        pickup_settle=timedelta(seconds=0.2),
    )
    yield service
    service.close()
    spool.close()


def tick(service: MailService) -> Report:
    """``run_once`` with a deadline: a hang is a failure, not a stuck test run."""
    result: list[Report] = []
    thread = threading.Thread(target=lambda: result.append(service.run_once()), daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"run_once did not return within {DEADLINE} s"
    return result[0]


def everything_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def reports(root: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in (root / "BadMail").glob("*.BDR")}


def leftovers(root: Path) -> list[str]:
    """What is left in SortTemp but the service's own owner record and spare files."""
    return sorted(
        p.name for p in (root / "SortTemp").iterdir() if not p.name.endswith((".owner", ".tmp"))
    )


def test_a_symlink_to_a_file_outside_is_refused_unread(
    service: MailService, root: Path, outside: Path
) -> None:
    before = outside.stat()
    (root / "Pickup" / "leak.eml").symlink_to(outside)
    report = tick(service)
    assert len(report.badmail) == 1
    [text] = reports(root).values()
    assert text.startswith("5.7.0 Pickup entry 'leak.eml' refused: it is a symbolic link")
    assert repr(str(outside)) in text
    assert not list((root / "BadMail").glob("*.BAD"))  # no copy of anything
    assert not (root / "Pickup" / "leak.eml").exists()
    assert outside.read_bytes() == SECRET
    assert outside.stat().st_mtime_ns == before.st_mtime_ns
    assert b"root:$6$secret" not in everything_under(root)
    assert not list((root / "Drop").iterdir())
    assert leftovers(root) == []


@pytest.mark.parametrize("target", ["/dev/zero", "/proc/self/pagemap", "/dev/null"])
def test_links_to_endless_or_special_files_end_in_bounded_time(
    service: MailService, root: Path, target: str
) -> None:
    (root / "Pickup" / "endless").symlink_to(target)
    (root / "Pickup" / "real.eml").write_bytes(message(1))
    report = tick(service)
    assert len(report.badmail) == 1
    assert len(report.picked_up) == 1
    assert [p.name for p in (root / "Drop").iterdir()] != []
    assert leftovers(root) == []


class Records(logging.Handler):
    """The spoolmail logger's records, whatever level and propagation the command line left."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    logger = logging.getLogger("spoolmail")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_fifo_socket_directory_and_hard_link_are_each_accounted_for(
    service: MailService, root: Path, outside: Path, logged: list[logging.LogRecord]
) -> None:
    pickup = root / "Pickup"
    os.mkfifo(pickup / "pipe")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.closing(server):
        server.bind(str(pickup / "sock"))
        (pickup / "folder").mkdir()
        linked = root.parent / "linked.eml"
        linked.write_bytes(message(2))
        os.link(linked, pickup / "hardlink.eml")
        (pickup / "real.eml").write_bytes(message(1))
        first = tick(service)
        time.sleep(0.3)  # the hard link keeps its two links past the settle time
        tick(service)
        second = tick(service)
    texts = reports(root)
    kinds = sorted(text.split(": it is ", 1)[1].split(",", 1)[0] for text in texts.values())
    assert kinds == [
        "a FIFO (named pipe)",
        "a regular file with more than one hard link (2 links)",
        "a socket",
    ]
    assert len(first.picked_up) == 1
    assert len(first.badmail) == 2  # the FIFO and the socket at once, the hard link after
    assert second.badmail == ()  # nothing is refused twice
    assert sorted(p.name for p in pickup.iterdir()) == ["folder"]  # left where it is
    assert linked.read_bytes() == message(2)  # the other link is untouched
    assert sum("Pickup/folder is a directory" in r.getMessage() for r in logged) == 1
    assert leftovers(root) == []


def test_a_file_swapped_for_a_fifo_in_a_loop_never_blocks(service: MailService, root: Path) -> None:
    """An attacker renames a FIFO over a message file again and again while the service runs."""
    pickup, stop = root / "Pickup", threading.Event()
    written = 0

    def swap() -> None:
        nonlocal written
        while not stop.is_set():
            staging = root.parent / f"m{written}"
            staging.write_bytes(message(written))
            os.replace(staging, pickup / "x.eml")
            written += 1
            fifo = root.parent / "fifo"
            with contextlib.suppress(FileExistsError):
                os.mkfifo(fifo)
            with contextlib.suppress(FileNotFoundError):
                os.replace(fifo, pickup / "x.eml")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            tick(service)
    finally:
        stop.set()
        swapper.join(5)
    (pickup / "x.eml").unlink(missing_ok=True)
    tick(service)
    drop = len(list((root / "Drop").iterdir()))
    refused = reports(root)
    assert all(": it is a FIFO" in text for text in refused.values())
    assert drop + len(refused) >= 1
    assert drop <= written
    assert leftovers(root) == []
    assert not [p for p in (root / "BadMail").iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]


def test_a_fifo_left_as_a_claim_does_not_hang_recovery(service: MailService, root: Path) -> None:
    """A claim in SortTemp that is a FIFO (from a crash, or an older release) is refused."""
    os.mkfifo(root / "SortTemp" / "19ac9b2f1c0-00005e1f0c2a9b7d.deadowner.pipe.pickup")
    report = tick(service)
    assert report.badmail == ("19ac9b2f1c0-00005e1f0c2a9b7d",)
    assert leftovers(root) == []


def test_a_file_that_keeps_growing_is_left_then_refused_unread(
    service: MailService, root: Path
) -> None:
    """Its writer keeps it open: left alone (never read); closed at last, too big: BadMail 5.3.4."""
    path = root / "Pickup" / "growing.eml"
    with path.open("wb") as writer:
        writer.write(message(1))
        for _ in range(3):
            writer.write(b"x" * 40_000 + b"\r\n")
            writer.flush()
            report = tick(service)
            assert report.badmail == ()
            assert report.picked_up == ()
            assert path.exists()
    time.sleep(0.3)  # the settle time, for a service that has no lease (not root)
    report = tick(service)
    assert len(report.badmail) == 1
    [text] = reports(root).values()
    assert text.startswith("5.3.4 message size")
    assert len(list((root / "BadMail").glob("*.BAD"))) == 1


def test_a_file_open_for_writing_is_left_where_it_is(service: MailService, root: Path) -> None:
    path = root / "Pickup" / "half.eml"
    with path.open("wb") as writer:
        writer.write(b"From: alice@example.com\r\nTo: bob@example.com\r\n")
        writer.flush()
        if os.geteuid() != 0:
            pytest.skip("the settle time, not a lease, decides for an unprivileged service")
        for _ in range(3):
            assert tick(service).picked_up == ()
            time.sleep(0.25)  # past the settle time: only the lease keeps it
        writer.write(b"Subject: whole\r\n\r\nthe rest\r\n")
    report = tick(service)
    assert len(report.picked_up) == 1
    [drop] = (root / "Drop").iterdir()
    assert drop.read_bytes().endswith(b"the rest\r\n")


# -- the pieces ---------------------------------------------------------------------------------


def test_open_regular_refuses_links_and_fifos_without_blocking(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafeEntry) as link:
        open_regular(str(tmp_path / "link"))
    assert link.value.facts.kind is EntryKind.SYMLINK
    assert link.value.facts.target == str(target)
    with pytest.raises(UnsafeEntry) as fifo:
        open_regular(str(tmp_path / "fifo"))
    assert fifo.value.facts.kind is EntryKind.FIFO


def test_open_regular_refuses_a_file_swapped_since_it_was_looked_at(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"first")
    seen = facts_from_stat(path.lstat())
    replacement = tmp_path / "other"
    replacement.write_bytes(b"second")
    os.replace(replacement, path)
    with pytest.raises(UnsafeEntry):
        open_regular(str(path), seen)


def test_capped_reader_stops_one_byte_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"y" * 1000)
    reader: Callable[[], Any] = lambda: CappedReader(path.open("rb"), 100)  # noqa: E731
    with reader() as capped:
        data = b"".join(iter(lambda: capped.read(7), b""))
    assert len(data) == 101
    assert capped.over
    with CappedReader(path.open("rb"), 1000) as exact:
        assert len(exact.read()) == 1000
        assert not exact.over


def test_no_reader_of_the_mailroot_follows_a_link(root: Path, outside: Path) -> None:
    """A symlink left in BadMail (an older release moved Pickup links there) is not printed."""
    queue_id = "1a22198ed00-00007f9a11bab65d"
    with Spool(str(root), durability=Durability.NONE) as spool:
        (root / "BadMail" / f"{queue_id}.BAD").symlink_to(outside)
        (root / "BadMail" / f"{queue_id}.BDR").write_text("5.3.0 old\n")
        (root / "Drop" / f"{queue_id}.eml").symlink_to(outside)
        with pytest.raises(StorageError, match="is a symbolic link, pointing to"):
            spool.badmail_message(queue_id)
        with pytest.raises(StorageError, match="reads only regular files"):
            spool.drop_message(queue_id)
        out = io.StringIO()
        status = main(["--root", str(root), "badmail", "show", "--message", queue_id], out=out)
    assert status != 0
    assert b"secret" not in out.getvalue().encode()
    assert outside.read_bytes() == SECRET


def test_a_writer_that_links_its_file_in_then_unlinks_its_own_name(
    service: MailService, root: Path
) -> None:
    """The maildir idiom (``link(tmp, new); unlink(tmp)``): two links for a moment, not a hostile
    hard link. Refusing it then would unlink the only name the message keeps."""
    own = root.parent / "writer.tmp"
    own.write_bytes(message(1))
    os.link(own, root / "Pickup" / "linked-in.eml")
    assert tick(service).badmail == ()
    own.unlink()
    report = tick(service)
    assert len(report.picked_up) == 1
    assert report.badmail == ()
    assert len(list((root / "Drop").iterdir())) == 1
