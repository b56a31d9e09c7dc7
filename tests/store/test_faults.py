"""Filesystem faults at every call the store makes: nothing lost, nothing left behind, no long wait.

Issue 15 section 3 and docs/design.md#crash-safety. For each of the two main flows,
(a) Pickup → Queue →
Drop and (b) Pickup → Queue → a smart host (aiosmtpd on 127.0.0.1) → done, a clean run on a real
MailRoot (OSFS in a temp dir, ``Durability.FSYNC`` so that the fsyncs happen) first counts the
filesystem calls made under the MailRoot: ``os.replace``, ``os.rename``, ``os.open``, the store's
``open``, ``os.fsync`` and ``os.unlink``. Then, for every call N and each of ENOSPC, EIO and
EACCES, a fresh MailRoot runs the same flow with call N failing and every later call succeeding;
the service runs on, the clock moving a minute a tick, and within ten minutes every message must
have arrived exactly once (one Drop file each, or one copy each at the sink), and Pickup, Queue,
BadMail and SortTemp must be empty once the spool is closed (closing removes this process's
owner record and spare files). The faults are raised in this process (``monkeypatch``), not by a
full disk: the whole matrix takes seconds. Below it, the store's own answers to single faults:
a spare file that cannot be opened, a spare that cannot be deleted, a sweep that meets a file it
cannot delete, a temporary file a failing disk would not let go, and the free-space figure.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import spoolmail._store.store as store_module
from spoolmail import Durability, Limits, MailService, Router, Spool
from spoolmail._core.ids import QueueIds
from spoolmail._store import pyfs
from spoolmail._store.store import MailStore
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import StorageError
from spoolmail.testing import FakeClock
from tests.smtpservers import SHORT, SmtpServer, smtp_server

ERRNOS = (errno.ENOSPC, errno.EIO, errno.EACCES)
MESSAGES = 2
# The service gets this many one-minute ticks after the fault to deliver everything: two rescan
# intervals (5 minutes each) and more than any local fault's back-off, far less than a retry
# of IIS's schedule (15 minutes, then an hour): a fault must not cost a message that.
TICKS = 10
_PATH_CALLS = ("replace", "rename", "open", "unlink")


class Flow(enum.Enum):
    DROP = "drop"
    SMART_HOST = "smart-host"


class Calls:
    """Counts the filesystem calls made under ``root`` and fails the ``fail_at``-th one."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.count = 0
        self.fail_at = 0
        self.errno = errno.EIO
        self.failed = ""
        self._lock = threading.Lock()

    def _hit(self, what: str, path: object) -> None:
        with self._lock:
            self.count += 1
            if self.count != self.fail_at:
                return
            self.failed = f"{what}({os.path.basename(str(path))})"
        raise OSError(self.errno, os.strerror(self.errno), str(path))

    def wrap(self, what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else ""
            # os.fsync takes a descriptor: only spoolmail calls it here; the rest name a path.
            if what == "fsync" or os.fspath(first).startswith(self.root):
                self._hit(what, first if what != "fsync" else "fd")
            return real(*args, **kwargs)

        return call

    @contextlib.contextmanager
    def injected(self, fail_at: int = 0, code: int = errno.EIO) -> Iterator[Calls]:
        self.count, self.fail_at, self.errno = 0, fail_at, code
        with pytest.MonkeyPatch.context() as patch:
            for name in (*_PATH_CALLS, "fsync"):
                patch.setattr(os, name, self.wrap(name, getattr(os, name)))
            # The store opens its temporary files with os.open (above); anything else it opens
            # with the builtin open is counted too.
            patch.setattr(store_module, "open", self.wrap("open", open), raising=False)
            yield self


def message(tag: str, number: int, to: str) -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\nTo: {to}\r\nSubject: {tag} m{number}\r\n"
        f"Message-ID: <{tag}.{number}@client.example.com>\r\n\r\nbody of {tag} m{number}\r\n"
    ).encode()


def leftovers(root: Path) -> dict[str, list[str]]:
    return {
        folder: sorted(os.listdir(root / folder))
        for folder in ("Pickup", "Queue", "BadMail", "SortTemp")
        if os.listdir(root / folder)
    }


def arrived(root: Path, flow: Flow, server: SmtpServer, tag: str) -> list[bytes]:
    """What arrived for this run: Drop files, or messages at the sink."""
    if flow is Flow.DROP:
        return [(root / "Drop" / name).read_bytes() for name in sorted(os.listdir(root / "Drop"))]
    return [m.data for m in server.messages if f"Subject: {tag} ".encode() in m.data]


def run(
    base: Path, flow: Flow, server: SmtpServer, calls: Calls, *, fail_at: int = 0, code: int = 0
) -> str | None:
    """One flow on a fresh MailRoot with call ``fail_at`` failing; what went wrong, if anything."""
    root = base / "MailRoot"
    (root / "Pickup").mkdir(parents=True)
    tag = f"{base.parent.name}/{base.name}"  # unique at the sink, which every test shares
    to = "bob@example.com" if flow is Flow.DROP else "carol@remote.test"
    for number in range(1, MESSAGES + 1):
        (root / "Pickup" / f"m{number}.eml").write_bytes(message(tag, number, to))
    clock = FakeClock()
    with Spool(str(root), clock=clock, durability=Durability.FSYNC) as spool:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smart_host=str(server.target)),
            transport=SmtpTransport(helo_name="mail.example.com", timeouts=SHORT),
            clock=clock,
            fqdn="mail.example.com",
            # One delivery thread: the calls come in the same order in every run.
            limits=Limits(max_connections=1),
            pickup_settle=timedelta(0),
            min_free_space=0,
        )
        try:
            with calls.injected(fail_at, code):
                service.run_once()
            for _ in range(TICKS):
                if len(arrived(root, flow, server, tag)) >= MESSAGES and not any(
                    leftovers(root).get(f) for f in ("Pickup", "Queue")
                ):
                    break
                clock.advance(minutes=1)
                service.run_once()
        finally:
            service.close()
    got = arrived(root, flow, server, tag)
    subjects = sorted(line for m in got for line in m.split(b"\r\n") if line.startswith(b"Subject"))
    wanted = sorted(f"Subject: {tag} m{n}".encode() for n in range(1, MESSAGES + 1))
    problems = []
    if subjects != wanted:
        problems.append(f"arrived {[s.decode() for s in subjects]} after {TICKS} minutes")
    for data in got:
        subject = next(line for line in data.split(b"\r\n") if line.startswith(b"Subject: "))
        if not data.endswith(b"\r\n\r\nbody of " + subject[len(b"Subject: ") :] + b"\r\n"):
            problems.append(f"{subject.decode()} arrived damaged")
    if left := leftovers(root):
        problems.append(f"left behind: {left}")
    return "; ".join(problems) or None


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.mark.integration  # aiosmtpd on 127.0.0.1 for the remote flow
@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
@pytest.mark.parametrize("flow", list(Flow), ids=lambda flow: flow.value)
def test_a_fault_at_any_call_loses_nothing_and_leaves_nothing(
    tmp_path: Path, sink: SmtpServer, flow: Flow, code: int
) -> None:
    calls = Calls(tmp_path)
    assert run(tmp_path / "clean", flow, sink, calls) is None
    total = calls.count
    assert total > 20, "the clean run made suspiciously few filesystem calls"
    failures = []
    for fail_at in range(1, total + 1):
        problem = run(tmp_path / f"fault{fail_at}", flow, sink, calls, fail_at=fail_at, code=code)
        if problem is not None:
            failures.append(f"call {fail_at} of {total}, {calls.failed}: {problem}")
    assert not failures, "\n".join(failures)


# -- the store's answers to single faults ----------------------------------------------------------


def make_store(root: Path, clock: FakeClock, seed: int = 1) -> MailStore:
    return MailStore(
        pyfs.OSFS(str(root), create=True),
        durability=Durability.FSYNC,
        clock=clock,
        ids=QueueIds(random.Random(seed)),
    )


def failing(real: Callable[..., Any], match: str, code: int = errno.EIO) -> Callable[..., Any]:
    """``real``, except for paths containing ``match``: those fail with ``code``."""

    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        if match in os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, *args, **kwargs)

    return call


def test_a_spare_that_cannot_be_opened_is_not_left_in_sorttemp(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    store.write("Queue", "a.eml", b"finished")
    store.recycle("Queue", "a.eml")
    [spare] = store.spares
    monkeypatch.setattr(os, "open", failing(os.open, spare))
    with pytest.raises(StorageError, match="Input/output error"):
        store.write("Queue", "b.eml", b"new")
    assert store.spares == ()
    assert os.listdir(tmp_path / "SortTemp") == []


def test_a_spare_that_cannot_be_deleted_either_is_swept_later(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    store.write("Queue", "a.eml", b"finished")
    rename = os.rename

    def fill_the_pool_meanwhile(src: str, dst: str) -> None:
        # Another thread recycles 64 files between the look at the pool and the rename.
        store._spares.extend((f"other{n}.tmp", 1) for n in range(64))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", fill_the_pool_meanwhile)
    monkeypatch.setattr(os, "unlink", failing(os.unlink, ".tmp"))
    assert store.recycle("Queue", "a.eml")  # the file left Queue: done, whatever SortTemp says
    assert not store.exists("Queue", "a.eml")
    [left] = os.listdir(tmp_path / "SortTemp")
    monkeypatch.undo()
    store._spares.clear()
    assert store.sweep_temp() == 1
    assert os.listdir(tmp_path / "SortTemp") == []
    assert left.startswith(store.owner)


def test_a_temp_file_a_failing_disk_would_not_delete_goes_at_the_next_sweep(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    monkeypatch.setattr(os, "replace", failing(os.replace, ".tmp"))
    monkeypatch.setattr(os, "unlink", failing(os.unlink, ".tmp"))
    with pytest.raises(StorageError, match="cannot rename"):
        store.write("Queue", "a.env", b"{}")
    assert len(os.listdir(tmp_path / "SortTemp")) == 1
    monkeypatch.undo()
    # The owner is alive, so only this process can take it: its next sweep does.
    assert store.sweep_temp() == 1
    assert os.listdir(tmp_path / "SortTemp") == []


def test_a_file_the_sweep_cannot_delete_does_not_stop_it(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = make_store(tmp_path, clock, seed=2)
    dead.announce()
    for name in ("a", "b", "c"):
        (tmp_path / "SortTemp" / f"{dead.owner}.{name}.tmp").write_bytes(b"half")
    caplog.set_level(logging.WARNING, logger="spoolmail")
    store = make_store(tmp_path, clock)
    clock.advance(minutes=11)  # the dead owner's lease ran out
    monkeypatch.setattr(os, "unlink", failing(os.unlink, ".b.tmp", errno.EACCES))
    assert store.sweep_temp() == 2  # a and c; the record stays, to vouch that b's owner died
    assert sorted(os.listdir(tmp_path / "SortTemp")) == [
        f"{dead.owner}.b.tmp",
        f"{dead.owner}.owner",
    ]
    assert "Permission denied" in caplog.text
    monkeypatch.undo()
    assert store.sweep_temp() == 2
    assert os.listdir(tmp_path / "SortTemp") == []


def test_a_failed_folder_sync_is_a_storage_error(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match="cannot sync Queue"):
        store.sync("Queue")


def test_free_space_is_measured_on_os_filesystems_only(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    free = store.free_space()
    assert free is not None
    assert free > 0
    asked: list[str] = []
    store.disk_free = lambda path: asked.append(path) or 12345
    assert store.free_space() == 12345
    assert asked == [str(tmp_path)]

    def broken(path: str) -> int:
        raise OSError(errno.EIO, "Input/output error")

    store.disk_free = broken
    assert store.free_space() is None  # no figure: nothing to hold intake back with
    memory = MailStore(pyfs.MemoryFS(), durability=Durability.NONE, clock=clock, ids=QueueIds())
    assert memory.free_space() is None
