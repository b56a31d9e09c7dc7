"""Storage backends declare what they guarantee, and the store keeps the single-process rule."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fs.memoryfs import MemoryFS
from fs.osfs import OSFS
from fs.wrapfs import WrapFS

from spoolmail import Durability, MailService, Router, Spool
from spoolmail._store.backend import OS_GUARANTEES, Guarantee, backend_of
from spoolmail.exceptions import ConfigurationError
from spoolmail.testing import CapturingTransport, FakeClock

MESSAGE = b"x-sender: a@example.com\r\nx-receiver: b@example.com\r\n\r\nSubject: x\r\n\r\nhi\r\n"


class ObjectStoreFS(WrapFS):  # type: ignore[type-arg]
    """An object store as PyFilesystem2 plugins present one: no rename (``FS.move`` copies and
    deletes), no OS paths, no link information."""

    def getmeta(self, namespace: str = "standard") -> dict[str, Any]:
        return {**super().getmeta(namespace), "supports_rename": False}

    def hassyspath(self, path: str) -> bool:
        return False

    def getsyspath(self, path: str) -> str:
        raise AssertionError("an object store has no OS paths")


@pytest.fixture
def bucket() -> Iterator[ObjectStoreFS]:
    with ObjectStoreFS(MemoryFS()) as filesystem:
        yield filesystem


def test_os_filesystems_keep_every_promise(tmp_path: Path) -> None:
    backend = backend_of(OSFS(str(tmp_path)), os_paths=True)
    assert backend.guarantees == OS_GUARANTEES
    assert backend.multi_process


def test_memoryfs_is_atomic_but_in_process_only() -> None:
    backend = backend_of(MemoryFS(), os_paths=False)
    assert Guarantee.ATOMIC_RENAME in backend.guarantees
    assert Guarantee.SHARED not in backend.guarantees
    assert not backend.multi_process


def test_an_object_store_without_rename_is_detected(bucket: ObjectStoreFS) -> None:
    backend = backend_of(bucket, os_paths=False)
    assert backend.name == "ObjectStoreFS"
    assert Guarantee.ATOMIC_RENAME not in backend.guarantees
    assert Guarantee.LINKS not in backend.guarantees
    assert not backend.multi_process


def test_a_spool_says_which_backend_it_is_on(filesystem: Any, clock: FakeClock) -> None:
    with Spool(filesystem, clock=clock) as spool:
        assert spool._store.backend.name == type(filesystem).__name__


def test_one_process_works_on_an_object_store_and_says_the_rule(
    bucket: ObjectStoreFS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "spoolmail"), Spool(bucket, clock=clock) as spool:
        spool.submit(MESSAGE)
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"]),  # into Drop: no DNS, no network
            clock=clock,
            transport=CapturingTransport(),
            pickup_settle=timedelta(0),
        )
        try:
            report = service.run_once()
        finally:
            service.close()
    assert report.errors == ()
    assert len(report.picked_up) == 1
    assert len(report.delivered) == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("single-process rule" in w for w in warnings) == 1
    assert sum("cannot tell a symbolic link from a file" in w for w in warnings) == 1


def test_a_second_process_is_refused_with_the_reason(
    bucket: ObjectStoreFS, clock: FakeClock
) -> None:
    """Two Spools on one bucket stand for two processes: each has its own owner record."""
    with Spool(bucket, clock=clock) as first, Spool(bucket, clock=clock) as second:
        first.submit(MESSAGE)
        first._store.announce()
        with pytest.raises(ConfigurationError, match="single-process rule") as refused:
            second._store.claim_pickups(second.pickup())
        assert first._store.owner in str(refused.value)
        assert "no atomic rename" in str(refused.value)
        assert second.pickup() == first.pickup()  # nothing was claimed
        first._store.announce()  # the first goes on working: the second stood back
        first.close()  # its record goes: the second may work now
        assert len(second._store.claim_pickups(second.pickup())) == 1


def test_memoryfs_spools_in_one_process_share_claims(clock: FakeClock) -> None:
    filesystem = MemoryFS()
    with Spool(filesystem, clock=clock) as first, Spool(filesystem, clock=clock) as second:
        first._store.announce()
        second._store.announce()  # atomic renames: nothing to refuse


@pytest.mark.parametrize(
    ("given", "fsyncs"),
    [("fsync", True), (" FSYNC ", True), ("none", False), (Durability.FSYNC, True)],
)
def test_durability_may_be_given_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: Any, fsyncs: bool
) -> None:
    """``durability="fsync"`` was kept as a string, which is not ``Durability.FSYNC``: nothing
    was fsync'd. Its name in any case is read as the member."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    with Spool(tmp_path / "MailRoot", durability=given) as spool:
        assert spool._store.durability is (Durability.FSYNC if fsyncs else Durability.NONE)
        spool.admit(
            b"Subject: x\r\n\r\nbody\r\n",
            sender="a@example.com",
            recipients=["b@example.com"],
            origin="submit",
        )
    assert bool(calls) is fsyncs


@pytest.mark.parametrize("given", ["always", "", 1, True, None])
def test_an_unknown_durability_is_refused_before_anything_is_opened(
    tmp_path: Path, given: Any
) -> None:
    with pytest.raises(ConfigurationError, match=r"durability is one of 'fsync', 'none', not "):
        Spool(tmp_path / "MailRoot", durability=given)
    assert not (tmp_path / "MailRoot").exists()
