"""``PickupWriter``: a complete file in Pickup, written with the right to create files there and
no other (the layout docs/running-as-a-service.md recommends: applications get Pickup only).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._core.ids import is_made_id
from spoolmail._store import pickup_writer
from spoolmail._store.pickup_writer import PickupWriter, TooLarge, is_stale_temp
from spoolmail.exceptions import ConfigurationError, StorageError
from tests.peers import require_program

MESSAGE = (
    b"x-sender: app@example.com\r\nx-receiver: bob@example.com\r\n"
    b"From: app@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with Spool(tmp_path / "MailRoot"):
        pass
    return tmp_path / "MailRoot"


def test_a_whole_file_under_a_new_id_and_nothing_else(root: Path) -> None:
    queue_id = PickupWriter(root).write([MESSAGE[:7], MESSAGE[7:]])
    assert is_made_id(queue_id)
    assert sorted(p.name for p in (root / "Pickup").iterdir()) == [f"{queue_id}.eml"]
    assert (root / "Pickup" / f"{queue_id}.eml").read_bytes() == MESSAGE
    assert list((root / "SortTemp").iterdir()) == []


def test_the_service_keeps_its_id_and_delivers_it(root: Path) -> None:
    queue_id = PickupWriter(root).write([MESSAGE])
    with Spool(root) as spool:
        service = MailService(spool, router=Router(local_domains=["example.com"]))
        report = service.run_once()
        service.close()
        assert report.picked_up == (queue_id,)
        assert spool.drop_item(queue_id).recipients == ("bob@example.com",)


def test_past_the_limit_nothing_is_left(root: Path) -> None:
    with pytest.raises(TooLarge) as raised:
        PickupWriter(root).write(iter([b"x" * 10, b"y" * 10]), limit=15)
    assert raised.value.status == "5.3.4"
    assert list((root / "Pickup").iterdir()) == []


def test_a_full_disk_is_a_temporary_error_and_leaves_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pickup_writer.os, "fsync", full)
    with pytest.raises(StorageError) as raised:
        PickupWriter(root).write([MESSAGE])
    assert raised.value.temporary
    assert list((root / "Pickup").iterdir()) == []


def test_no_pickup_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="has no Pickup folder"):
        PickupWriter(tmp_path / "nowhere")


def test_iis_spelling_is_found(tmp_path: Path) -> None:
    (tmp_path / "PickUp").mkdir()
    assert PickupWriter(tmp_path).folder == tmp_path / "PickUp"


def test_stale_temporary_files_are_told_apart_from_other_writers() -> None:
    mine = ".19ac9b2f1c0-00005e1f0c2a9b7d.spoolmail.tmp"
    assert is_stale_temp(mine, mtime=0.0, now=pickup_writer.STALE_AFTER + 1)
    assert not is_stale_temp(mine, mtime=0.0, now=60.0)  # still being written, perhaps
    for other in (".hello.tmp", "x.eml", ".19ac9b2f1c0-00005e1f0c2a9b7d.tmp"):
        assert not is_stale_temp(other, mtime=0.0, now=1e12)


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A MailRoot outside pytest's private temp folder, so that another user can reach it."""
    base = Path(tempfile.mkdtemp(prefix="spoolmail-pickup-", dir="/tmp"))
    base.chmod(0o755)
    with Spool(base / "MailRoot"):
        pass
    try:
        yield base / "MailRoot"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_user_who_may_only_create_files_in_pickup_can_write(reachable: Path) -> None:
    """MailRoot enterable but not listable, SortTemp and the rest closed, Pickup writable by
    others: as docs/running-as-a-service.md sets it up (there for a group)."""
    require_program("setpriv", package="util-linux")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the writer as another user")
    root = reachable
    for path in root.iterdir():
        path.chmod(0o700)
    root.chmod(0o711)
    (root / "Pickup").chmod(0o1733)  # others may create, not list (sticky: not delete others')
    code = (
        "import sys; from spoolmail._store.pickup_writer import PickupWriter; "
        "print(PickupWriter(sys.argv[1]).write([sys.stdin.buffer.read()]))"
    )
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
            str(root),
        ],
        input=MESSAGE,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    queue_id = done.stdout.decode().strip()
    written = root / "Pickup" / f"{queue_id}.eml"
    assert written.read_bytes() == MESSAGE
    assert written.stat().st_uid == 65534


def test_the_service_sweeps_a_killed_writers_file_after_a_day_and_no_other(root: Path) -> None:
    pickup = root / "Pickup"
    left = pickup / ".19ac9b2f1c0-00005e1f0c2a9b7d.spoolmail.tmp"
    fresh = pickup / ".19ac9b2f1c1-00005e1f0c2a9b7d.spoolmail.tmp"
    theirs = pickup / ".someone-elses.tmp"
    for path in (left, fresh, theirs):
        path.write_bytes(b"half a message")
    day_ago = pickup_writer.STALE_AFTER + 60
    for path in (left, theirs):
        stamp = path.stat().st_mtime - day_ago
        os.utime(path, (stamp, stamp))
    with Spool(root) as spool:
        service = MailService(spool, router=Router(local_domains=["example.com"]))
        service.rescan()
        service.close()
    assert sorted(p.name for p in pickup.iterdir()) == sorted([fresh.name, theirs.name])
