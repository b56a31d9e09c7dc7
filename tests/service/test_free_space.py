"""A floor of free space (issue 15 section 3): Pickup waits while the disk is nearly full.

As Postfix's ``queue_minfree``: below ``min_free_space`` bytes free, new Pickup files stay where
they are (mail already queued is still delivered), intake resumes by itself once there is room,
and the log says so once each way. The free-space figure is injected (``store.disk_free``), so
no test fills a disk; the command-line tests measure the real one against an impossible floor.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._cli.main import EX_OK, main
from spoolmail._service.service import _FIRST_PICKUP_BATCH
from spoolmail._store import pyfs
from spoolmail.exceptions import ConfigurationError
from spoolmail.testing import CapturingTransport, FakeClock

MiB = 1024 * 1024
MORE_THAN_ANY_DISK = 10**18


def message(to: str = "bob@example.com") -> bytes:
    return f"From: alice@example.net\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()


class Disk:
    """The free-space figure a test sets; counts how often it was asked."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked = 0

    def __call__(self, path: str) -> int:
        self.asked += 1
        return self.free


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def disk(spool: Spool) -> Disk:
    disk = Disk(free=50 * MiB)
    spool._store.disk_free = disk
    return disk


@pytest.fixture
def service(spool: Spool, clock: FakeClock) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"]),
        transport=CapturingTransport(),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def test_the_default_floor_is_100_mib(service: MailService) -> None:
    assert service.min_free_space == 100 * MiB


def test_pickup_waits_while_space_is_low_and_resumes_by_itself(
    spool: Spool, service: MailService, disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spoolmail")
    spool.submit(message())
    for _ in range(3):
        assert not service.room_for_mail()
        assert service.run_once().picked_up == ()
    assert spool._store.listdir("Pickup") != []  # left where it is
    lows = [r for r in caplog.records if "less than min_free_space" in r.getMessage()]
    assert [r.levelno for r in lows] == [logging.WARNING]  # once, not at every tick
    assert "only 52428800 bytes free" in lows[0].getMessage()

    disk.free = 200 * MiB
    assert service.run_once().picked_up != ()
    service.run_once()
    backs = [
        r for r in caplog.records if "free on the MailRoot's filesystem again" in r.getMessage()
    ]
    assert [r.levelno for r in backs] == [logging.INFO]
    assert spool._store.listdir("Pickup") == []
    assert len(spool._store.listdir("Drop")) == 1


def test_queued_mail_is_still_delivered_while_space_is_low(
    spool: Spool, service: MailService, disk: Disk
) -> None:
    disk.free = 200 * MiB
    spool.submit(message())
    service.room_for_mail()
    # Queued, not yet delivered: take it in alone by giving intake a batch of its own.
    [claim] = spool._store.claim_pickups(spool._store.pickup_ready())
    queued = service._intake.process(claim)
    assert queued is not None
    disk.free = 1
    spool.submit(message("carol@example.com"))
    report = service.run_once()
    assert report.finished == (queued.id,)  # delivered to Drop all the same
    assert report.picked_up == ()
    assert len(spool._store.listdir("Pickup")) == 1


def test_intake_stops_between_batches_when_space_runs_out(
    spool: Spool, service: MailService, disk: Disk
) -> None:
    disk.free = 200 * MiB
    for n in range(40):  # more than one batch of Pickup files (the first one is smaller)
        spool.submit(message(f"user{n}@example.com"))
    looks = 0

    def running_out(path: str) -> int:
        nonlocal looks
        looks += 1
        return 200 * MiB if looks == 1 else 1  # full after the first batch

    spool._store.disk_free = running_out
    assert len(service.run_once().picked_up) == _FIRST_PICKUP_BATCH
    assert len(spool._store.listdir("Pickup")) == 40 - _FIRST_PICKUP_BATCH


def test_no_floor_and_no_figure_never_hold_intake_back(
    tmp_path: Path, spool: Spool, clock: FakeClock, disk: Disk
) -> None:
    off = MailService(
        spool, router=Router(local_domains=["example.com"]), clock=clock, min_free_space=0
    )
    spool.submit(message())
    assert off.run_once().picked_up != ()
    assert disk.asked == 0  # not even measured
    off.close()
    # MemoryFS (and plugins) have no free-space figure: nothing to compare.
    with Spool(pyfs.MemoryFS(), clock=clock) as memory:
        service = MailService(
            memory,
            router=Router(local_domains=["example.com"]),
            clock=clock,
            min_free_space=MORE_THAN_ANY_DISK,
        )
        memory.submit(message())
        assert service.room_for_mail()
        assert service.run_once().picked_up != ()
        service.close()


def test_a_negative_floor_is_refused(spool: Spool) -> None:
    with pytest.raises(ConfigurationError, match="min_free_space"):
        MailService(spool, min_free_space=-1)


# -- the command line ---------------------------------------------------------------------------


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


def submit(root: Path) -> Path:
    (root / "Pickup").mkdir(parents=True, exist_ok=True)
    path = root / "Pickup" / "m.eml"
    path.write_bytes(message())
    return path


def test_the_flag_sets_the_floor(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    waiting = submit(root)
    floor = str(MORE_THAN_ANY_DISK)
    status, out = run(
        root, "run", "--once", "--local-domain", "example.com", "--min-free-space", floor
    )
    assert (status, out) == (EX_OK, "")
    assert waiting.exists()
    status, out = run(
        root, "run", "--once", "--local-domain", "example.com", "--min-free-space", "0"
    )
    assert status == EX_OK
    assert not waiting.exists()
    assert "delivered to bob@example.com" in out


def test_the_settings_file_sets_the_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "MailRoot"
    waiting = submit(root)
    settings = tmp_path / "spoolmail.toml"
    settings.write_text(
        f'[spoolmail]\nlocal_domains = ["example.com"]\nmin_free_space = {MORE_THAN_ANY_DISK}\n'
    )
    assert run(root, "--config", str(settings), "run", "--once") == (EX_OK, "")
    assert waiting.exists()
    settings.write_text("[spoolmail]\nmin_free_space = -1\n")
    status, _ = run(root, "--config", str(settings), "run", "--once")
    assert status != EX_OK
    assert "min_free_space must be 0 or more" in capsys.readouterr().err
